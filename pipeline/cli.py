"""Command line: one subcommand per stage, and ``convert`` for all of them.

Each stage runs in the process that calls it; ``convert`` starts one process per stage so
that TensorFlow (export) and torch (import, compare) never share a process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import traceback

from pipeline.stages import STAGES
from pipeline.core import runstate
from pipeline.core.artifacts import ModelDir, write_json
from pipeline.core.config import load_settings, parse_ranges, parse_shape
from pipeline.core.errors import PipelineError
from pipeline.core.spec import resolve

# tools with a command of their own: add_parser(sub, common), main(args, argv, model_of, prepare)
TOOL_COMMANDS = {"trainable-check": "pipeline.tools.training.command", "transplant": "pipeline.tools.transplant.command"}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", "-m", help="a .keras/.h5 file, a SavedModel folder, path/file.py:function "
                        "or keras.applications.NAME (default: the model in the config)")
    common.add_argument("--config", "-c", help="TOML settings (default: configs/default.toml)")
    common.add_argument("--out", "-o", default="artifacts", help="output folder (default: artifacts)")
    common.add_argument("--name", help="folder name for the model under --out")
    common.add_argument("--input-shape", help='fix non-batch input dims for good (static in every port): '
                        '"128,1" or "a=128,1;b=10"')
    common.add_argument("--reference-shape", help='non-batch input dims of the reference inputs; dims Keras leaves '
                        'None stay free (default sizes 16 for a sequence, 32 for image axes): "128,1" or "a=128,1;b=10"')
    common.add_argument("--input-range", help='integers an int input is drawn from, hi exclusive (default: what '
                        'the Embedding/CategoryEncoding/IntegerLookup it feeds can index): "ids=0:100;seg=0:2"')
    common.add_argument("--rtol", type=float)
    common.add_argument("--atol", type=float)
    common.add_argument("--seed", type=int)
    common.add_argument("--batch", type=int)
    common.add_argument("--channels-last-inputs", action="store_true", default=None,
                        help="keep Keras' channels-last layout at the model inputs")
    common.add_argument("--channels-last-outputs", action="store_true", default=None,
                        help="keep Keras' channels-last layout at the model outputs")
    common.add_argument("--no-fold", dest="fold_flatten_transpose", action="store_false", default=None,
                        help="keep the runtime Transpose before Flatten in the torch model")
    common.add_argument("--no-float64-check", dest="float64_check", action="store_false", default=None,
                        help="judge parity at rtol/atol only, even where Keras' own float32 output is "
                             "farther than that from the float64 result")
    common.add_argument("--calibrate-batchnorm", action="store_true", default=None,
                        help="set batch norm statistics from the reference inputs first (for random-weight "
                             "models, whose activations otherwise grow until float32 rounding dominates)")
    common.add_argument("--custom-object", dest="custom_objects", action="append",
                        help="register a custom Keras class, as my_pkg.layers:MyLayer (repeatable)")
    common.add_argument("--unsafe", action="store_true", default=None,
                        help="allow Lambda layers and other serialized Python code in the model file: "
                             "loading such a file runs that code, so use it only for files you trust")
    common.add_argument("--verbose", "-v", action="store_true",
                        help="show TensorFlow's own log lines (start-up notices, warnings), hidden by default")
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", parents=[common], help="all stages, each in its own process")
    conv.add_argument("--force", action="store_true",
                      help="re-run every stage (default: skip stages whose results are complete and up to date)")
    conv.add_argument("--stage-timeout", type=float, metavar="SECONDS",
                      help="kill a stage process that runs longer; the report records the limit")
    for s in STAGES:
        sp = sub.add_parser(s, parents=[common], help=f"the {s} stage alone, on the previous stage's files")
        if s in ("export", "compare"):
            sp.add_argument("--per-layer", action="store_true",
                            help="also record (export, into <model>/layers/) / compare (compare, into "
                                 "<model>/debug/) every Keras layer's output")
        if s == "export":
            sp.add_argument("--layers-only", action="store_true",
                            help="only record the layers' outputs for an existing export, into <model>/layers/ "
                                 "(for debug)")
    dbg = sub.add_parser("debug", parents=[common], help="per-layer comparison at every stage: the first layer "
                         "that goes wrong, and the step that broke it (runs missing stages first)")
    dbg.add_argument("--bisect", action="store_true",
                     help="cut the first failing layer out of the rewritten ONNX model, with its inputs, for a bug report")
    for module in TOOL_COMMANDS.values():   # tools with a command module of their own
        importlib.import_module(module).add_parser(sub, common)
    zoo = sub.add_parser("zoo", help="convert every model of a zoo config, each in a watched worker process")
    zoo.add_argument("--config", "-c", default="configs/zoo.toml", help="zoo config (default: configs/zoo.toml)")
    zoo.add_argument("--out", "-o", default="artifacts/zoo", help="output folder (default: artifacts/zoo)")
    zoo.add_argument("--jobs", "-j", type=int, help="models in parallel (default: cores, bounded by memory)")
    zoo.add_argument("--executor", choices=("local", "ray"), default="local")
    zoo.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    zoo.add_argument("--force", action="store_true", help="redo models whose report is up to date")
    zoo.add_argument("--retry-failed", action="store_true", help="redo up-to-date models that failed")
    zoo.add_argument("--only", help="comma-separated model names to run (the others are left as they are)")
    zoo.add_argument("--no-progress", action="store_true", help="one line per model event, no progress bar")
    return p


def _settings(args):
    return load_settings(args.config, model=args.model, name=args.name, rtol=args.rtol, atol=args.atol,
                         seed=args.seed, batch=args.batch,
                         input_shapes=parse_shape(args.input_shape) if args.input_shape else None,
                         reference_shapes=parse_shape(args.reference_shape) if args.reference_shape else None,
                         input_ranges=parse_ranges(args.input_range) if args.input_range else None,
                         channels_last_inputs=args.channels_last_inputs,
                         channels_last_outputs=args.channels_last_outputs,
                         fold_flatten_transpose=args.fold_flatten_transpose,
                         float64_check=args.float64_check, calibrate_batchnorm=args.calibrate_batchnorm,
                         custom_objects=args.custom_objects, unsafe=args.unsafe)


def _stage(command: str, args) -> int:
    settings, spec, mdir = _model_of(args)
    with runstate.model_lock(mdir) as owner:
        if owner:
            runstate.clean_stale(mdir)
        return _stage_locked(command, args, settings, spec, mdir)


def _stage_locked(command: str, args, settings, spec, mdir: ModelDir) -> int:
    from pipeline.stages import report

    if command == "export" and args.layers_only:   # no stage run: the stage's failure and report stay
        from pipeline.stages import export

        rec = export.record_layers(spec, settings, args.out)
        print(f"{spec.name}: layer outputs recorded in {export.layers.folder(mdir)} in {rec['seconds']:.1f} s, "
              f"peak RSS {rec['peak_rss_mb']:.0f} MB")
        return 0
    if mdir.error.exists():
        mdir.error.unlink()   # a re-run replaces the previous failure
    if command == "export":
        from pipeline.stages import export

        rec = export.run(spec, settings, args.out, per_layer=args.per_layer)
        if args.per_layer:
            print(f"{spec.name}: layer outputs recorded in {export.layers.folder(mdir)}")
    elif command == "rewrite":
        from pipeline.stages import rewrite

        rec = rewrite.run(mdir, settings)
        _print_rewrite(mdir)
    elif command == "import":
        from pipeline.stages import importer

        rec = importer.run(mdir, settings)
    else:
        from pipeline.stages import compare

        summary = compare.run(mdir, settings)
        print(compare.table(summary))
        for w in summary["warnings"]:
            print(f"warning: {w}")
        rep = report.write(mdir, settings)
        print(f"{spec.name}: {rep['status']}  (report: {mdir.report})")
        if args.per_layer:
            from pipeline.tools import debug

            layers = debug.run(mdir, settings)
            print(debug.table(layers))
            print(f"per-layer report: {debug.folder(mdir) / 'report.html'}")
            return 0 if rep["status"] == "ok" and layers["status"] == "ok" else 1
        return 0 if rep["status"] == "ok" else 1
    print(f"{spec.name}: {command} done in {rec['seconds']:.1f} s, peak RSS {rec['peak_rss_mb']:.0f} MB")
    report.write(mdir, settings)
    return 0


def _print_rewrite(mdir: ModelDir) -> None:
    from pipeline.core.artifacts import read_json

    f = read_json(mdir.stage("rewrite") / "rewrite.json")
    print(f"rewrite: {f['transposes_in_raw']} Transposes in raw.onnx, "
          f"{f['transposes_in_raw'] - f['transposes']} removed, {f['transposes']} left in nchw.onnx, "
          f"{f['transposes_torch']} in the torch graph; channels-first inputs {f['inputs_channels_first']}, "
          f"outputs {f['outputs_channels_first']}")
    kinds = f.get("transposes_by_kind") or {}
    if kinds.get("attention_heads"):
        print(f"  of those left in nchw.onnx: {kinds['attention_heads']} attention head split/merge (the model's own), "
              f"{kinds.get('layout', 0)} layout left-over(s)")
    for t in f["remaining"]:
        print(f"  kept {t['node']} perm={t['perm']}: {'; '.join(t['reasons'])}")


def _die_with_parent() -> None:
    """In a stage process: SIGKILL it when ``convert`` dies, so a killed run leaves no writer."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_stage_child(stage: str, argv: list[str], env: dict, timeout: float | None) -> tuple[int, bool]:
    """``python -m pipeline <stage> ...`` in a child process: (exit status, killed for the time limit)."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", stage, *argv], env=env, preexec_fn=_die_with_parent)
    try:
        return proc.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(), True


def _stage_argv(argv: list[str]) -> list[str]:
    """``convert``'s arguments without its own flags, for the stage processes."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--force" or a.startswith("--stage-timeout="):
            continue
        elif a == "--stage-timeout":
            skip = True
        else:
            out.append(a)
    return out


