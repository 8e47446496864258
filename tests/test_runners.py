"""The runners (``pipeline.runners``): one interface per backend, on one converted two-input,
two-output model. Each runner checks its feeds, gives the outputs of the model it runs,
refuses what it must; onnx2torch's port is converted once per process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ENV, REPO, cli
from test_untrusted import _poisoned_pt2
from pipeline import runners
from pipeline.core.artifacts import ModelDir, read_json
from pipeline.core.errors import PipelineError
from pipeline.core.reference import inputs_for, load_reference, output_to_keras
from pipeline.runners import pytorch

MODEL, NAME = "tests/models.py:multi_io", "multi_io"
RTOL, ATOL = 1e-5, 1e-6   # the torch ports against onnxruntime on the same graph


@pytest.fixture(scope="module")
def mdir(tmp_path_factory) -> ModelDir:
    out = tmp_path_factory.mktemp("runners")
    proc = cli("convert", "--model", MODEL, "--out", out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return ModelDir.of(out, NAME)


@pytest.fixture(scope="module")
def feeds(mdir):
    """(Keras-layout reference inputs, the rewritten model's inputs, Keras' outputs)."""
    inputs, ref = load_reference(mdir.stage("export") / "reference.npz")
    return inputs, inputs_for(read_json(mdir.stage("rewrite") / "rewrite.json"), inputs), ref


def _runner(kind: str, mdir: ModelDir):
    return {"onnx_raw": lambda: runners.OnnxRuntimeRunner(mdir.stage("export") / "raw.onnx", name="onnx_raw"),
            "onnx_nchw": lambda: runners.OnnxRuntimeRunner(mdir.stage("rewrite") / "nchw.onnx", name="onnx_nchw"),
            "torch": lambda: runners.OnnxToTorchRunner(mdir),
            "torch_codegen": lambda: runners.GeneratedRunner(mdir),
            "torch_pt2": lambda: runners.Pt2Runner(mdir)}[kind]()


KINDS = ["onnx_raw", "onnx_nchw", "torch", "torch_codegen", "torch_pt2"]


def test_importing_the_package_imports_no_framework():
    code = ("import sys, pipeline.runners; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'onnx2torch', 'tensorflow', 'keras') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_feeds_are_checked_by_name(mdir, feeds, kind):
    inputs, cf, _ = feeds
    runner = _runner(kind, mdir)
    given = inputs if kind == "onnx_raw" else cf
    assert sorted(runner.input_names) == ["image", "signal"]
    with pytest.raises(PipelineError, match=rf"runner '{kind}': input 'signal' missing") as e:
        runner.infer({"image": given["image"]})
    assert e.value.info.model is None or e.value.info.model == NAME
    with pytest.raises(PipelineError, match=rf"runner '{kind}': 'extra' not an input of the model"):
        runner.infer({**given, "extra": given["image"]})


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_outputs_match_keras(mdir, feeds, kind):
    """Every runner reproduces Keras' recorded outputs (the pipeline's own tolerance)."""
    inputs, cf, ref = feeds
    facts = read_json(mdir.stage("rewrite") / "rewrite.json")
    with _runner(kind, mdir) as runner:
        assert runner.last_inference_time() is None
        got = runner.infer(inputs if kind == "onnx_raw" else cf)
        assert runner.last_inference_time() > 0   # the backend's call alone
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
        g = got[k] if kind == "onnx_raw" else output_to_keras(facts, k, got[k])
        np.testing.assert_allclose(g, v, rtol=0, atol=1e-5 * float(np.abs(v).max()) + 1e-7, err_msg=f"{kind} {k}")


@pytest.mark.parametrize("kind", ["torch", "torch_codegen", "torch_pt2"])
def test_torch_ports_match_onnxruntime_on_the_same_graph(mdir, feeds, kind):
    _, cf, _ = feeds
    expected = runners.OnnxRuntimeRunner(mdir.stage("rewrite") / "torch.onnx").infer(cf)
    got = _runner(kind, mdir).infer(cf)
    assert list(got) == list(expected)   # outputs in the graph's order
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=RTOL, atol=ATOL, err_msg=k)


def test_torch_runner_of_a_module(mdir, feeds):
    """Any module: the generated one, named by hand, gives what GeneratedRunner gives."""
    _, cf, _ = feeds
    gen = runners.GeneratedRunner(mdir)
    plain = runners.TorchRunner(runners.load_generated(mdir), gen.input_names, gen.output_names, name="mine")
    a, b = gen.infer(cf), plain.infer(cf)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    wrong = runners.TorchRunner(runners.load_generated(mdir), gen.input_names, ["only_one"], name="mine")
    with pytest.raises(PipelineError, match="runner 'mine': the module returned 2 outputs, the model has 1"):
        wrong.infer(cf)


def test_backend_failure_names_the_runner(mdir, feeds):
    _, cf, _ = feeds
    bad = {k: v[..., :1] for k, v in cf.items()}   # wrong shapes
    with pytest.raises(PipelineError, match=r"runner 'onnx_nchw' failed: \w+"):
        runners.OnnxRuntimeRunner(mdir.stage("rewrite") / "nchw.onnx", name="onnx_nchw").infer(bad)


def test_load_gives_the_pt2_program(mdir, feeds):
    """``runners.load``: model.pt2 when the import stage made one (import.json ``format``)."""
    import torch

    assert read_json(mdir.stage("import") / "import.json")["format"] == "pt2"
    module = runners.load(mdir)
    assert isinstance(module, torch.nn.Module)
    _, cf, _ = feeds
    got = runners.TorchRunner(module, ["image", "signal"], runners.Pt2Runner(mdir).output_names).infer(cf)
    want = runners.Pt2Runner(mdir).infer(cf)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_pt2_holding_pickle_is_refused(mdir, feeds, tmp_path):
    import shutil

    copy = ModelDir.of(tmp_path, NAME)
    shutil.copytree(mdir.root, copy.root)
    marker = tmp_path / "ran"
    _poisoned_pt2(mdir.stage("import") / "model.pt2", copy.stage("import") / "model.pt2", marker)
    with pytest.raises(PipelineError, match="holds pickled payloads"):
        runners.Pt2Runner(copy).infer(feeds[1])
    with pytest.raises(PipelineError, match="holds pickled payloads"):
        runners.load(copy)
    assert not marker.exists()


@pytest.fixture()
def counted(monkeypatch):
    """The number of onnx2torch conversions (``pytorch.convert_onnx`` calls) in this process."""
    calls = []
    real = pytorch.convert_onnx
    monkeypatch.setattr(pytorch, "convert_onnx", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    pytorch.clear_cache()
    yield calls
    pytorch.clear_cache()


def test_onnx2torch_port_is_converted_once_per_process(mdir, feeds, counted, tmp_path):
    from pipeline.core.config import Settings
    from pipeline.stages import compare

    _, cf, _ = feeds
    first = runners.OnnxToTorchRunner(mdir).infer(cf)
    again = runners.OnnxToTorchRunner(mdir).infer(cf)
    assert runners.onnx2torch_module(mdir) is runners.onnx2torch_module(mdir)
    compare.run(mdir, Settings())   # compare's torch column, as `compare --per-layer` runs it before debug
    assert len(counted) == 1, counted
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    # new import weights (path, mtime and size): converted again, and only the new port is kept
    weights = mdir.stage("import") / "onnx2torch.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    runners.onnx2torch_module(mdir)
    assert len(counted) == 2 and len(pytorch._PORT) == 1


def test_onnx2torch_port_carries_the_import_weights(mdir, feeds, counted, tmp_path):
    """The port has ``import/onnx2torch.safetensors``' weights, so a fault there shows in it."""
    import shutil

    from safetensors.numpy import load_file, save_file

    copy = ModelDir.of(tmp_path, NAME)
    shutil.copytree(mdir.root, copy.root)
    path = copy.stage("import") / "onnx2torch.safetensors"
    w = load_file(str(path))
    key = next(k for k in w if k.endswith(".weight"))
    save_file({**w, key: w[key] + np.float32(0.5)}, str(path))
    _, cf, _ = feeds
    clean, broken = runners.OnnxToTorchRunner(mdir).infer(cf), runners.OnnxToTorchRunner(copy).infer(cf)
    assert any(not np.allclose(clean[k], broken[k], rtol=RTOL, atol=ATOL) for k in clean)


