"""verify(): the comparison rules on synthetic arrays, the report records, and real exports passed and broken."""

import dataclasses
import json
import math
import re
import shutil

import numpy as np
import torch
import pytest

import shapetrace
from shapetrace import ParityReport, SignatureFileError, VerifyError
from shapetrace.constraints import alternative_sizes, check
from shapetrace.manifest import Dim, GraphEntry
from shapetrace.testing import EXAMPLES
from shapetrace._verify.verify import (DEFAULT_TOLERANCES, ParityCheck, compare_arrays, render_report,
                               resized_inputs, resolve_tolerance)


# ============================================================================ comparison rules, synthetic arrays


def test_within_tolerance_passes_and_reports_its_errors():
    ref = np.array([1.0, -2.0, 4.0], dtype=np.float32)
    out = ref + np.array([5e-5, 0.0, -2e-3], dtype=np.float32)  # last: 2e-3 <= 1e-4 + 1e-3 * 4
    r = compare_arrays(out, ref, atol=1e-4, rtol=1e-3)
    assert r and r.passed
    assert r.max_abs == pytest.approx(2e-3, rel=1e-3)
    assert r.max_rel == pytest.approx(5e-4, rel=1e-3)
    assert r.mean_abs == pytest.approx((5e-5 + 2e-3) / 3, rel=1e-3)
    assert r.needed_atol == 0.0  # at rtol 1e-3 no atol is needed
    assert r.cosine == pytest.approx(1.0, abs=1e-6) and r.cosine < 1.0
    assert r.message == ""


def test_outside_tolerance_fails_with_the_atol_and_rtol_it_would_have_needed():
    ref = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = ref.copy()
    out[1, 2] += 0.01  # 6.01 vs 6: needs atol 0.01 - 1e-3 * 6 = 4e-3, or rtol (0.01 - 1e-4) / 6 = 1.65e-3
    r = compare_arrays(out, ref, atol=1e-4, rtol=1e-3)
    assert not r
    assert r.worst_index == (1, 2)
    assert r.max_abs == pytest.approx(0.01)
    assert r.needed_atol == pytest.approx(4e-3)
    assert r.needed_rtol == pytest.approx(1.65e-3)
    assert compare_arrays(out, ref, atol=r.needed_atol * 1.0001, rtol=1e-3)
    assert compare_arrays(out, ref, atol=1e-4, rtol=r.needed_rtol * 1.0001)
    assert "max abs error 0.01 at [1, 2] (6.01 vs 6)" in r.message and "would need atol 0.004" in r.message


def test_zeros_in_the_reference_relative_error():
    # 0 vs 0 is no error (not 0/0 = NaN); 0.5 vs 0 is an infinite relative error, but only atol can cover it
    r = compare_arrays(np.array([0.0, 0.5, 2.0]), np.array([0.0, 0.0, 4.0]), atol=1e-4, rtol=1e-3)
    assert not r
    assert r.max_abs == 2.0 and r.max_rel == math.inf and r.needed_rtol == math.inf
    assert r.mean_abs == pytest.approx(2.5 / 3)
    assert r.needed_atol == pytest.approx(2.0 - 1e-3 * 4.0)
    assert r.worst_index == (2,)
    tiny = compare_arrays(np.array([0.0, 5e-5]), np.array([0.0, 0.0]), atol=1e-4, rtol=1e-3)
    assert tiny and tiny.max_rel == math.inf and tiny.needed_rtol == 0.0  # atol covers it: passes
    both_zero = compare_arrays(np.zeros(4), np.zeros(4))
    assert both_zero and both_zero.max_rel == 0.0 and both_zero.cosine == 1.0


def test_nan_never_passes():
    r = compare_arrays(np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 3.5]), atol=10.0, rtol=10.0)
    assert not r
    assert r.nan_count == 1 and r.worst_index == (1,)
    assert r.max_abs == 0.5  # metrics cover the other elements
    assert r.message == "1 NaN (1 in output, 0 in reference), first at [1]"
    both = compare_arrays(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), atol=10.0, rtol=10.0)
    assert not both and both.nan_count == 1 and "1 in output, 1 in reference" in both.message
    assert not compare_arrays(np.full(3, np.nan), np.full(3, np.nan))


def test_inf_passes_only_against_the_same_inf():
    same = compare_arrays(np.array([np.inf, -np.inf, 1.0]), np.array([np.inf, -np.inf, 1.0]))
    assert same and same.max_abs == 0.0 and same.max_rel == 0.0
    flipped = compare_arrays(np.array([np.inf, 1.0]), np.array([-np.inf, 1.0]), atol=1e9, rtol=1e9)
    assert not flipped and flipped.max_abs == math.inf and flipped.worst_index == (0,)
    assert flipped.needed_atol == math.inf and flipped.needed_rtol == math.inf
    finite = compare_arrays(np.array([np.inf, 1.0]), np.array([3.0e38, 1.0]), atol=1e9, rtol=1e9)
    assert not finite and finite.max_abs == math.inf and finite.max_rel == math.inf


def test_bool_outputs_are_compared_exactly():
    r = compare_arrays(np.array([True, False, True, True]), np.array([True, True, True, True]), atol=10, rtol=10)
    assert not r and r.exact and r.atol == 0.0 and r.rtol == 0.0
    assert r.max_abs == 1.0 and r.mean_abs == 0.25 and r.worst_index == (1,)
    assert r.message == "1 of 4 elements differ (exact comparison); first at [1]: False vs True"
    assert compare_arrays(np.array([True, False]), np.array([True, False]))


