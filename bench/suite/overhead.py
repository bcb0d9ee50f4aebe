"""Section ``overhead``: the pipeline's wall time with and without ``shapetrace.record`` (interleaved pairs,
medians), shapetrace's own time inside the recorded runs (``rec.stats``: the recorder times each call minus the
wrapped module call, and counts attribute reads through a proxy), and the per-call cost of the proxy (a tiny module
and a UNet-shaped call, N calls direct vs through the proxy)."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zoo

from .context import PIPE_GRAPHS, Context
from .metrics import med, timed


@dataclass(frozen=True)
class OverheadResult:
    ratio: float                       # 1 + shapetrace's own seconds per run / the plain run's median
    ratio_wall: float                  # median recorded / median plain (noisy on a shared machine)
    us_per_call: float                 # proxy overhead per call of a tiny module
    torch_e2e_s: float                 # the plain run's median
    detail: Mapping[str, Any]          # results.json "record_overhead"
    per_call: Mapping[str, Any]        # results.json "record_overhead_per_call"

    def to_json(self) -> dict:
        return {"record_overhead": dict(self.detail), "record_overhead_per_call": dict(self.per_call),
                "record_overhead_us_per_call": round(self.us_per_call, 2), "e2e_torch_s": self.torch_e2e_s,
                "record_overhead_ratio": round(self.ratio, 5), "record_overhead_ratio_wall": round(self.ratio_wall, 4)}


def run(ctx: Context) -> OverheadResult:
    import shapetrace

    ctx.log("overhead: warm-up run")
    t_warm, _ = timed(ctx.run_pipe)
    ctx.log(f"  warm-up {t_warm:.2f}s")
    plain: list[float] = []
    recorded: list[float] = []
    cpu: dict[str, list[float]] = {"plain": [], "record": []}
    inside: list[dict] = []  # shapetrace's own seconds in each recorded run (rec.stats)
    image = rec = None
    n = ctx.a.overhead_runs or max(ctx.runs, 5)
    for i in range(n):
        for kind in (("plain", "record") if i % 2 == 0 else ("record", "plain")):
            gc.collect()
            c0 = time.process_time()
            if kind == "plain":
                t, image = timed(ctx.run_pipe)
                plain.append(t)
            else:
                t0 = time.perf_counter()
                with shapetrace.record(ctx.pipe) as rec:
                    t1 = time.perf_counter()
                    ctx.run_pipe()
                    t2 = time.perf_counter()
                t3 = time.perf_counter()
                recorded.append(t3 - t0)
                st = rec.stats
                inside.append({"calls": st.calls, "call_overhead_s": st.own_seconds, "attr_reads": st.attribute_reads,
                               "enter_exit_s": (t1 - t0) + (t3 - t2)})
            cpu[kind].append(time.process_time() - c0)
        x = inside[-1]
        ctx.log(f"  pair {i + 1}/{n}: plain {plain[-1]:.3f}s  record {recorded[-1]:.3f}s  (shapetrace's own "
                f"{x['call_overhead_s'] + x['enter_exit_s']:.4f}s in {x['calls']} calls, {x['attr_reads']} attribute "
                f"reads)")
    assert rec is not None and image is not None
    rec.save(ctx.work / "signatures" / "pipe")
    with shapetrace.record(ctx.det) as rec_op:
        zoo.run_openpose(ctx.det)
    rec_op.save(ctx.work / "signatures" / "openpose")
    np.save(ctx.work / "torch_image.npy", image)
    ctx.torch_image = image
    ctx.calls = {g.name: g.num_calls for g in rec} | {g.name: g.num_calls for g in rec_op}
    ratio = med(recorded) / med(plain)
    pairs = [r / p for r, p in zip(recorded, plain)]
    ctx.log(f"  wall ratio {ratio:.4f} (min-based {min(recorded) / min(plain):.4f}), CPU-time ratio "
            f"{med(cpu['record']) / med(cpu['plain']):.4f}")
    pc = per_call(ctx.a.per_call_n)
    calls = sum(ctx.calls.get(g, 0) for g in PIPE_GRAPHS)
    attr_us = pc["attribute_read"]["overhead_us"]
    own = [x["call_overhead_s"] + x["enter_exit_s"] + x["attr_reads"] * attr_us * 1e-6 for x in inside]
    detail = {
        "plain_s": plain, "record_s": recorded, "median_plain_s": med(plain), "median_record_s": med(recorded),
        "ratio_of_medians": ratio, "ratio_of_mins": min(recorded) / min(plain),
        "median_pair_ratio": med(pairs), "pair_ratios": pairs,
        "plain_relative_spread": (max(plain) - min(plain)) / med(plain),
        "cpu_plain_s": cpu["plain"], "cpu_record_s": cpu["record"],
        "cpu_ratio_of_medians": med(cpu["record"]) / med(cpu["plain"]),
        "instrumented_runs": inside, "calls_per_run": ctx.calls, "loadavg": os.getloadavg(),
        "predicted_ratio_from_per_call": 1 + calls * pc["unet_call_pattern"]["overhead_us"] * 1e-6 / med(plain),
        "own_seconds_per_run": own, "instrumented_ratio": 1 + med(own) / med(plain),
    }
    ctx.log(f"  instrumented: shapetrace's own {med(own) * 1e3:.1f} ms per run -> ratio "
            f"{detail['instrumented_ratio']:.5f}")
    return OverheadResult(detail["instrumented_ratio"], ratio, pc["tiny_linear"]["overhead_us"], med(plain), detail,
                          pc)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class _UNetShaped(torch.nn.Module):
    """The UNet call pattern of the ControlNet pipeline (3 tensors + 12 residuals + 1, 2 constants)."""

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, cross_attention_kwargs=None,
                down_block_additional_residuals=None, mid_block_additional_residual=None, added_cond_kwargs=None,
                return_dict=True):
        return (sample,)


class _Box:
    m: torch.nn.Module


def _bench_one(make_call: Callable[[Any], Callable[[], Any]], module: torch.nn.Module, n: int) -> dict:
    import shapetrace

    box = _Box()
    box.m = module
    direct, proxied = [], []
    for _ in range(5):
        call = make_call(box)
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        direct.append((time.perf_counter() - t0) / n)
        with shapetrace.record(box):
            call = make_call(box)
            t0 = time.perf_counter()
            for _ in range(n):
                call()
            proxied.append((time.perf_counter() - t0) / n)
    d, p = med(direct), med(proxied)
    return {"calls": n, "direct_us": d * 1e6, "proxied_us": p * 1e6, "overhead_us": (p - d) * 1e6}


def per_call(n: int) -> dict:
    """N calls direct vs through the proxy: a ``Linear(8, 8)``, the UNet call pattern, an attribute read."""
    x = torch.randn(1, 8)
    s, t, e = torch.randn(2, 4, 8, 8), torch.tensor(981), torch.randn(2, 77, 32)
    res = [torch.randn(2, 8, 8, 8) for _ in range(12)]
    mid = torch.randn(2, 8, 1, 1)
    with torch.no_grad():
        tiny = _bench_one(lambda box: (lambda m=box.m: m(x)), _Tiny(), n)
        unet_like = _bench_one(lambda box: (lambda m=box.m: m(
            s, t, encoder_hidden_states=e, timestep_cond=None, cross_attention_kwargs=None,
            down_block_additional_residuals=res, mid_block_additional_residual=mid, added_cond_kwargs=None,
            return_dict=False)), _UNetShaped(), max(200, n // 5))
    attr = _bench_one(lambda box: (lambda m=box.m: m.lin), _Tiny(), n * 5)
    return {"tiny_linear": tiny, "unet_call_pattern": unet_like, "attribute_read": attr}
