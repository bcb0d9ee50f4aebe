"""Section ``breakdown``: where a PyTorch pipeline run spends its time. The text encoder, ControlNet and UNet are
timed in place with torch's forward hooks; ``vae.decode`` (a method, which forward hooks do not see) by a timing
wrapper set on the VAE instance for the section's runs. Neither touches shapetrace; the rest is outside the graphs."""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .context import Context
from .metrics import timed

HOOKED = ("text_encoder", "controlnet", "unet")


@dataclass(frozen=True)
class BreakdownResult:
    runs: tuple[dict, ...]   # per run: total_s, graphs -> {calls, seconds}, outside_graphs_s
    loadavg: tuple[float, ...]

    def to_json(self) -> dict:
        return {"e2e_torch_breakdown": {"runs": list(self.runs), "loadavg": list(self.loadavg)}}


@contextlib.contextmanager
def _timers(pipe: Any) -> Iterator[dict[str, list[float]]]:
    timers: dict[str, list[float]] = {}
    hooks = []
    for name in HOOKED:
        def pre(mod: Any, args: Any, name: str = name) -> None:
            timers.setdefault(name, []).append(-time.perf_counter())

        def post(mod: Any, args: Any, out: Any, name: str = name) -> None:
            timers[name][-1] += time.perf_counter()

        module = getattr(pipe, name)
        hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    vae = pipe.vae
    orig = vae.decode

    def decode(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig(*args, **kwargs)
        finally:
            timers.setdefault("vae.decode", []).append(time.perf_counter() - t)

    vae.decode = decode
    try:
        yield timers
    finally:
        del vae.decode
        for h in hooks:
            h.remove()


def run(ctx: Context) -> BreakdownResult:
    runs = []
    with _timers(ctx.pipe) as timers:
        for _ in range(ctx.runs):
            timers.clear()
            gc.collect()
            t, _ = timed(ctx.run_pipe)
            graphs = {k: {"calls": len(v), "seconds": sum(v)} for k, v in timers.items()}
            runs.append({"total_s": t, "graphs": graphs,
                         "outside_graphs_s": t - sum(g["seconds"] for g in graphs.values())})
            ctx.log(f"  breakdown: {t:.2f}s, outside graphs {runs[-1]['outside_graphs_s']:.2f}s: "
                    + ", ".join(f"{k} {g['seconds']:.2f}s/{g['calls']}" for k, g in graphs.items()))
    return BreakdownResult(tuple(runs), tuple(os.getloadavg()))