def test_integer_outputs_are_compared_exactly():
    r = compare_arrays(np.array([3, 4, 7], dtype=np.int64), np.array([3, 5, 7], dtype=np.int64), atol=100, rtol=1)
    assert not r and r.exact
    assert r.max_abs == 1.0 and r.max_rel == pytest.approx(0.2) and r.worst_index == (1,)
    big = np.array([2**62 + 1], dtype=np.int64)  # beyond float64 precision: still told apart
    assert not compare_arrays(big, big - 1)
    assert compare_arrays(np.array([3, 5], dtype=np.int32), np.array([3, 5], dtype=np.int64))


def test_fp16_is_cast_up_before_subtracting():
    # 65504 - (-65504) overflows to inf in float16; in float64 it is 131008
    r = compare_arrays(np.array([65504.0, 1.0], dtype=np.float16), np.array([-65504.0, 1.0], dtype=np.float16))
    assert not r and r.max_abs == 131008.0 and r.max_rel == 2.0
    half = compare_arrays(np.array([1.0009765625], dtype=np.float16), np.array([1.0], dtype=np.float32),
                          atol=0.0, rtol=1e-3)  # the next float16 after 1.0, against a float32 reference
    assert half and half.max_abs == 2.0**-10 and half.needed_rtol == 2.0**-10


def test_shape_mismatch_is_a_failure_not_an_exception():
    r = compare_arrays(np.zeros((2, 3)), np.zeros((3, 2)))
    assert not r and r.shape == (2, 3) and r.ref_shape == (3, 2)
    assert r.message == "shape [2, 3] != reference shape [3, 2]"
    assert math.isnan(r.max_abs) and r.needed_atol == math.inf and r.worst_index is None
    assert not compare_arrays(np.zeros(()), np.zeros((1,)))


def test_cosine_similarity():
    assert compare_arrays(np.array([1.0, 0.0]), np.array([0.0, 1.0]), atol=10).cosine == 0.0
    assert compare_arrays(np.array([2.0, 4.0]), np.array([1.0, 2.0]), atol=10).cosine == pytest.approx(1.0)
    assert compare_arrays(np.array([-1.0, -2.0]), np.array([1.0, 2.0]), atol=10).cosine == pytest.approx(-1.0)
    assert compare_arrays(np.zeros(3), np.array([1.0, 0.0, 0.0]), atol=10).cosine == 0.0


def test_empty_outputs_pass():
    r = compare_arrays(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    assert r and r.max_abs == 0.0


# ============================================================================ tolerances


def test_default_tolerances_by_dtype_and_overrides():
    assert resolve_tolerance("unet", "sample", "float32") == DEFAULT_TOLERANCES["float32"]
    assert DEFAULT_TOLERANCES["float32"].atol == 1e-4 and DEFAULT_TOLERANCES["float32"].rtol == 1e-3
    assert resolve_tolerance("unet", "sample", "float16").atol == 1e-2
    assert resolve_tolerance("unet", "mask", "bool").exact and resolve_tolerance("m", "ids", "int64").exact
    tol = {"unet": {"atol": 1e-2}, "unet:sample": {"rtol": 0.5}}
    t = resolve_tolerance("unet", "sample", "float32", atol=1e-3, rtol=1e-2, tolerances=tol)
    assert (t.atol, t.rtol) == (1e-2, 0.5)  # graph beats the global atol, output beats the graph
    t = resolve_tolerance("unet", "other", "float32", atol=1e-3, rtol=1e-2, tolerances=tol)
    assert (t.atol, t.rtol) == (1e-2, 1e-2)
    t = resolve_tolerance("vae", "sample", "float32", atol=1e-3, tolerances=tol)
    assert (t.atol, t.rtol) == (1e-3, 1e-3)
    assert resolve_tolerance("unet", "ids", "int64", atol=1.0, tolerances=tol).exact  # ints stay exact


# ============================================================================ resized inputs


def test_alternative_sizes_change_every_dim_and_respect_constraints():
    entry = {"name": "cn", "dims": {
        "batch": {"min": 1, "max": 63, "example": 2},
        "height": {"min": 1, "max": None, "example": 8},
        "cond_height": {"min": 1, "max": None, "example": 64},
        "sequence": {"min": 1, "max": 77, "example": 77}},
        "constraints": ["height == (1 + (((-1) + cond_height) // 8))", "(height % 2) == 0", "batch < 64"]}
    sizes = alternative_sizes(_dims(entry), entry["constraints"])
    assert sizes is not None and set(sizes) == set(entry["dims"])
    assert all(sizes[d] != info["example"] for d, info in entry["dims"].items()), sizes
    assert check(entry["constraints"], sizes, _dims(entry)) == []
    assert sizes["sequence"] == 76  # nearest valid size below the max


def test_alternative_sizes_keep_a_dim_that_cannot_change():
    entry = {"name": "g", "dims": {"batch": {"min": 1, "max": None, "example": 1},
                                   "seq": {"min": 4, "max": 4, "example": 4}}, "constraints": []}
    assert alternative_sizes(_dims(entry), []) == {"batch": 2, "seq": 4}
    assert alternative_sizes({"seq": Dim("seq", 4, 4, 4)}, []) is None
    assert alternative_sizes({}, []) is None


def _dims(entry):
    return {n: Dim.from_json(n, d) for n, d in entry["dims"].items()}


def test_resized_inputs_follow_the_recorded_values():
    entry = {"name": "g", "inputs": [
        {"name": "sample", "dtype": "float32", "shape": ["batch", 4, "height"], "example_shape": [2, 4, 8]},
        {"name": "timestep", "dtype": "int64", "shape": [], "example_shape": [], "value_range": [981, 981]},
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "example_shape": [2, 7],
         "value_range": [3, 40]},
        {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"], "example_shape": [2, 7],
         "value_range": [0, 1]},
        {"name": "scale", "dtype": "float16", "shape": [1], "example_shape": [1]}]}
    rng = np.random.default_rng(0)
    example = {"sample": (rng.standard_normal((2, 4, 8)) * 3 + 10).astype(np.float32),
               "timestep": np.array(981), "input_ids": rng.integers(3, 41, (2, 7)),
               "attention_mask": np.array([[1] * 7, [1] * 5 + [0] * 2]),
               "scale": np.array([0.5], np.float16)}
    feed = resized_inputs(GraphEntry.from_json(entry), example, {"batch": 3, "height": 6, "seq": 9}, seed=0)
    assert feed["sample"].shape == (3, 4, 6) and feed["sample"].dtype == np.float32
    assert abs(feed["sample"].mean() - 10) < 1.5 and 1.5 < feed["sample"].std() < 4.5
    assert feed["timestep"].shape == () and feed["timestep"] == 981
    ids = feed["input_ids"]
    assert ids.shape == (3, 9) and ids.dtype == np.int64 and ids.min() >= 3 and ids.max() <= 40
    mask = feed["attention_mask"]
    assert mask.shape == (3, 9) and set(np.unique(mask)) <= {0, 1} and (mask[:, 0] == 1).all()
    assert (np.diff(mask, axis=1) <= 0).all()  # ones then zeros, like padding
    assert feed["scale"].dtype == np.float16 and feed["scale"][0] == np.float16(0.5)
    again = resized_inputs(GraphEntry.from_json(entry), example, {"batch": 3, "height": 6, "seq": 9}, seed=0)
    assert all(np.array_equal(feed[k], again[k]) for k in feed)  # seeded