def test_keras_runner_reproduces_the_recorded_outputs(mdir, feeds):
    """Keras in a TensorFlow process of its own gives Keras' recorded outputs again."""
    inputs, _, ref = feeds
    build = "pipeline.stages.compare:keras_model"
    with runners.KerasRunner(mdir, build) as keras_runner:
        assert keras_runner.input_names == ["image", "signal"]
        with pytest.raises(PipelineError, match="runner 'keras': input 'image' missing"):
            keras_runner.infer({"signal": inputs["signal"]})
        assert keras_runner._proc is None   # feeds are checked before the worker starts
        got = keras_runner.infer(inputs)
        assert keras_runner.last_inference_time() > 0
        again = keras_runner.infer(inputs)   # the same worker, the model built once
        proc = keras_runner._proc
    assert proc.poll() is not None   # closed with the runner
    for k, v in ref.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
        np.testing.assert_array_equal(again[k], got[k])


def test_keras_runner_reports_a_builder_that_fails(mdir, feeds):
    with runners.KerasRunner(mdir, "pipeline.stages.compare:no_such_builder") as keras_runner:
        with pytest.raises(PipelineError, match="runner 'keras': AttributeError: .*no_such_builder"):
            keras_runner.infer(feeds[0])


def test_keras_runner_reports_a_worker_that_dies(mdir, feeds):
    """``sys.exit(mdir)`` as the builder: the worker exits with status 1 and says why on stderr."""
    runner = runners.KerasRunner(mdir, "sys:exit")
    with pytest.raises(PipelineError, match=r"the Keras worker process died \(exit status 1\): .*ModelDir"):
        runner.infer(feeds[0])
    assert runner._proc is None and runner._tmp is None   # nothing left behind


