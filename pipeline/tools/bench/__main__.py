"""``python -m pipeline.tools.bench [--config ...]``; the benchmark's own worker processes
run ``python -m pipeline.tools.bench _plain_export|_plain_import|_train_keras ARGS`` (Keras'
inference is timed by ``pipeline.runners.KerasRunner``'s worker)."""

import sys

from pipeline.tools.bench import main
from pipeline.tools.bench.cost import plain_export, plain_import
from pipeline.tools.bench.train import keras_worker

WORKERS = {"_plain_export": plain_export, "_plain_import": plain_import, "_train_keras": keras_worker}

if len(sys.argv) > 1 and sys.argv[1] in WORKERS:
    WORKERS[sys.argv[1]](*sys.argv[2:])
else:
    sys.exit(main())