def _model_of(args):
    """(settings, spec, model folder) of a command that needs a model."""
    settings = _settings(args)
    if not settings.model:
        raise PipelineError("config", "no model given", hint="MODEL=... or model = ... in the config")
    spec = resolve(settings.model, settings.name)
    return settings, spec, ModelDir.of(args.out, spec.name)


def _convert(args, argv: list[str]) -> int:
    settings, spec, mdir = _model_of(args)
    with runstate.model_lock(mdir):
        for done in runstate.clean_stale(mdir):
            print(f"{spec.name}: {done} (left by a killed run)", flush=True)
        return _convert_locked(args, _stage_argv(argv), settings, spec, mdir)


def _convert_locked(args, argv: list[str], settings, spec, mdir: ModelDir) -> int:
    """Each stage in a process of its own; a stage whose results are up to date is skipped."""
    from pipeline.stages import report

    if mdir.error.exists():
        mdir.error.unlink()
    env, previous = runstate.lock_env(mdir), None
    compared = False   # a compare process ran and printed the status line itself
    for stage in STAGES:
        inputs = runstate.fingerprint(stage, previous, spec, settings)
        if not args.force and runstate.up_to_date(mdir, stage, inputs):
            print(f"== {spec.name}: {stage} (up to date, skipped)", flush=True)
            previous = runstate.outputs_hash(mdir, stage)
            continue
        print(f"== {spec.name}: {stage}", flush=True)
        runstate.stage_started(mdir, stage)
        rc, timed_out = _run_stage_child(stage, argv, env, args.stage_timeout)
        if rc == 0 or (stage == "compare" and rc == 1):
            runstate.record(mdir, stage, inputs)
            previous = runstate.outputs_hash(mdir, stage)
            compared = compared or stage == "compare"
            continue
        if timed_out or not mdir.error.exists():
            extra = {"signal": signal.Signals(-rc).name} if rc < 0 else {"exit_status": rc}
            if timed_out:
                why, kind = f"exceeded its time limit of {args.stage_timeout:g} s and was killed", "timeout"
                extra["limit"] = {"seconds": args.stage_timeout}
            else:
                why = f"was killed by signal {extra['signal']}" if rc < 0 else f"exited with status {rc}"
                kind = "crash" if rc < 0 else "exit"
            mdir.root.mkdir(parents=True, exist_ok=True)
            err = PipelineError(stage, f"the {stage} process {why}", model=spec.name, kind=kind)
            write_json(mdir.error, err.info.to_json() | extra)
            print(f"error: {err}", file=sys.stderr)
        runstate.clean_stale(mdir)   # what a killed stage process left in its temporary folder
        report.write(mdir, settings)
        print(f"{spec.name}: failed at {stage}  (report: {mdir.report})", file=sys.stderr)
        return 2
    rep = report.write(mdir, settings)
    if not compared:
        print(f"{spec.name}: {rep['status']}  (report: {mdir.report})")
    return 0 if rep["status"] == "ok" else 1