# ============================================================================ report records


def _check(graph="unet", output="sample", passed=True, error=None, **kw):
    if error is not None:
        return ParityCheck(graph, "onnxruntime", "torch", "resized", "*", None, error)
    out = np.array([1.0, 2.0]) if passed else np.array([1.0, 2.5])
    return ParityCheck(graph, kw.get("backend", "onnxruntime"), "torch", kw.get("input_set", "example"), output,
                       compare_arrays(out, np.array([1.0, 2.0])))


def test_report_is_truthy_only_when_every_check_passed():
    assert not ParityReport(())
    assert ParityReport(()).summary() == "parity FAILED: nothing was compared"
    ok = ParityReport((_check(), _check(output="other")))
    assert ok and ok.failures == () and ok.summary() == "parity ok: 2 checks passed"
    bad = ParityReport((_check(), _check(graph="vae", output="image", passed=False), _check(output="x")))
    assert not bad and [c.graph for c in bad.failures] == ["vae"]
    assert bad.worst().output == "image"
    assert bad.summary().startswith("parity FAILED: 1 of 3 checks; worst: graph 'vae' output 'image' on "
                                    "onnxruntime vs torch (example inputs): max abs error 0.5")
    err = ParityReport((_check(), _check(error="InvalidArgument: Got invalid dimensions")))
    assert not err and err.failures[0].verdict == "ERROR"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.checks[0].graph = "other"  # frozen records


def test_report_json_round_trip_keeps_inf_and_nan_readable():
    checks = (_check(), _check(passed=False),
              ParityCheck("g", "openvino", "recorded", "example", "y", compare_arrays(np.zeros(2), np.zeros(3))),
              _check(error="boom"))
    report = ParityReport(checks, "out", ("onnxruntime",), ("a note",))
    text = json.dumps(report.to_json())  # strict JSON: inf / nan become strings
    assert "Infinity" not in text and "NaN" not in text
    data = json.loads(text)
    assert data["passed"] is False and data["num_checks"] == 4 and data["num_failures"] == 3
    back = ParityReport.from_json(data, "out")
    assert back.to_json() == report.to_json() and back.checks[0] == report.checks[0]
    assert math.isnan(back.checks[2].result.max_abs) and back.checks[2].result.needed_atol == math.inf


def test_report_table_is_aligned_and_names_every_failure():
    report = ParityReport((_check(), _check(output="down_block_res_samples.0", passed=False, input_set="resized"),
                           _check(graph="vae.decode", error="Fail: broadcast 2 by 16")), notes=("n1",))
    text = render_report(report)
    lines = text.splitlines()
    assert lines[0].split() == ["graph", "backend", "vs", "inputs", "output", "max", "abs", "max", "rel", "cos",
                                "need", "atol", "verdict"]
    table = lines[2:4]
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    assert all(len(row) <= len(lines[1]) for row in table)
    assert [row.split()[-1] for row in table] == ["pass", "FAIL"]
    assert table[1].index("FAIL") == starts[-1]  # verdict column aligned with its header
    assert "FAIL: graph 'unet' output 'down_block_res_samples.0' on onnxruntime vs torch (resized inputs): " \
           "max abs error 0.5" in text
    assert "ERROR: graph 'vae.decode' on onnxruntime vs torch (resized inputs): Fail: broadcast 2 by 16" in text
    assert "note: n1" in text and lines[-1] == report.summary()


# ============================================================================ verify() on a tiny export


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def _edit_manifest(out, edit):
    m = _manifest(out)
    edit(m)
    (out / "manifest.json").write_text(json.dumps(m))


