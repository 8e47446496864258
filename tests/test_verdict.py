"""Compare's verdict on synthetic results: the torch ports the user keeps (model.py,
model.pt2) decide ``status``; an ONNX stage or onnx2torch out of tolerance is a warning
naming it. No model is converted; every case states its tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stages.compare import KEPT, RUNNERS, compare_arrays, verdict

RTOL, ATOL = 1e-5, 1e-7
REF = np.linspace(-1.0, 1.0, 24, dtype=np.float32).reshape(2, 12)


def _results(rel_err: dict) -> dict:
    """{stage: {"out": compare_arrays(...)}} with each stage's output ``rel_err`` (of max|REF|) off."""
    return {s: {"out": compare_arrays(REF, REF.astype(np.float64) + rel_err.get(s, 0.0), RTOL, ATOL)}
            for s in RUNNERS}


@pytest.mark.parametrize("stage", ["onnx_raw", "onnx_nchw", "torch"])
def test_cross_check_off_is_a_warning_naming_it(stage):
    results = _results({stage: 7e-5})
    assert not results[stage]["out"]["ok"]
    status, warnings = verdict(results, RTOL, ATOL)
    assert status == "ok"
    assert len(warnings) == 1 and warnings[0].startswith(f"stage {stage} (")
    assert "max rel error 7e-05" in warnings[0] and f"rtol {RTOL:g} + atol {ATOL:g}" in warnings[0]


@pytest.mark.parametrize("stage", KEPT)
def test_kept_port_off_is_a_mismatch(stage):
    status, warnings = verdict(_results({stage: 1e-4, "onnx_nchw": 1e-4}), RTOL, ATOL)
    assert status == "mismatch"
    assert [w.split(" (")[0] for w in warnings] == ["stage onnx_nchw"]   # kept ports are not warnings


def test_all_within_tolerance_is_ok_without_warnings():
    assert verdict(_results({s: 2e-6 for s in RUNNERS}), RTOL, ATOL) == ("ok", [])


def test_missing_kept_port_is_a_mismatch():
    results = _results({})
    del results["torch_pt2"]
    del results["torch"]   # a skipped cross-check is no warning
    assert verdict(results, RTOL, ATOL) == ("mismatch", [])


def test_float64_pass_counts_as_pass():
    """A kept port that failed strictly and was let through by the float64 check (``ok`` set
    by ``float32_precision``) is a pass."""
    results = _results({"torch_codegen": 3e-5})
    assert verdict(results, RTOL, ATOL)[0] == "mismatch"
    results["torch_codegen"]["out"].update(ok=True, float32_precision={"keras_vs_float64": 2e-5,
                                                                        "stage_vs_float64": 3e-5})
    assert verdict(results, RTOL, ATOL) == ("ok", [])


def test_nan_in_cross_check_names_it():
    results = _results({})
    results["onnx_raw"]["out"] = compare_arrays(REF, np.full_like(REF, np.nan), RTOL, ATOL)
    status, warnings = verdict(results, RTOL, ATOL)
    assert status == "ok" and warnings[0].startswith("stage onnx_raw (raw.onnx) is out of tolerance: max rel error nan")
