"""Bad input and untrusted content: one clear message (what, where, what to do), exit
status 2, no traceback, nothing half-written; and what registers or unlocks a model then
converts it. Model files come from tests/bad_inputs.py, run in a process of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENV, REPO, TESTS, assert_ok, cli, report



def run(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` with extra environment variables."""
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def leftovers(out: Path) -> list[str]:
    """Temporary stage folders or files a run left behind."""
    return [str(p) for p in Path(out).rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def assert_clean_error(proc, out: Path, *needles: str, stage_dirs_of: str | None = None):
    text = proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], text[-3000:])
    assert "Traceback" not in text and "Traceback" not in proc.stdout, text[-3000:]
    assert text.count("error: [") >= 1, text
    for n in needles:
        assert n in text, (n, text)
    assert not leftovers(out), leftovers(out)
    if stage_dirs_of:
        mdir = Path(out) / stage_dirs_of
        assert not any((mdir / s).exists() for s in ("export", "rewrite", "import", "compare")), list(mdir.iterdir())


# (id, model spec relative to the bad-files folder or "repo:" spec, extra args, model folder, needles)
CASES = [
    ("missing-path", "nope.keras", [], None, ["does not exist", "MODEL= takes"]),
    ("dir-not-savedmodel", "no_savedmodel", [], None, ["is not a TensorFlow SavedModel", "saved_model.pb"]),
    ("unknown-extension", "not_a_model.onnx", [], None, ["unknown model file type '.onnx'", "MODEL= takes"]),
    ("empty-keras", "empty.keras", [], "empty", ["stage export", "is empty (0 bytes)", "copy the file again"]),
    ("truncated-keras", "truncated.keras", [], "truncated", ["not a complete .keras archive", "truncated or damaged"]),
    ("empty-h5", "empty.h5", [], "empty", ["is empty (0 bytes)"]),
    ("truncated-h5", "truncated.h5", [], "truncated", ["not a complete HDF5 file", "truncated or damaged"]),
    ("weights-only-h5", "weights_only.h5", [], "weights_only",
     ["holds weights only", "no architecture", "model.save('model.h5')"]),
    ("newer-keras", "future.keras", [], "future",
     ["class 'HyperConv1D'", "written by Keras 9.0.0", "re-save the model with Keras"]),
    ("custom-unregistered", "custom.keras", [], "custom",
     ["class 'ScaleShift' from module tests.custom_layers",
      'custom_objects = ["tests.custom_layers:ScaleShift"]', "--custom-object tests.custom_layers:ScaleShift"]),
    ("custom-not-importable", "custom.keras", ["--custom-object", "no_such_pkg.layers:ScaleShift"], "custom",
     ["cannot import custom object 'no_such_pkg.layers:ScaleShift'", "must be importable"]),
    ("lambda-keras-safe", "lambda.keras", [], "lambda", ["serialized Python code", "--unsafe"]),
    ("lambda-h5-safe", "lambda.h5", [], "lambda", ["serialized Python code", "--unsafe"]),
    ("free-dim-reference-size-rejected", "repo:tests/models.py:free_length_flatten_dense", [],
     "free_length_flatten_dense", ["Keras cannot run the model on reference inputs", "[None, 16, 3]",
                                   "--reference-shape", "--input-shape"]),
    ("flatten-dense-after-free-dim", "repo:tests/models.py:free_flatten_dense", [], "free_flatten_dense",
     ["cannot build the model: a layer's weights depend on an input dimension left None", "dense/kernel",
      "Flatten -> Dense"]),
    ("reference-shape-does-not-fit", "repo:tests/models.py:unknown_length_conv1d", ["--reference-shape", "10,10"],
     "unknown_length_conv1d", ["reference shape [10, 10] given for input 'x' does not fit", "['N', '?', 3]"]),
    ("shape-does-not-fit", "repo:tests/models.py:conv1d_flatten_dense", ["--input-shape", "10,10"],
     "conv1d_flatten_dense", ["input shape [10, 10] given for input 'x' does not fit", "['N', 32, 3]"]),
    ("keras-outputs-nan", "repo:tests/bad_models.py:nan_weights", [], "nan_weights",
     ["Keras' own outputs ['dense'] contain NaN or inf", "not the conversion"]),
    ("tf-op-without-onnx-converter", "repo:tests/bad_models.py:erfinv", [], "erfinv",
     ["stage export, layer 'inverse_erf'", "tf2onnx has no converter for TensorFlow op 'Erfinv'"]),
    ("unsafe-name-dotdot", "repo:tests/models.py:conv1d_flatten_dense", ["--name", "../escaped"], None,
     ["model name '../escaped' is not a safe folder name"]),
    ("unsafe-name-absolute", "repo:tests/models.py:conv1d_flatten_dense", ["--name", "/tmp/escaped"], None,
     ["model name '/tmp/escaped' is not a safe folder name"]),
]


