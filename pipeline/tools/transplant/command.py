"""``python -m pipeline transplant``: its flags and its command, on the command line's own
``_model_of`` and ``_prepare`` (the missing stages, each in a process of its own, as
``debug`` runs them), handed in so that this package does not import ``cli``."""

from __future__ import annotations

# transplant's own flags, not passed to the stage processes: (flag, takes a value)
FLAGS = {"--into": True, "--init-args": True, "--input-layout": True, "--fold-flatten": False}


def add_parser(sub, common) -> None:
    tp = sub.add_parser("transplant", parents=[common], help="Keras weights into your own PyTorch module, checked "
                        "against Keras layer by layer, divergences explained (runs missing stages first)")
    tp.add_argument("--into", required=True, metavar="FILE.py:NAME",
                    help="your module: a class or a function returning an nn.Module")
    tp.add_argument("--init-args", help="its constructor's arguments, JSON: a list (positional) or an object")
    tp.add_argument("--input-layout", choices=("auto", "channels_first", "channels_last"), default="auto",
                    help="layout your forward takes (default: the converted model's, then Keras')")
    tp.add_argument("--fold-flatten", action="store_true",
                    help="permute the rows of each Dense after a Flatten, for a forward that flattens "
                         "channels-first data")


def without_flags(argv: list[str], flags: dict = FLAGS) -> list[str]:
    """``argv`` without ``flags`` (and their values), for the stage processes."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = flags[a]
        elif a.split("=", 1)[0] in flags:
            continue
        else:
            out.append(a)
    return out


def main(args, argv: list[str], model_of, prepare) -> int:
    """0 when the user's module reproduces Keras, 1 when not, 2 when a stage failed."""
    from pipeline.core import runstate
    from pipeline.tools import transplant

    settings, spec, mdir = model_of(args)
    with runstate.model_lock(mdir) as owner:
        if owner:
            for done in runstate.clean_stale(mdir):
                print(f"{spec.name}: {done} (left by a killed run)", flush=True)
        rc = prepare(without_flags(argv), settings, spec, mdir)
        if rc is not None:
            return rc
        s = transplant.run(mdir, settings, args.into, args.init_args, args.input_layout, args.fold_flatten)
    print(transplant.table(s))
    print(f"{spec.name} into {args.into}: {s['status']}  (state_dict: "
          f"{transplant.folder(mdir) / 'state_dict.safetensors'}, report: {transplant.folder(mdir) / 'report.html'})")
    return 0 if s["status"] == "ok" else 1
