"""bench/suite: the targets table judges values against its bounds, and names only sections that exist; the
library hooks the bench reads (rec.stats, the export's phase hook) count what they say. Fast: no model work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

suite = pytest.importorskip("suite")
from suite import targets  # noqa: E402


def _row(r: dict, name: str) -> str:
    return next(line for line in targets.render(r) if line.startswith(f"| {name} |"))


def test_every_target_names_a_registered_section():
    assert {t.section for t in targets.TARGETS} <= set(suite.REGISTRY)
    assert all(t.comparison in targets.COMPARISONS for t in targets.TARGETS)


@pytest.mark.parametrize(("ratio", "verdict"), [(1.004, "met"), (1.05, "MISSED")])
def test_overhead_target_below_and_above_its_bound(ratio, verdict):
    r = {"suite": "full", "record_overhead_ratio": ratio, "record_overhead_ratio_wall": 1.0}
    assert _row(r, "recording overhead <= 1 %").endswith(f"| {verdict} |")


@pytest.mark.parametrize(("ratio", "verdict"), [(3.4, "MISSED"), (3.5, "met"), (4.1, "met")])
def test_int8_size_target_is_a_lower_bound(ratio, verdict):
    r = {"suite": "full", "quantize": {"int8": {}}, "ir_size_ratio_int8": ratio}
    assert _row(r, "int8 IR >= 3.5x smaller than f32").endswith(f"| {verdict} |")


def test_per_graph_target_names_the_graphs_that_met_it():
    r = {"suite": "full", "export": {"unet": {"peak_over_weights": 1.5}, "vae.decode": {"peak_over_weights": 3.0}}}
    assert _row(r, "export peak RSS <= 2x fp32 weights").endswith("| met for unet, missed for the others |")


def test_e2e_target_reports_the_aim_and_skips_the_estimate():
    r = {"suite": "full", "e2e": {"x": {}}, "e2e_speedup_openvino_vs_torch": 3.2, "e2e_best_variant": "OV",
         "e2e_estimated": {"variants": {"OpenVINO f32": {"speedup": 1.0}}}}
    lines = targets.render(r)
    assert any(line.endswith("| met (3x aim met) |") for line in lines)
    assert not any("estimated" in line for line in lines)


def test_no_section_ran_renders_no_table():
    assert targets.render({"suite": "quick"}) == []


def test_recording_stats_count_calls_and_attribute_reads():
    import shapetrace

    class Holder:
        pass

    h = Holder()
    h.lin = torch.nn.Linear(4, 4)
    with shapetrace.record(h) as rec:
        for _ in range(3):
            h.lin(torch.randn(2, 4))
        h.lin.weight  # noqa: B018 - an attribute read through the proxy
    st = rec.stats
    assert (st.calls, st.attribute_reads) == (3, 1)
    assert 0 < st.own_seconds < 1


def test_phases_reach_a_listener_only_inside_listen():
    from shapetrace._core import phases

    seen: list = []

    @phases.phase("outer")
    def work() -> None:
        with phases.phase("inner"):
            pass

    work()
    with phases.listen(seen.append):
        work()
    work()
    assert [p.name for p in seen] == ["inner", "outer"]
    assert seen[1].start <= seen[0].start <= seen[0].end <= seen[1].end and seen[1].rss_start > 0


def _deploy(peak: float, st_s: float, opt_s: float) -> dict:
    rows = {"load_pipeline": {"vmhwm": peak, "seconds_to_first_image": 30.0,
                              "marks": {"ready": 20.0, "first_image": 30.0}},
            "sd15_shapetrace_warm": {"seconds_to_first_image": st_s}, "sd15_optimum": {"seconds_to_first_image": 99.0},
            "sd15_optimum_warm": {"seconds_to_first_image": opt_s}, "sd15_optimum_fill": {"skipped": "x"}}
    return {"suite": "full", "deploy": {"rows": rows, "folders": {"controlnet": {"path": "/x", "ir_bytes": 5.5e9}},
                                        "libraries_bytes": 1.5e9}}


@pytest.mark.parametrize(("peak", "verdict"), [(6.9e9, "met"), (7.1e9, "MISSED")])
def test_deploy_rss_target_is_ir_plus_libraries(peak, verdict):
    row = _row(_deploy(peak, 10.0, 12.0), "(c) load_pipeline peak RSS <= IR files + 1.5 GB of libraries (no PyTorch "
                                          "weight resident)")
    assert row.endswith(f"| {verdict} |") and "7.00 GB" in row


@pytest.mark.parametrize(("st_s", "verdict"), [(11.0, "met"), (13.0, "MISSED")])
def test_deploy_start_target_compares_with_optimums_fastest_start(st_s, verdict):
    row = _row(_deploy(6e9, st_s, 12.0), "(c') warm-cache start to first image faster than optimum-intel (plain SD "
                                         "1.5, same work)")
    assert row.endswith(f"| {verdict} |") and "sd15_optimum_warm" in row


def test_deploy_renderer_has_a_row_per_variant_skipped_ones_included():
    from suite import deploy

    lines = deploy.render(_deploy(6e9, 10.0, 12.0))
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| variant")]
    assert len(rows) == 5 and any("skipped: x" in line for line in rows)
    assert deploy.render({"suite": "full"}) == []
