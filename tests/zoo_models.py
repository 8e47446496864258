"""Builders for the zoo tests: models that misbehave in the export worker.

``crash`` kills its own process with SIGSEGV, ``sleep`` outlives any short time limit and
``memory_hog`` keeps allocating until its worker is killed over the memory limit.
"""

import os
import signal
import time


def crash():
    os.kill(os.getpid(), signal.SIGSEGV)


def sleep():
    time.sleep(3600)


def memory_hog():
    import numpy as np

    blocks = []
    for _ in range(200):   # up to 20 GB in 100 MB steps, each page touched
        blocks.append(np.ones(100 * 2**20 // 8))
        time.sleep(0.05)
    return blocks