def test_verify_from_the_folder_alone_and_the_parity_it_writes(tiny):
    before = _manifest(tiny)
    report = shapetrace.verify(tiny)
    assert report, str(report)
    seen = {(c.backend, c.reference, c.input_set) for c in report.checks}
    assert seen == {("onnxruntime", "recorded", "example"), ("openvino", "recorded", "example"),
                    ("openvino", "onnxruntime", "resized")}
    resized = next(c for c in report.checks if c.input_set == "resized")
    assert resized.sizes == {"batch": 3, "seq": 6}
    assert {c.output for c in report.checks} == {"h", "positive", "total"}
    assert all(c.result.exact for c in report.checks if c.output in ("positive", "total"))
    after = _manifest(tiny)
    assert after["parity"] == json.loads(json.dumps(report.to_json()))
    assert {k: v for k, v in after.items() if k != "parity"} == {k: v for k, v in before.items() if k != "parity"}
    assert not list(tiny.glob(".manifest.json.*"))  # no temp file left behind


def test_verify_with_one_backend_still_runs_the_resized_inputs(tiny):
    report = shapetrace.verify(tiny, backends=("onnxruntime",), write=False)
    assert report
    assert {(c.backend, c.reference, c.input_set) for c in report.checks} == {
        ("onnxruntime", "recorded", "example"), ("onnxruntime", "self", "resized")}
    assert any("checked for NaN, not values" in n for n in report.notes)
    assert _manifest(tiny)["parity"] is None  # write=False


def test_a_graph_that_failed_to_export_is_an_error_not_skipped(tiny):
    def add_failed(m):
        m["graphs"].append({"name": "vae.encode", "module": "vae", "method": "encode", "files": {},
                            "error": {"type": "FlattenError", "message": "cannot flatten DiagonalGaussian"}})
    _edit_manifest(tiny, add_failed)
    report = shapetrace.verify(tiny, write=False)
    assert not report
    (fail,) = report.failures
    assert fail.graph == "vae.encode" and fail.verdict == "ERROR"
    assert fail.error == "not exported: FlattenError: cannot flatten DiagonalGaussian"


def test_tolerance_overrides_per_graph_and_output(tiny):
    report = shapetrace.verify(tiny, atol=0.0, rtol=0.0, write=False)  # ~1e-7 float noise now fails
    failing = {c.output for c in report.failures}
    assert failing and failing <= {"h"}
    assert shapetrace.verify(tiny, atol=0.0, rtol=0.0, tolerances={"tiny": {"atol": 1e-5}}, write=False)
    assert shapetrace.verify(tiny, atol=0.0, rtol=0.0, tolerances={"tiny:h": {"atol": 1e-5}}, write=False)
    with pytest.raises(VerifyError, match="tolerances key 'unet' names no graph of this export"):
        shapetrace.verify(tiny, tolerances={"unet": {"atol": 1.0}}, write=False)
    with pytest.raises(VerifyError, match="tolerances key 'tiny:nope' names no graph output"):
        shapetrace.verify(tiny, tolerances={"tiny:nope": {"atol": 1.0}}, write=False)
    with pytest.raises(VerifyError, match=r"expected a dict with 'atol' and/or 'rtol'"):
        shapetrace.verify(tiny, tolerances={"tiny": {"tol": 1.0}}, write=False)


def test_unusable_folders_raise_typed_errors(tiny, tmp_path):
    with pytest.raises(SignatureFileError, match="manifest.json not found"):
        shapetrace.verify(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SignatureFileError, match="is not a readable export manifest"):
        shapetrace.verify(tmp_path)
    _edit_manifest(tiny, lambda m: m.update(format_version=99))
    with pytest.raises(SignatureFileError, match="format_version 99, newer than this shapetrace reads"):
        shapetrace.verify(tiny)
    _edit_manifest(tiny, lambda m: m.update(format_version=1))
    (tiny / "tiny.outputs.npz").unlink()
    with pytest.raises(VerifyError, match=r"tiny\.outputs\.npz not found"):
        shapetrace.verify(tiny)
    with pytest.raises(VerifyError, match=r"backends=\('tensorrt',\): choose from onnxruntime, openvino"):
        shapetrace.verify(tiny, backends=("tensorrt",))


# ============================================================================ real exports of the offline pipelines
# `exports` (tests/conftest.py) records and exports each pipeline once per session; copies are made before any
# change, because verify() writes the manifest.


def _copy(exports, name, tmp_path, **kw):
    obj, rec, out, result = exports.get(name, **kw)
    assert result.ok, str(result)
    dst = tmp_path / name
    shutil.copytree(out, dst)
    return obj, dst


#: SDXL's export and verify (~50 s on 2 cores, the only SDXL export left in the default suite) run with
#: `make test-slow`, as in test_export and test_recorded_sizes: the same UNet path is verified through sd / img2img /
#: controlnet, and test_record covers SDXL's added_cond_kwargs.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "sdxl" else n for n in EXAMPLES])
def test_every_graph_of_the_offline_pipelines_passes(exports, tmp_path, name):
    obj, out = _copy(exports, name, tmp_path)
    graphs = [g["name"] for g in _manifest(out)["graphs"]]
    report = shapetrace.verify(out, obj)
    assert report, str(report)
    for g in graphs:  # every graph, both runtimes, against PyTorch, at the recorded and at new sizes
        for backend in ("onnxruntime", "openvino"):
            for input_set in ("example", "resized"):
                assert any(c.graph == g and c.backend == backend and c.reference == "torch"
                           and c.input_set == input_set for c in report.checks), (g, backend, input_set)
    assert _manifest(out)["parity"]["passed"] is True


