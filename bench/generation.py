"""Generation benchmark: a GPT-2-small-size decoder (124M parameters, random weights, bench/configs/gpt2.json),
greedy, prompt 32 tokens, 64 new tokens; PyTorch eager vs the exported decoder step on OpenVINO (explicit cache and stateful) and ONNX Runtime.

    .venv/bin/python bench/generation.py [--runs 3] [--out bench/results/generation.json]

Records one short generate, exports it with ``shapetrace.export_all(..., stateful=True)`` (ONNX + IR + the
stateful IR, verified), then times
``model.generate`` in PyTorch and inside ``shapetrace.load(..., backend=...)``: tokens per second over the 64 new
tokens (median of ``--runs`` after a warm-up), time to first token (``max_new_tokens=1``), and checks that every
backend produced the very same tokens. Export wall time and peak RSS (VmHWM, reset before the export) are recorded
too. Results go to ``--out`` (JSON, with machine, ISA and command) and are printed as a Markdown section for
bench/results/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite.environment import cpu_name, isa  # noqa: E402
from suite.metrics import reset_hwm, vm_hwm  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PROMPT, NEW = 32, 64


class Holder:
    """The application object that holds the model (as a model card's snippet does)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "generation.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import transformers

    import shapetrace

    torch.manual_seed(0)
    config = transformers.GPT2Config(**json.loads((HERE / "configs" / "gpt2.json").read_text()))
    config.eos_token_id = None  # random weights: never stop early, every run makes exactly NEW tokens
    h = Holder()
    h.model = transformers.GPT2LMHeadModel(config).eval()
    params = sum(p.numel() for p in h.model.parameters())
    kw = dict(do_sample=False, pad_token_id=0)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, config.vocab_size, (1, PROMPT), generator=g)
    r: dict = {"command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "machine": {"cpu": cpu_name(), "isa": isa(), "cpus": len(os.sched_getaffinity(0)),
                           "torch_threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()},
               "versions": {p: __import__(p).__version__ for p in ("torch", "transformers", "openvino",
                                                                 "onnxruntime")},
               "model": {"config": "bench/configs/gpt2.json", "parameters": params},
               "workload": {"prompt_tokens": PROMPT, "new_tokens": NEW, "greedy": True, "runs": args.runs}}
    with torch.no_grad():
        with shapetrace.record(h):
            h.model.generate(prompt[:, :8], max_new_tokens=4, **kw)
        work = tempfile.TemporaryDirectory(prefix="shapetrace-gen-bench-")  # 2.4 GB of files: removed at exit
        out = Path(work.name) / "export"
        reset_hwm()
        t0 = time.perf_counter()
        result = shapetrace.export_all(h, out, progress=False, stateful=True)
        r["export"] = {"seconds": round(time.perf_counter() - t0, 1), "vm_hwm_bytes": (vm_hwm() or 0),
                       "weights_bytes": params * 4, "ok": result.ok,
                       "parity": result.parity.summary() if result.parity is not None else None,
                       "graphs": {n: {"seconds": ge.entry.seconds, "peak_rss_bytes": ge.entry.peak_rss_bytes,
                                      "dims": list(ge.entry.dims)} for n, ge in result.graphs.items()}}

        def timed(new: int) -> tuple[float, torch.Tensor]:
            t = time.perf_counter()
            tokens = h.model.generate(prompt, max_new_tokens=new, **kw)
            return time.perf_counter() - t, tokens

        def measure(label: str) -> dict:
            timed(NEW)  # warm-up
            runs = [timed(NEW) for _ in range(args.runs)]
            ttft = statistics.median(timed(1)[0] for _ in range(args.runs))
            total = statistics.median(s for s, _ in runs)
            row = {"tokens_per_s": round(NEW / total, 2), "seconds": round(total, 3), "ttft_s": round(ttft, 4),
                   "tokens": runs[0][1][0, PROMPT:].tolist()}
            print(f"{label}: {row['tokens_per_s']} tokens/s, TTFT {row['ttft_s']} s", flush=True)
            return row

        rows = {"torch": measure("torch eager")}
        for backend, precision, stateful in (("openvino", "f32", False), ("openvino", "f32", True),
                                             ("openvino", "bf16", True), ("onnxruntime", "f32", False)):
            if precision == "bf16" and "avx512_bf16" not in r["machine"]["isa"] and "amx_bf16" not in r["machine"]["isa"]:
                continue  # a bf16 hint changes nothing without bf16 instructions
            label = f"{backend} {precision}{' stateful' if stateful else ' explicit cache'}"
            with shapetrace.load(h, out, backend=backend, precision=precision, stateful=stateful):
                rows[label] = measure(label)
    work.cleanup()
    base = rows["torch"]
    for label, row in rows.items():
        row["speedup"] = round(row["tokens_per_s"] / base["tokens_per_s"], 2)
        row["identical_tokens"] = row["tokens"] == base["tokens"]
    r["results"] = rows
    r["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(r, indent=2))
    section = render(r) + CAVEAT_IF_LOADED(r)
    print(section)
    results = RESULTS / "RESULTS.md"  # replace this section (it is the file's last) or append it
    if results.exists() and Path(args.out).resolve() == (RESULTS / "generation.json").resolve():
        text = results.read_text()
        text = text[:text.index("## Generation")] if "## Generation" in text else text
        results.write_text(text.rstrip() + "\n\n" + section)


def CAVEAT_IF_LOADED(r: dict) -> str:  # noqa: N802 - a text template, named like one
    """A warning under the table when the machine was loaded (load average above its CPUs) during the run."""
    load, cpus = r["machine"]["loadavg_start"][0], r["machine"]["cpus"]
    if load <= cpus:
        return ""
    return (f"\nCaveat, read before the ratios: this run shared its {cpus} CPUs with other jobs (load average "
            f"{load:.1f} at start). PyTorch's OpenMP threads suffer most from oversubscription, so the speedups are "
            f"upper bounds until a quiet run of the same command confirms them; token identity does not depend on "
            f"load.\n")


def render(r: dict) -> str:
    m, e = r["machine"], r["export"]
    lines = ["## Generation (GPT-2-small size, random weights)", "",
             f"Command: `{r['command']}` (started {r['started']}). Machine: {m['cpu']}, {m['cpus']} CPUs "
             f"(ISA: {', '.join(m['isa'])}), torch threads {m['torch_threads']}, load average "
             f"{', '.join(f'{x:.1f}' for x in m['loadavg_start'])} at start (a shared machine: ratios are taken "
             f"within this one run).", "",
             f"Workload: `GPT2LMHeadModel` from bench/configs/gpt2.json ({r['model']['parameters'] / 1e6:.1f}M "
             f"parameters), greedy, prompt {r['workload']['prompt_tokens']} tokens, "
             f"{r['workload']['new_tokens']} new tokens; graphs {', '.join(e['graphs'])} with the KV cache as explicit "
             f"inputs / outputs, or (stateful) kept inside the compiled OpenVINO model; median of "
             f"{r['workload']['runs']} runs after a warm-up.", "",
             "| runtime | tokens/s | speedup vs PyTorch | time to first token | tokens identical to PyTorch |",
             "|---|---|---|---|---|"]
    for label, row in r["results"].items():
        lines.append(f"| {label} | {row['tokens_per_s']} | {row['speedup']}x | {row['ttft_s'] * 1000:.0f} ms | "
                     f"{'yes' if row['identical_tokens'] else 'NO'} |")
    lines += ["", f"Export (record 8 + 4 tokens, `export_all` ONNX + IR with verify): {e['seconds']} s, peak RSS "
              f"{e['vm_hwm_bytes'] / 1e9:.2f} GB for {e['weights_bytes'] / 1e9:.2f} GB of fp32 weights; "
              f"{e['parity']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