def test_keras_runner_float64_twin(mdir, feeds):
    """``dtype="float64"``: the same model computing in float64, near Keras' float32 outputs."""
    inputs, _, ref = feeds
    _assert_float64_twin(mdir, inputs, ref)


def _assert_float64_twin(mdir, inputs, ref):
    """The twin's outputs: float64, within 1e-5 of each output's scale from Keras' float32
    ones, and not those same values (not the float32 model again)."""
    with runners.KerasRunner(mdir, "pipeline.stages.compare:keras_model", dtype="float64") as twin:
        got = twin.infer(inputs)
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
        assert got[k].dtype == np.float64, k
        np.testing.assert_allclose(got[k], v, rtol=0, atol=1e-5 * float(np.abs(v).max()), err_msg=k)
        assert not np.array_equal(got[k].astype(np.float32), v), k


def test_keras_runner_float64_twin_needs_the_recorded_model(mdir, feeds, tmp_path):
    """No twin of a model that does not give back Keras' recorded outputs: it would prove nothing."""
    import shutil

    copy = ModelDir.of(tmp_path, NAME)
    shutil.copytree(mdir.root, copy.root)
    path = copy.stage("export") / "reference.npz"
    with np.load(path) as z:
        arrays = {k: z[k] * np.float32(1.01) if k.startswith("output:") else z[k] for k in z.files}
    np.savez(path, **arrays)
    with runners.KerasRunner(copy, "pipeline.stages.compare:keras_model", dtype="float64") as twin:
        with pytest.raises(PipelineError, match=r"runner 'keras': the model rebuilt from tests/models.py:multi_io "
                                                r"does not reproduce Keras' recorded output '\w+' \(max \|diff\|"):
            twin.infer(feeds[0])
    with pytest.raises(ValueError, match="dtype must be"):
        runners.KerasRunner(mdir, "pipeline.stages.compare:keras_model", dtype="float16")


@pytest.mark.parametrize("name", ["conv3d_savedmodel", "tf_keras_conv2d_savedmodel"], ids=["keras3", "tf-keras-bn"])
def test_keras_runner_float64_twin_of_a_savedmodel(model_files, tmp_path, name):
    """A SavedModel's twin is its signature's frozen graph in float64 (tf.keras' fused batch
    norm written out): near Keras' float32 outputs, not them; compare's float64 check has it."""
    proc = cli("convert", "--model", model_files / name, "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    mdir = ModelDir.of(tmp_path, name)
    inputs, ref = load_reference(mdir.stage("export") / "reference.npz")
    _assert_float64_twin(mdir, inputs, ref)
    # a tolerance float32 cannot meet: the kept ports fail strictly, the float64 check runs
    proc = cli("compare", "--model", model_files / name, "--out", tmp_path, "--rtol", "0", "--atol", "0")
    prec = read_json(mdir.report)["float32_precision"]
    assert prec is not None and prec["available"], (prec, proc.stdout[-2000:])