@pytest.mark.parametrize("spec, extra, folder, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error(tmp_path, bad_files, spec, extra, folder, needles):
    model = spec[5:] if spec.startswith("repo:") else bad_files / spec
    out, marker = tmp_path / "out", tmp_path / "lambda-ran"
    proc = run("convert", "--model", model, "--out", out, *extra, env={"LAMBDA_MARKER": str(marker)}, timeout=300)
    assert_clean_error(proc, out, *needles, stage_dirs_of=folder)
    assert not marker.exists(), "the refused file's code was executed"
    if folder:   # the failure is in the report, with the stage
        rep = report(out, folder)
        assert rep["status"] == "failed" and rep["error"]["stage"] == "export", rep
    # nothing was written outside OUT
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped").exists()


def test_config_cannot_write_outside_out(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('model = "models.py:conv1d_flatten_dense"\nname = "../outside"\n')
    (tmp_path / "models.py").symlink_to(TESTS / "models.py")
    proc = cli("convert", "--config", cfg, "--out", tmp_path / "out")
    assert_clean_error(proc, tmp_path / "out", "stage config", "model name '../outside' is not a safe folder name")
    assert not (tmp_path / "outside").exists()


def test_unsupported_op_names_layer_node_op_and_stage(tmp_path):
    proc = cli("convert", "--model", "tests/bad_models.py:top_k", "--out", tmp_path, timeout=600)
    assert_clean_error(proc, tmp_path, "model 'top_k', stage import, layer 'top_values', node '", "(TopK)",
                       "no PyTorch converter for ONNX op TopK", '@handles("TopK"', "pipeline/codegen/ops/")
    rep = report(tmp_path, "top_k")
    assert rep["status"] == "failed"
    assert rep["error"]["stage"] == "import" and rep["error"]["op_type"] == "TopK"
    assert rep["error"]["layer"] == "top_values"
    assert not (tmp_path / "top_k" / "import").exists()   # the failed stage left nothing
    assert (tmp_path / "top_k" / "rewrite" / "torch.onnx").is_file()   # the earlier stages are kept


def test_custom_object_flag_converts(tmp_path, bad_files):
    proc = cli("convert", "--model", bad_files / "custom.keras", "--out", tmp_path,
               "--custom-object", "tests.custom_layers:ScaleShift", timeout=600)
    assert_ok(proc, tmp_path, "custom")


def test_custom_object_config_entry_is_imported(tmp_path, bad_files):
    cfg = tmp_path / "custom.toml"
    cfg.write_text(f'model = "{bad_files / "custom.keras"}"\ncustom_objects = ["tests.custom_layers:ScaleShift"]\n')
    proc = cli("export", "--config", cfg, "--out", tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "custom" / "export" / "raw.onnx").is_file()


def test_lambda_converts_with_unsafe(tmp_path, bad_files):
    marker = tmp_path / "lambda-ran"
    proc = run("convert", "--model", bad_files / "lambda.keras", "--out", tmp_path, "--unsafe",
               env={"LAMBDA_MARKER": str(marker)})
    assert_ok(proc, tmp_path, "lambda")
    assert marker.exists()   # the marker works: the refused cases above did not run the code
    help_text = cli("convert", "--help").stdout
    assert "--unsafe" in help_text and "runs that code" in help_text


def test_lambda_h5_loads_with_unsafe(tmp_path, bad_files):
    marker = tmp_path / "lambda-ran"
    proc = run("export", "--model", bad_files / "lambda.h5", "--out", tmp_path, "--unsafe",
               env={"LAMBDA_MARKER": str(marker)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists()
    assert (tmp_path / "lambda" / "export" / "raw.onnx").is_file()