def test_a_folder_alone_is_checked_against_its_recorded_outputs(exports, tmp_path):
    _, out = _copy(exports, "controlnet", tmp_path)
    report = shapetrace.verify(out)  # no live object: recorded outputs, then OpenVINO vs ONNX Runtime
    assert report, str(report)
    assert {(c.backend, c.reference, c.input_set) for c in report.checks} == {
        ("onnxruntime", "recorded", "example"), ("openvino", "recorded", "example"),
        ("openvino", "onnxruntime", "resized")}
    assert {c.graph for c in report.checks} == {"text_encoder", "controlnet", "unet", "vae.decode"}


def _worst_failure(report):
    worst = report.worst()
    assert worst is not None
    return worst


def test_noise_in_an_onnx_initializer_is_caught_naming_the_output(exports, tmp_path):
    import onnx
    from onnx import numpy_helper

    _, out = _copy(exports, "controlnet", tmp_path)
    model = onnx.load(str(out / "unet.onnx"))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(weight)
    noisy = values + np.random.default_rng(0).normal(0, 0.01 * values.std(), values.shape).astype(values.dtype)
    weight.CopyFrom(numpy_helper.from_array(noisy, weight.name))
    onnx.save(model, str(out / "unet.onnx"))
    report = shapetrace.verify(out, write=False)
    assert not report
    assert {c.graph for c in report.failures} == {"unet"}
    assert all("onnxruntime" in (c.backend, c.reference) for c in report.failures)  # OpenVINO vs noisy ORT too
    worst = _worst_failure(report)
    assert (worst.graph, worst.output, worst.verdict) == ("unet", "output.sample", "FAIL")
    assert worst.result.max_abs > 10 * worst.result.atol  # 1% noise on one conv weight is far outside tolerance
    assert "graph 'unet' output 'output.sample' on onnxruntime" in report.summary()
    assert all(c for c in report.checks if c.backend == "openvino" and c.reference == "recorded")


def test_static_export_verified_at_another_shape_fails_without_crashing(exports, tmp_path):
    # the static files under a manifest that promises dynamic dims: what shipping a static export gives
    _, static_out = _copy(exports, "text-classification", tmp_path, dynamic="static")
    _, dynamic_out = _copy(exports, "text-classification", tmp_path / "dyn")
    static_entry = _manifest(static_out)["graphs"][0]
    assert static_entry["dims"] == {}
    dynamic_entry = _manifest(dynamic_out)["graphs"][0]
    for f in ("onnx", "openvino", "inputs", "outputs"):
        shutil.copy(static_out / static_entry["files"][f], dynamic_out / dynamic_entry["files"][f])
    shutil.copy(static_out / "model.bin", dynamic_out / "model.bin")
    report = shapetrace.verify(dynamic_out, write=False)
    assert not report
    assert all(c for c in report.checks if c.input_set == "example")  # at the traced size it is right
    failures = report.failures
    assert {(c.backend, c.input_set, c.verdict) for c in failures} == {("onnxruntime", "resized", "ERROR"),
                                                                       ("openvino", "resized", "ERROR")}
    ort = next(c for c in failures if c.backend == "onnxruntime")
    assert "dimensions" in ort.error.lower() or "shape" in ort.error.lower(), ort.error
    assert ort.sizes and all(ort.sizes[d] != info["example"] for d, info in dynamic_entry["dims"].items())
    assert "graph 'model'" in report.summary()


def test_tampered_openvino_weights_are_caught(exports, tmp_path):
    _, out = _copy(exports, "controlnet", tmp_path)
    xml = (out / "unet.xml").read_text()
    consts = re.findall(r'element_type="f32" shape="[^"]*" offset="(\d+)" size="(\d+)"', xml)
    offset, size = max(((int(o), int(s)) for o, s in consts), key=lambda c: c[1])
    data = bytearray((out / "unet.bin").read_bytes())
    for i in range(offset + 3, offset + size, 16):  # flip the sign of every 4th float of the largest weight
        data[i] ^= 0x80
    (out / "unet.bin").write_bytes(bytes(data))
    report = shapetrace.verify(out, write=False)
    assert not report
    assert {(c.graph, c.backend) for c in report.failures} <= {("unet", "openvino")}
    worst = _worst_failure(report)
    assert (worst.graph, worst.backend, worst.output) == ("unet", "openvino", "output.sample")
    assert all(c for c in report.checks if c.backend == "onnxruntime" and c.reference == "recorded")


def test_alternative_sizes_can_prefer_smaller_sizes():
    dims = {"sequence": Dim("sequence", 1, None, 16, ("x.1",))}
    assert alternative_sizes(dims, []) == {"sequence": 17}
    assert alternative_sizes(dims, [], smaller_first=True) == {"sequence": 15}


#: ``record_export``'s export checked on ONNX Runtime alone
ORT_ONLY = {"backends": ("onnxruntime",)}


def test_resized_sizes_the_model_refuses_are_retried_smaller(record_export):
    import torch

    class Table(torch.nn.Module):  # a limit eager code checks but the exported graph does not know
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            if not torch.compiler.is_exporting() and x.shape[1] > 16:
                raise ValueError("at most 16 positions")
            return self.lin(x)

    torch.manual_seed(0)
    _, _, result = record_export(lambda h: h.m(torch.randn(1, 16, 8)), m=Table(), export_kwargs=ORT_ONLY)
    assert result.parity, str(result.parity)
    resized = [c for c in result.parity.checks if c.input_set == "resized"]
    assert resized and all(c.sizes["sequence"] < 16 for c in resized)
    assert any("PyTorch refused the resized sizes {'batch': 2, 'sequence': 17}" in n for n in result.parity.notes)