# the file that shows a stage has results: ``debug`` runs a stage that lacks it, and every later one
_STAGE_RESULT = {"export": "raw.onnx", "rewrite": "torch.onnx", "import": "import.json", "compare": "compare.json"}


def _debug(args, argv: list[str]) -> int:
    settings, spec, mdir = _model_of(args)
    with runstate.model_lock(mdir) as owner:
        if owner:
            for done in runstate.clean_stale(mdir):
                print(f"{spec.name}: {done} (left by a killed run)", flush=True)
        return _debug_locked(args, [a for a in argv if a != "--bisect"], settings, spec, mdir)


def _debug_locked(args, argv: list[str], settings, spec, mdir: ModelDir) -> int:
    """The stages whose results are missing (``_prepare``); then ``debug.run`` here, into
    ``<model>/debug/``."""
    from pipeline.stages import report
    from pipeline.tools import debug

    rc = _prepare(argv, settings, spec, mdir)
    if rc is not None:
        return rc
    rep = report.write(mdir, settings)
    layers = debug.run(mdir, settings, bisect=args.bisect)
    print(debug.table(layers))
    b = layers.get("bisect")
    if b and "model" in b:
        print(f"bisect: layer {b['layer']!r} ({b['stage']}) cut to {b['model']} with inputs and expected output in "
              f"{b['data']}; {'reproduces the error' if b['reproduces'] else 'does NOT reproduce the error alone'}")
    elif b:
        print(f"bisect: {b['skipped']}")
    print(f"{spec.name}: {layers['status']}  (per-layer report: {debug.folder(mdir) / 'report.html'})")
    return 0 if rep["status"] == "ok" and layers["status"] == "ok" else 1


