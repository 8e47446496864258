"""The bounded-memory export path (tf2onnx's large-model path, Dense kernels held out,
external data) and the benchmark machinery, on small models only."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from conftest import ENV, REPO, TESTS


def _ort(path, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})


@pytest.mark.parametrize("builder", ["conv2d_flatten_dense", "multi_io"], ids=["conv2d-bn-dense", "multi-io"])
def test_large_model_path_is_bit_identical_to_plain_tf2onnx(tmp_path, builder):
    proc = subprocess.run([sys.executable, str(TESTS / "export_paths.py"), builder, str(tmp_path), "256"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held ['" in proc.stdout, proc.stdout   # at least one Dense kernel went around grappler/tf2onnx
    large = tmp_path / "large" / "raw.onnx"
    assert (tmp_path / "large" / "raw.onnx.data").is_file()
    # every external tensor points at the data file beside the model, by a bare name
    proto = onnx.load(str(large), load_external_data=False)
    ext = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert ext and {e.value for t in ext for e in t.external_data if e.key == "location"} == {"raw.onnx.data"}
    onnx.checker.check_model(str(large))
    with np.load(tmp_path / "inputs.npz") as z:
        feeds = {k: z[k] for k in z.files}
    plain, got = _ort(tmp_path / "plain.onnx", feeds), _ort(large, feeds)
    assert len(plain) == len(got)
    for a, b in zip(plain, got):
        np.testing.assert_allclose(b, a, rtol=0, atol=0)   # bit for bit: the same folded weights
    plain_ops = sorted(n.op_type for n in onnx.load(str(tmp_path / "plain.onnx")).graph.node)
    assert sorted(n.op_type for n in proto.graph.node) == plain_ops


def test_bench_machinery_on_a_small_model(tmp_path):
    """Conv2D -> BN -> ... -> Dense: inference of model.py, its folded form and model.pt2 beside
    Keras and onnxruntime, and the training row (model.py, Keras, Keras on torch)."""
    name = "conv2d_bn_dropout"
    cfg = tmp_path / "bench.toml"
    cfg.write_text('[bench]\nbatches = [1, 4]\nrounds = { "1" = 3, "4" = 2 }\nwarmup = 1\ncompile = false\n'
                   'train_batch = 8\ntrain_warmup = 1\ntrain_rounds = 2\n\n'
                   f'[[models]]\nmodel = "tests/builders_trainable.py:{name}"\nname = "{name}"\n')
    proc = subprocess.run([sys.executable, "-m", "pipeline.tools.bench", "--config", str(cfg), "--out", str(tmp_path)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "py/keras" in proc.stdout and "py/k[torch]" in proc.stdout and name in proc.stdout
    assert "could not run" not in proc.stdout, proc.stdout
    res = json.loads((tmp_path / "bench.json").read_text())["results"][name]
    assert res["convert"]["status"] == "ok"
    assert set(res["convert"]["stages"]) == {"export", "rewrite", "import", "compare"}
    assert res["fused"]["pairs"] == [["conv1", "bn"]]
    for batch, rounds in (("1", 3), ("4", 2)):
        per = res["latency"][batch]
        assert set(per) == {"model.py", "fused", "model.pt2", "onnxruntime", "keras"}
        assert all(v["runs"] == rounds and v["median_s"] > 0 for v in per.values())
        r = res["ratios"][batch]
        assert r["model.py/keras"] == pytest.approx(per["model.py"]["median_s"] / per["keras"]["median_s"], rel=1e-12)
        assert r["model.py/fused"] == pytest.approx(per["model.py"]["median_s"] / per["fused"]["median_s"], rel=1e-12)
    train = res["train"]
    assert train["batch"] == 8 and set(train["steps"]) == {"model.py", "keras", "keras[torch]"}
    for k, v in train["steps"].items():
        assert v["runs"] == 2 and v["median_s"] > 0, (k, v)
    keras_tf, keras_torch = train["steps"]["keras"], train["steps"]["keras[torch]"]
    assert keras_tf["backend"] == "tensorflow" and not keras_tf["torch_imported"]
    assert keras_torch["backend"] == "torch" and not keras_torch["tensorflow_imported"]
    # the same trainable parameters in all three (Keras' count, the port's requires_grad numel)
    assert train["steps"]["model.py"]["trainable_params"] == keras_tf["trainable_params"] == \
        keras_torch["trainable_params"]
    plain = res["plain"]
    assert plain["export"]["ok"] and plain["import"]["ok"], plain
    assert plain["export"]["peak_rss_mb"] > 0 and plain["import"]["seconds"] > 0
    assert not res["convert"]["reused"] and not plain["reused"]
    assert res["wall"]["convert_s"] > 0 and res["wall"]["timing_s"] > 0

    # a second run times again but reuses both conversions, with the costs of the first
    proc = subprocess.run([sys.executable, "-m", "pipeline.tools.bench", "--config", str(cfg), "--out", str(tmp_path),
                           "--no-train"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "(earlier run)" in proc.stdout
    again = json.loads((tmp_path / "bench.json").read_text())["results"][name]
    assert again["train"] is None and "training:" not in proc.stdout
    assert again["convert"]["reused"] and again["plain"]["reused"]
    assert again["convert"]["stages"] == res["convert"]["stages"]
    assert {k: again["plain"][k] for k in ("export", "import")} == {k: plain[k] for k in ("export", "import")}
