"""Untrusted content: no pickle in what we write or load, no file read or written outside
its folder. One conversion (module fixture) is scanned and then tampered with."""

from __future__ import annotations

import pathlib
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import cli
from pipeline.core.errors import PipelineError
from pipeline.core.untrusted import check_onnx, load_onnx, pickle_members

MODEL = "tests/models.py:conv2d_flatten_dense"
NAME = "conv2d_flatten_dense"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("untrusted")
    proc = cli("convert", "--model", MODEL, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_artifacts_hold_no_pickle(converted):
    files = [p for p in (converted / NAME).rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".onnx", ".npz", ".pt2", ".safetensors", ".json"} <= kinds, kinds
    found = {str(p): pickle_members(p) for p in files}
    assert not any(found.values()), {k: v for k, v in found.items() if v}
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".pt", ".pth", ".bin")]


def test_the_scan_finds_pickles(tmp_path):
    """The scan of the test above can fail: it finds each kind of pickle it looks for."""
    import torch

    torch.save({"w": torch.zeros(2)}, tmp_path / "t.pt2")
    np.savez(tmp_path / "o.npz", a=np.array([{"x": 1}], dtype=object), b=np.zeros(2))
    (tmp_path / "raw.bin").write_bytes(pickle.dumps({"a": 1}))
    assert pickle_members(tmp_path / "t.pt2")
    assert pickle_members(tmp_path / "o.npz") == ["a.npy"]
    assert pickle_members(tmp_path / "raw.bin") == ["raw.bin"]


class _Touch:
    """A pickle that touches a file when it is loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return pathlib.Path(self.path).touch, ()


def _poisoned_pt2(src: Path, dst: Path, marker: Path) -> None:
    """``src`` with its (empty) sample inputs replaced by a pickle that runs code."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if "/data/sample_inputs/" in item.filename:
                data = pickle.dumps(_Touch(marker), protocol=2)
            zout.writestr(item, data)


def test_poisoned_pt2_is_refused_before_loading(converted, tmp_path):
    import torch

    pt2 = converted / NAME / "import" / "model.pt2"
    # what torch.export.load does with such a file: it runs the pickle
    probe, ran = tmp_path / "probe.pt2", tmp_path / "torch-ran-it"
    _poisoned_pt2(pt2, probe, ran)
    try:
        torch.export.load(str(probe))
    except Exception:  # noqa: BLE001 - only whether the pickle ran matters here
        pass
    assert ran.exists(), "torch.export.load no longer unpickles sample inputs: revisit pipeline/untrusted.py"
    # the pipeline refuses it and runs nothing
    out = tmp_path / "out"
    shutil.copytree(converted / NAME, out / NAME)
    marker = tmp_path / "pipeline-ran-it"
    _poisoned_pt2(pt2, out / NAME / "import" / "model.pt2", marker)
    proc = cli("compare", "--model", MODEL, "--out", out)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "holds pickled payloads" in proc.stderr and "sample_inputs" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def _external_model(folder: Path, location: str) -> Path:
    """A one-Add ONNX model whose initializer is external data at ``location``."""
    w = numpy_helper.from_array(np.ones((2,), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "8")):
        w.external_data.add(key=k, value=v)
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"], name="add")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [w])
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "sub/../../secret.bin"],
                         ids=["dotdot", "absolute", "nested-dotdot"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.full(2, 7, np.float32).tobytes())
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    path = _external_model(folder, location)
    with pytest.raises(PipelineError, match="outside the model's folder"):
        check_onnx(path, "rewrite", "m")


def test_external_data_inside_folder_loads(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.full(2, 7, np.float32).tobytes())
    proto = load_onnx(_external_model(tmp_path, "w.bin"), "rewrite", "m")
    np.testing.assert_array_equal(numpy_helper.to_array(proto.graph.initializer[0]), np.full(2, 7, np.float32))


def test_rewrite_refuses_raw_onnx_reading_outside(converted, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(converted / NAME / "export", out / NAME / "export")
    raw = out / NAME / "export" / "raw.onnx"
    m = onnx.load(str(raw))
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../../../../etc/passwd")
    raw.write_bytes(m.SerializeToString())
    proc = cli("rewrite", "--model", MODEL, "--out", out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "references external data '../../../../etc/passwd' outside the model's folder" in proc.stderr
    assert "stage rewrite" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / NAME / "rewrite").exists()