def _prepare(argv: list[str], settings, spec, mdir: ModelDir) -> int | None:
    """The stages whose results are missing, each in a process of its own (export with
    ``--per-layer``), fingerprinted as ``convert`` does; compare again when a stage's files
    changed since it ran; Keras' layer outputs (``<model>/layers/``) when missing or made for
    another export. None when all is there, else the exit status of the failure.

    Stage results that exist are used as they are, never redone (a graph edited by hand
    stays as it is), so after ``convert`` this writes no stage folder at all."""
    from pipeline.stages import report
    from pipeline.core.artifacts import read_json
    from pipeline.stages import compare
    from pipeline.stages.export import layers as keras_layers

    env, previous, missing, fresh = runstate.lock_env(mdir), None, False, True
    for stage in STAGES:
        inputs = runstate.fingerprint(stage, previous, spec, settings)
        missing = missing or not (mdir.stage(stage) / _STAGE_RESULT[stage]).exists()
        fresh = fresh and not missing and runstate.up_to_date(mdir, stage, inputs)
        ran = missing or (stage == "compare" and not fresh)
        if ran:
            print(f"== {spec.name}: {stage}", flush=True)
            rc, _ = _run_stage_child(stage, argv + (["--per-layer"] if stage == "export" else []), env, None)
            if rc == 0 or (stage == "compare" and rc == 1):
                runstate.record(mdir, stage, inputs)
            elif stage != "compare":   # a compare that cannot run a graph: the per-layer runs say where
                runstate.clean_stale(mdir)
                report.write(mdir, settings)
                print(f"{spec.name}: failed at {stage}  (report: {mdir.report})", file=sys.stderr)
                return 2
        elif fresh:
            print(f"== {spec.name}: {stage} (up to date, skipped)", flush=True)
        else:
            print(f"== {spec.name}: {stage} (changed since it ran: used as it is; convert would redo it)",
                  flush=True)
        if stage == "compare" and not ran:   # its table, as the stage printed it
            print(compare.table(read_json(mdir.stage("compare") / "compare.json")))
        if stage == "export" and not keras_layers.is_current(mdir):
            print(f"== {spec.name}: recording Keras layer outputs", flush=True)
            if _run_stage_child("export", argv + ["--layers-only"], env, None)[0] != 0:
                print(f"{spec.name}: failed recording the Keras layers' outputs", file=sys.stderr)
                return 2
        previous = runstate.outputs_hash(mdir, stage)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if getattr(args, "verbose", False):   # for this process and every one it starts (see export/tfenv.py)
        from pipeline.stages.export.tfenv import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
    try:
        if args.command == "convert":
            return _convert(args, argv[1:])
        if args.command == "zoo":
            from pipeline.tools import zoo

            return zoo.main(args)
        if args.command == "debug":
            return _debug(args, argv[1:])
        if args.command in TOOL_COMMANDS:
            return importlib.import_module(TOOL_COMMANDS[args.command]).main(args, argv[1:], _model_of, _prepare)
        return _stage(args.command, args)
    except PipelineError as e:
        _record_error(args, e.info.to_json() | {"model": e.info.model or _model_name(args)})
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an internal bug: one clear line, the traceback kept in error.json
        info = {"stage": args.command, "message": f"internal error: {type(e).__name__}: {e}",
                "kind": "internal", "traceback": traceback.format_exc()}
        path = _record_error(args, info)
        print(f"error: [stage {args.command}] internal error: {type(e).__name__}: {e}"
              + (f"\n  traceback: {path}" if path else ""), file=sys.stderr)
        if os.environ.get("PIPELINE_DEBUG"):
            traceback.print_exc()
        return 3


def _model_name(args) -> str | None:
    try:
        s = _settings(args)
        return resolve(s.model, s.name).name if s.model else None
    except Exception:
        return None


def _record_error(args, info: dict):
    name = _model_name(args)
    if not name:
        return None
    try:
        mdir = ModelDir.of(args.out, name)
        mdir.root.mkdir(parents=True, exist_ok=True)
        write_json(mdir.error, info)
        return mdir.error
    except Exception:
        return None
