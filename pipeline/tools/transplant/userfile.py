"""The user's own PyTorch module: ``path/net.py:MyNet`` (a class or a function returning an
``nn.Module``), imported as a model builder is (trusted code, the user's own), built with
``--init-args`` (JSON: a list of positional arguments or an object of keyword arguments)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

from pipeline.core.errors import PipelineError

STAGE = "transplant"


def parse_target(target: str) -> tuple[Path, str]:
    if not re.match(r"^.+\.py:[A-Za-z_][A-Za-z0-9_]*$", target or ""):
        raise PipelineError(STAGE, f"--into {target!r} is not 'path/net.py:MyNet'",
                            hint="INTO=path/to/file.py:ClassOrFunction")
    file, _, name = target.rpartition(":")
    if not Path(file).is_file():
        raise PipelineError(STAGE, f"the module file {file!r} does not exist", hint="INTO=path/to/file.py:MyNet")
    return Path(file), name


def parse_init_args(text: str | None) -> tuple[list, dict]:
    if not text:
        return [], {}
    try:
        v = json.loads(text)
    except ValueError as e:
        raise PipelineError(STAGE, f"--init-args is not JSON: {e}",
                            hint="--init-args '[10, 64]' (positional) or '{\"units\": 64}' (keywords)") from e
    if isinstance(v, list):
        return v, {}
    if isinstance(v, dict):
        return [], v
    return [v], {}


def build(target: str, init_args: str | None, model: str):
    """The user's module, in eval mode; errors name the file and what it returned."""
    import torch

    file, name = parse_target(target)
    mod_name = f"_pipeline_transplant_{file.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, str(file))
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: any error; name the file
        raise PipelineError(STAGE, f"importing {file} failed: {type(e).__name__}: {e}", model=model) from e
    factory = getattr(module, name, None)
    if factory is None:
        raise PipelineError(STAGE, f"{file} has no class or function {name!r}", model=model)
    args, kwargs = parse_init_args(init_args)
    torch.manual_seed(0)
    try:
        net = factory(*args, **kwargs)
    except Exception as e:  # the user's constructor
        raise PipelineError(STAGE, f"{target}(*{args}, **{kwargs}) failed: {type(e).__name__}: {e}", model=model,
                            hint="pass the constructor's arguments with --init-args (JSON)") from e
    if not isinstance(net, torch.nn.Module):
        raise PipelineError(STAGE, f"{target} gave {type(net).__name__}, not a torch.nn.Module", model=model)
    return net.eval()
