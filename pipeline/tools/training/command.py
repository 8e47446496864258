"""``python -m pipeline trainable-check``: its parser entry and its command, on the command
line's own ``_model_of`` (handed in, so that this package does not import ``cli``; the
stages must have run: ``make trainable-check`` converts first)."""

from __future__ import annotations

import sys


def add_parser(sub, common) -> None:
    sub.add_parser("trainable-check", parents=[common], help="the port trains as Keras does: train-mode outputs, "
                   "moving statistics, gradients, 10 SGD steps, dropout rates (on a converted model: "
                   "make trainable-check converts first; writes <model>/training/)")


def main(args, argv: list[str], model_of, prepare=None) -> int:
    """0 when the port passes the five checks (or the model has nothing to train), 1 when
    one fails, 2 when the check cannot run; its failure goes to ``<model>/training/`` (the
    conversion's own status and error.json stay as they are)."""
    from pipeline.core import runstate
    from pipeline.core.errors import PipelineError
    from pipeline.stages import report
    from pipeline.tools import training

    settings, spec, mdir = model_of(args)
    with runstate.model_lock(mdir):
        try:
            summary = training.run(mdir, settings)
        except PipelineError as e:
            training.write_failure(mdir, e)
            report.write(mdir, settings)
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(training.table(summary))
        report.write(mdir, settings)
    print(f"{spec.name}: training check {summary['status']}  ({training.folder(mdir) / 'training.json'})")
    return 0 if summary["status"] in ("ok", "skipped") else 1