def test_dims_the_model_refuses_to_change_at_all_fall_back_to_static(record_export):
    import torch

    class Fixed(torch.nn.Module):  # eager code accepts one length only; the exported graph does not know
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            if not torch.compiler.is_exporting() and x.shape[1] != 16:
                raise ValueError("exactly 16 positions")
            return self.lin(x)

    torch.manual_seed(0)
    _, _, result = record_export(lambda h: h.m(torch.randn(1, 16, 8)), m=Fixed(), export_kwargs=ORT_ONLY)
    assert result.ok and result.parity, str(result.parity)
    entry = result.manifest.graph("m")
    assert entry.input("x").shape == (1, 16, 8) and not entry.dims
    fallback = entry.tools["static_fallback"]
    assert fallback["given_up"] == ["batch", "sequence"] and "exactly 16 positions" in fallback["because"]


def test_graphs_with_large_outputs_are_checked_at_smaller_sizes(monkeypatch, record_export):
    import torch

    from shapetrace._verify import graph_check

    class Head(torch.nn.Module):  # an LLM head: outputs far larger than its inputs
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 64)

        def forward(self, x):
            return self.lin(x)

    monkeypatch.setattr(graph_check, "LARGE_OUTPUTS_BYTES", 1024)  # 2*16*64 floats = 8 KiB counts as large here
    torch.manual_seed(0)
    _, _, result = record_export(lambda h: h.m(torch.randn(2, 16, 8)), m=Head(), export_kwargs=ORT_ONLY)
    assert result.parity, str(result.parity)
    resized = [c for c in result.parity.checks if c.input_set == "resized"]
    assert resized and all(c.sizes["sequence"] < 16 and c.sizes["batch"] < 2 for c in resized)


def test_a_dynamic_graph_a_runtime_cannot_run_falls_back_to_static(monkeypatch, record_export):
    import torch

    from shapetrace.backends import onnxruntime_backend as ort_backend

    real = ort_backend.OnnxRuntimeRunner._infer

    def refuses_dynamic(self, feed):  # a runtime failing on the dynamic graph ("invalid expand shape")
        if any(isinstance(d, str) for i in self.session.get_inputs() for d in i.shape):
            raise RuntimeError("invalid expand shape")
        return real(self, feed)

    monkeypatch.setattr(ort_backend.OnnxRuntimeRunner, "_infer", refuses_dynamic)
    torch.manual_seed(0)
    _, _, result = record_export(lambda h: h.m(torch.randn(2, 8)), m=torch.nn.Linear(8, 8), export_kwargs=ORT_ONLY)
    assert result.ok and result.parity, str(result.parity)
    entry = result.manifest.graph("m")
    assert not entry.dims and "invalid expand shape" in entry.tools["static_fallback"]["because"]


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)  # one channel per GroupNorm group: a constant input map stays exactly constant
    return AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=32,
                         layers_per_block=1).eval()


def test_an_ill_conditioned_input_is_judged_by_pytorchs_own_sensitivity_and_said(record_export):
    # an all-zero masked image: normalising a constant amplifies rounding
    _, _, result = record_export(lambda h: h.vae.encode(torch.zeros(1, 3, 32, 32)), vae=_tiny_vae())
    assert result.ok and result.parity, str(result.parity)
    notes = [n for n in result.parity.notes if "within how far PyTorch's own output moves" in n]
    assert {n.split(" on ")[1].split(" ")[0] for n in notes} == {"onnxruntime", "openvino"}
    judged = [c for c in result.parity.checks if c.backend != "torch" and c.result.atol > 1e-4]
    assert judged and all(c.result.max_abs > 1e-4 and c.result.max_abs <= c.result.atol for c in judged)


def test_the_sensitivity_bound_does_not_excuse_a_wrong_graph_at_well_conditioned_inputs(tmp_path, record_export):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    h, _, result = record_export(lambda h: h.vae.encode(x), vae=_tiny_vae())
    assert result.ok and result.parity and not any("PyTorch's own output moves" in n for n in result.parity.notes)
    with torch.no_grad():
        h.vae.encoder.conv_out.bias += 1e-3  # the live module no longer computes what was exported
    report = shapetrace.verify(tmp_path / "o", h, backends=("openvino",))
    failed = [c for c in report.checks if c.backend == "openvino" and not c]
    assert failed and not any("PyTorch's own output moves" in n for n in report.notes)


