"""The environment of a TensorFlow process: quiet unless ``--verbose``.

TensorFlow's C++ start-up lines (absl's "All log messages before absl::InitializeLog() is
called are written to STDERR", oneDNN's notice, "Could not find cuda drivers") come out
during ``import tensorflow`` whatever ``TF_CPP_MIN_LOG_LEVEL`` says. ``import_tf`` imports
it with file descriptor 2 sent to a temporary file, and shows what was caught only when the
import fails; afterwards ``TF_CPP_MIN_LOG_LEVEL=3`` and absl's Python level keep TF's
later lines away. ``--verbose`` (``PIPELINE_VERBOSE=1``, inherited by every process the
command starts) leaves all of it on the console. ``TF_ENABLE_ONEDNN_OPTS`` is left alone:
it changes the numbers.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

VERBOSE_ENV = "PIPELINE_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def prepare() -> None:
    """Environment for a TensorFlow process, before TensorFlow is imported: CPU only, tf2onnx
    without per-pass copies, and (unless verbose) TF's C++ logging off."""
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("TF2ONNX_CATCH_ERRORS", "FALSE")


def import_tf():
    """``prepare``, then ``import tensorflow`` without its start-up lines (see the module
    docstring); returns the module. Only the first call in a process does the work."""
    prepare()
    if "tensorflow" in sys.modules or verbose():
        import tensorflow as tf

        return tf
    with _stderr_caught():
        import tensorflow as tf
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel("ERROR")
    return tf


@contextlib.contextmanager
def _stderr_caught():
    """File descriptor 2 into a temporary file; replayed to stderr if the body raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            caught.seek(0)
            sys.stderr.write(caught.read().decode(errors="replace"))
            sys.stderr.flush()
            raise
        _restore(saved)


def _restore(saved: int) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