def test_a_left_padded_tokens_undefined_output_does_not_fail_an_llm_encoder(tmp_path, record_export):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    enc = LlamaModel(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2)).eval()
    ids, mask = torch.randint(3, 64, (1, 8)), torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])  # left padding
    h, out, result = record_export(lambda h: h.enc(input_ids=ids, attention_mask=mask), enc=enc)
    want = out.last_hidden_state
    assert result.ok and result.parity, str(result.parity)
    padded = [n for n in result.parity.notes if "only at positions input 'attention_mask' marks 0" in n]
    assert any("'last_hidden_state' on onnxruntime" in n for n in padded)
    with shapetrace.load(h, tmp_path / "o", backend="onnxruntime"):
        got = h.enc(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (got[0, 0] - want[0, 0]).abs().max() > 1e-3  # the padded token really differs ...
    torch.testing.assert_close(got[:, 2:], want[:, 2:], atol=1e-5, rtol=1e-4)  # ... every real one matches


def test_the_padding_rule_excuses_only_the_padded_positions():
    from shapetrace._verify.compare import compare_arrays, resolve_tolerance
    from shapetrace._verify.rejudge import padding_only

    tol = resolve_tolerance("g", "o", "float32")
    mask = np.array([[0, 1, 1, 1]])
    ref = np.random.default_rng(0).random((1, 2, 4, 3)).astype(np.float32)  # (batch, heads, sequence, dim)
    got = ref.copy()
    got[:, :, 0] += 1  # the padded position differs: excused, said
    notes: list[str] = []
    assert padding_only(compare_arrays(got, ref), "o", got, ref, {"attention_mask": mask}, tol, "g", "b", "s",
                         notes).passed and len(notes) == 1
    got[:, :, 2] += 1e-2  # a real position differs too: still a failure
    assert not padding_only(compare_arrays(got, ref), "o", got, ref, {"attention_mask": mask}, tol, "g", "b", "s",
                             notes).passed


class Placeholders(torch.nn.Module):
    """A multimodal prompt in miniature: token ids with placeholder tokens (id 7) that the features replace, and
    the eager check transformers' vision-language models make (skipped while tracing, as theirs is)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.out = torch.nn.Linear(8, 8)

    def forward(self, input_ids, features):
        slots = input_ids == 7
        if not (torch.compiler.is_exporting() or torch.jit.is_tracing()) and int(slots.sum()) != features.shape[0] * \
                features.shape[1]:
            raise ValueError(f"Image features and image tokens do not match, tokens: {int(slots.sum())}, "
                             f"features: {features.shape[0] * features.shape[1]}")
        x = self.embed(input_ids).masked_scatter(slots.unsqueeze(-1), features)
        return self.out(x)


def test_resized_inputs_keep_the_placeholder_tokens_a_multimodal_prompt_needs(tmp_path, record_export):
    """Random token ids hold no placeholder, so PyTorch refused the resized set and the prompt graph fell back to
    static (its length fixed: every longer prompt refused at load). Verify now tries the example's ids extended --
    rows copied with their placeholders, as many rows of features -- and the graph stays dynamic."""
    torch.manual_seed(0)
    ids = torch.tensor([[1, 7, 7, 7, 3, 4], [2, 7, 7, 7, 5, 6]])
    h, _, result = record_export(lambda h: h.m(ids, torch.randn(2, 3, 8)), m=Placeholders())
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result.parity)
    assert "static_fallback" not in entry.tools and isinstance(entry.input("input_ids").shape[0], str)
    note = next(n for n in result.parity.notes if "PyTorch refused the resized sizes" in n)
    assert "integer inputs extended" in note and "image tokens do not match" in note
    assert any(c.input_set == "resized" and c.backend == "openvino" and c for c in result.parity.checks)
    more = torch.tensor([[1, 7, 7, 7, 3, 4]] * 3)  # three rows: another batch, served by the same graph
    feats = torch.randn(3, 3, 8)
    with torch.no_grad():
        want = h.m(more, feats)
        with shapetrace.load(h, tmp_path / "o", backend="openvino"):
            got = h.m(more, feats)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_extended_token_ids_keep_rows_counts_and_masks():
    from shapetrace._verify.inputs import extended

    ids = np.array([[5, 9, 9, 9, 3], [7, 9, 9, 9, 4]])
    grown = extended(ids, (3, 7))
    assert grown[2].tolist()[:5] == ids[0].tolist()  # a new row copies an existing one, placeholders and all
    assert ((grown == 9).sum(axis=1) == 3).all()  # the repeated (placeholder) id is never added
    assert set(grown[:, 5:].ravel()) <= {3, 4, 5, 7}  # new positions: the example's rarest ids
    assert extended(np.array([[0, 1, 2]]), (1, 5)).tolist() == [[0, 1, 2, 3, 4]]  # a count goes on counting
    assert extended(np.array([[0, 1, 1]]), (2, 4), mask=True).tolist() == [[0, 1, 1, 1]] * 2  # attended
    assert extended(ids, (1, 3)).tolist() == [[5, 9, 9]]  # cut
    assert extended(np.array(4096), ()).shape == ()  # a 0-d input stays 0-d (a cache's window size)
    # a prompt of placeholders only grows by a value it does not hold: its placeholder count stays 3
    assert extended(np.array([[57, 57, 57]]), (2, 5)).tolist() == [[57, 57, 57, 0, 0]] * 2


class RotaryPlaceholders(Placeholders):
    """Placeholders with multimodal rotary positions: integer ``[sections, batch, sequence]``, which the rank rule
    alone would export with the prompt's length fixed."""

    def __init__(self):
        super().__init__()
        self.pos = torch.nn.Embedding(64, 8)

    def forward(self, input_ids, positions, features):
        return super().forward(input_ids, features) + self.pos(positions).sum(0)


def test_a_prompt_with_rotary_sections_stays_dynamic_in_batch_and_length(record_export, served_on_openvino):
    """The positions' batch and sequence dims are asked dynamic too (they are as long as the ids' dims), and the
    batch, read at dim 1 of the positions, is told from the others when verify resizes the prompt around its
    features: the graph serves a longer prompt at load instead of falling back to static."""
    torch.manual_seed(0)
    ids = torch.tensor([[1, 7, 7, 7, 3, 4, 5, 6], [2, 7, 7, 7, 5, 6, 3, 2]])
    positions = torch.arange(8).expand(3, 2, 8)
    h, _, result = record_export(lambda h: h.m(ids, positions, torch.randn(2, 3, 8)), m=RotaryPlaceholders())
    entry = result.manifest.graph("m")
    assert result.ok and result.parity, str(result.parity)
    assert "static_fallback" not in entry.tools
    assert entry.input("positions").shape[1:] == entry.input("input_ids").shape == ("batch", "sequence")
    longer = torch.tensor([[1, 7, 7, 7, 3, 4, 5, 6, 3, 4, 5]] * 2)
    got, want = served_on_openvino(h, result.out_dir, longer, torch.arange(11).expand(3, 2, 11), torch.randn(2, 3, 8))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


class RollsItsState(torch.nn.Module):
    """A convolution cache as linear-attention and state-space decoders keep it: updated in place by the step."""

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Linear(8, 8)

    def forward(self, x, conv_state):
        conv_state.copy_(torch.cat([conv_state[:, :, 1:], x.transpose(1, 2)], dim=-1))
        return self.mix(conv_state.sum(-1)), conv_state


def test_a_step_that_updates_its_state_in_place_is_exported_with_the_state_it_was_given(record_export):
    """The inputs file holds the state as the recorded call received it, and the reference outputs come from a
    copy: before, the reference run rolled the state first, so PyTorch itself failed against the recorded outputs."""
    torch.manual_seed(0)
    state = torch.randn(2, 8, 4)
    given = state.clone()
    _, _, result = record_export(lambda h: h.m(torch.randn(2, 1, 8), state), m=RollsItsState())
    assert result.ok and result.parity, str(result.parity)
    saved = np.load(result.out_dir / result.manifest.graph("m").files["inputs"])
    np.testing.assert_array_equal(saved["conv_state"], given.numpy())
    assert any(c.backend == "torch" and c.reference == "recorded" and c for c in result.parity.checks)


class SelectsAmongTies(torch.nn.Module):
    """A detector's query selection in miniature: every candidate scores the same (zero weights, as random
    initialisations of a class head with a prior bias give), the top 6 of 20 are kept and their boxes gathered."""

    def __init__(self):
        super().__init__()
        self.score, self.box = torch.nn.Linear(4, 1), torch.nn.Linear(4, 4)
        torch.nn.init.zeros_(self.score.weight)
        torch.nn.init.constant_(self.score.bias, -2.0)

    def forward(self, x):
        picked = self.score(x).squeeze(-1).topk(6, dim=1).indices
        boxes = torch.gather(self.box(x), 1, picked[..., None].expand(-1, -1, 4))
        return boxes.sigmoid(), x.mean(1)


def _tied_export(tmp_path, record_export, model=SelectsAmongTies):
    torch.manual_seed(0)
    x = torch.randn(2, 20, 4)
    h, want, result = record_export(lambda h: h.m(x), m=model())
    order = torch.arange(20).expand(2, 20)[:, :6]
    assert not torch.equal(want[0], torch.gather(h.m.box(x), 1, order[..., None].expand(-1, -1, 4)).sigmoid()), \
        "PyTorch broke the ties lowest index first, as ONNX does: this test would prove nothing"
    return h, result


def test_outputs_gathered_at_a_selection_among_tied_scores_pass_by_the_selection_rule(tmp_path, record_export):
    h, result = _tied_export(tmp_path, record_export)
    report = result.parity
    assert report.passed, report.summary
    boxes = [c for c in report.checks if c.output == "0" and c.backend in ("onnxruntime", "openvino")
             and c.reference == "torch"]
    assert boxes and all(c.result.passed for c in boxes)
    assert {c.backend for c in boxes} == {"onnxruntime", "openvino"} and {c.input_set for c in boxes} == {"example",
                                                                                                        "resized"}
    assert "static_fallback" not in result.manifest.graph("m").tools  # passed as exported, dynamic
    assert any("selection among tied scores (topk 0: 2 row(s)" in n and "openvino with PyTorch's choice forced in"
               in n for n in report.notes), report.notes


class SortsTies(SelectsAmongTies):
    """The same selection written as a sort (a router ordering its tokens by expert): ONNX writes ``argsort`` as a
    ``TopK`` of every candidate, which has to line up with PyTorch's recorded calls."""

    def forward(self, x):
        order = self.score(x).squeeze(-1).argsort(dim=1, descending=True)[:, :6]
        boxes = torch.gather(self.box(x), 1, order[..., None].expand(-1, -1, 4))
        return boxes.sigmoid(), x.mean(1)


def test_outputs_gathered_after_a_sort_of_tied_scores_pass_by_the_selection_rule(tmp_path, record_export):
    _, result = _tied_export(tmp_path, record_export, SortsTies)
    assert result.parity.passed, result.parity.summary
    assert any("selection among tied scores (topk 0:" in n for n in result.parity.notes), result.parity.notes


def test_the_selection_rule_does_not_excuse_a_wrong_computation_after_the_selection(tmp_path, record_export):
    import onnx

    h, result = _tied_export(tmp_path, record_export)
    path = tmp_path / "o" / result.manifest.graph("m").file("onnx")
    model = onnx.load(str(path))
    bias = next(i for i in model.graph.initializer if "box" in i.name and "bias" in i.name)
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 1.0, bias.name))
    onnx.save(model, str(path))  # the box head now computes something else after the (tied) selection
    report = shapetrace.verify(tmp_path / "o", h, backends=("onnxruntime",), write=False)
    assert not report.passed
    assert not any("selection among tied scores" in n for n in report.notes)
