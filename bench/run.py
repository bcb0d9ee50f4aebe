"""shapetrace benchmark: recording overhead, export cost (time, peak memory), inference speed and parity.

    .venv/bin/python bench/run.py            # full-size SD 1.5 + OpenPose ControlNet (random weights), 256x256
    .venv/bin/python bench/run.py --quick    # the tiny offline pipelines of shapetrace.testing, a few minutes

Sections (each writes ``RESULTS.md`` and ``results.json`` as soon as it finishes, so a cut-short run still
leaves what it measured):

1. ``overhead``  the pipeline's wall time with and without ``shapetrace.record`` (interleaved pairs, medians), and
   the per-call cost of the proxy (a tiny module and a UNet-shaped call, N calls direct vs through the proxy).
2. ``export``    one child process per graph (``bench/export_one.py``): builds only that module, records one call,
   then measures the export alone (seconds, peak RSS, per-phase time and memory, file sizes).
3. ``graphs``    per graph, on its recorded inputs: PyTorch eager vs OpenVINO (dynamic / static shapes, f32 / bf16)
   vs ONNX Runtime, through shapetrace's own runners; parity (SNR, max abs error) against PyTorch's outputs.
4. ``e2e``       the whole pipeline on the exported graphs via ``shapetrace.load`` (when it exists), PSNR of the
   final image against PyTorch's; always also an estimate from the per-graph numbers.
5. ``export-ov-direct`` (full run, optional) OpenVINO IR converted straight from torch (``formats=("openvino",)``).
6. ``quantize``  INT8 from recorded runs: record with ``samples=``, export int8 / hybrid IRs calibrated on them,
   per graph and end to end speed vs PyTorch, held-out SNR, image PSNR vs float, IR size
   (``bench/quantize_bench.py``).

Output: ``bench/RESULTS.md`` + ``bench/results.json`` (full), ``bench/RESULTS.quick.md`` +
``bench/results.quick.json`` (``--quick``). Exports go to ``--work`` (default ``/tmp/shapetrace-bench-<suite>``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import quantize_bench  # noqa: E402
import zoo  # noqa: E402

PIPE_GRAPHS = ("text_encoder", "controlnet", "unet", "vae.decode")
OPENPOSE_GRAPHS = ("body_estimation.model",)
#: (label, backend, precision, static_shapes); torch first: it is the baseline of every ratio
VARIANTS = (
    ("torch eager", "torch", "f32", False),
    ("OpenVINO f32 dynamic", "openvino", "f32", False),
    ("OpenVINO bf16 dynamic", "openvino", "bf16", False),
    ("OpenVINO f32 static", "openvino", "f32", True),
    ("OpenVINO bf16 static", "openvino", "bf16", True),
    ("ONNX Runtime f32", "onnxruntime", "f32", False),
)
PSNR_TARGET = 40.0
#: what-if export runs (section ``export-whatif``): result key -> patches of bench/export_one.py
WHATIF = {
    "export-whatif-ov-from-exported-program": ("ov-from-exported-program",),
}


# ============================================================================================== small helpers
def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def gb(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e9 else f"{n / 1e6:.1f} MB"


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse)


def snr_db(out: np.ndarray, ref: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    err = float(np.sum((out.astype(np.float64) - ref) ** 2))
    sig = float(np.sum(ref ** 2))
    return float("inf") if err == 0 else (10 * math.log10(sig / err) if sig > 0 else float("-inf"))


def fmt_db(x: float | None) -> str:
    if x is None:
        return "-"
    return "exact" if x == float("inf") else f"{x:.1f} dB"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def machine() -> dict:
    info: dict[str, Any] = {"cpu": platform.processor() or "?", "logical_cpus": os.cpu_count()}
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        info["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
                       if f in flags]
    with contextlib.suppress(AttributeError, OSError):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(("MemTotal", "SwapTotal")):
                k, v = line.split(":")
                info[k] = int(v.split()[0]) * 1024
    info["torch_threads"] = torch.get_num_threads()
    info["loadavg_start"] = os.getloadavg()
    info["python"] = platform.python_version()
    return info


def versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "onnx", "onnxscript", "onnxruntime", "openvino", "diffusers", "transformers",
                "controlnet-aux", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    import shapetrace

    out["shapetrace"] = shapetrace.__version__
    with contextlib.suppress(Exception):
        out["shapetrace_git"] = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                                               capture_output=True, text=True).stdout.strip()
    return out


# ============================================================================================== the bench
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.suite = "quick" if args.quick else "full"
        self.work = Path(args.work or f"/tmp/shapetrace-bench-{self.suite}")
        self.work.mkdir(parents=True, exist_ok=True)
        suffix = ".quick" if args.quick else ""
        Path(args.output or HERE).mkdir(parents=True, exist_ok=True)
        self.md_path = Path(args.output or HERE) / f"RESULTS{suffix}.md"
        self.json_path = Path(args.output or HERE) / f"results{suffix}.json"
        self.runs = args.runs or (3 if args.quick else 3)
        self.started = time.time()
        self.r: dict[str, Any] = {
            "suite": self.suite,
            "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions(), "settings": dict(zoo.RUNS[self.suite], runs=self.runs),
            "sections_done": [],
        }
        if args.update and self.json_path.exists():  # re-run some sections into an earlier run's results
            old = json.loads(self.json_path.read_text())
            old.setdefault("updates", []).append({k: self.r[k] for k in ("command", "started")}
                                                 | {"loadavg_start": self.r["machine"]["loadavg_start"],
                                                    "head": self.r["versions"].get("shapetrace_git")})
            self.r = old
        self.pipe: Any = None
        self.det: Any = None
        self.log(f"suite={self.suite} work={self.work} results={self.md_path}")

    # ------------------------------------------------------------------------------------------ plumbing
    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.started:7.1f}s rss {rss() / 1e9:5.2f} GB] {msg}", flush=True)

    def save(self, section: str | None = None) -> None:
        if section and section not in self.r["sections_done"]:
            self.r["sections_done"].append(section)
        self.r["elapsed_s"] = round(time.time() - self.started, 1)
        peer = self.md_path.parent / "optimum_infer.json"
        if self.suite == "full" and peer.exists():  # bench/optimum_infer.py's headline, kept across runs
            import optimum_infer

            self.r["peer_optimum_sd15"] = optimum_infer.summary(json.loads(peer.read_text()))
        self.json_path.write_text(json.dumps(self.r, indent=1, default=_jsonable))
        self.md_path.write_text(render_md(self.r) + _other_sections(self.md_path.parent, self.suite))
        self.log(f"wrote {self.md_path.name} / {self.json_path.name} ({section or 'partial'})")

    def build(self) -> None:
        t, self.pipe = timed(lambda: zoo.build_pipeline(self.suite, self.a.seed))
        t2, self.det = timed(lambda: zoo.build_openpose(self.suite, self.a.seed))
        params = {c: sum(p.numel() for p in getattr(self.pipe, c).parameters())
                  for c in ("unet", "controlnet", "text_encoder", "vae")}
        params["body_estimation.model"] = sum(p.numel() for p in self.det.body_estimation.model.parameters())
        self.r["models"] = {"build_seconds": round(t + t2, 1), "parameters": params,
                            "fingerprints": {c: zoo.fingerprint(getattr(self.pipe, c))
                                             for c in ("unet", "controlnet", "text_encoder", "vae")}
                            | {"body_estimation.model": zoo.fingerprint(self.det.body_estimation.model)}}
        self.log(f"built pipeline + openpose in {t + t2:.1f}s: "
                 + ", ".join(f"{k} {v / 1e6:.0f}M" for k, v in params.items()))

    def run_pipe(self) -> np.ndarray:
        return zoo.run_pipeline(self.pipe, self.suite, self.a.seed)

    # ------------------------------------------------------------------------------------------ 1. overhead
    def overhead(self) -> None:
        import shapetrace

        self.log("overhead: warm-up run")
        t_warm, _ = timed(self.run_pipe)
        self.log(f"  warm-up {t_warm:.2f}s")
        plain: list[float] = []
        recorded: list[float] = []
        cpu = {"plain": [], "record": []}
        inside: list[dict] = []  # shapetrace's own seconds in each recorded run (instrumented)
        image = None
        rec = None
        n = self.a.overhead_runs or max(self.runs, 5)
        for i in range(n):
            order = ("plain", "record") if i % 2 == 0 else ("record", "plain")
            for kind in order:
                gc.collect()
                c0 = time.process_time()
                if kind == "plain":
                    t, img = timed(self.run_pipe)
                    plain.append(t)
                    image = img
                else:
                    acc = {"calls": 0, "call_overhead_s": 0.0, "attr_reads": 0}
                    with _instrument_recorder(acc):
                        t0 = time.perf_counter()
                        with shapetrace.record(self.pipe) as rec:
                            t1 = time.perf_counter()
                            self.run_pipe()
                            t2 = time.perf_counter()
                        t3 = time.perf_counter()
                    recorded.append(t3 - t0)
                    acc["enter_exit_s"] = (t1 - t0) + (t3 - t2)
                    inside.append(acc)
                cpu[kind].append(time.process_time() - c0)
            self.log(f"  pair {i + 1}/{n}: plain {plain[-1]:.3f}s  record {recorded[-1]:.3f}s  (shapetrace's own "
                     f"{inside[-1]['call_overhead_s'] + inside[-1]['enter_exit_s']:.4f}s in "
                     f"{inside[-1]['calls']} calls, {inside[-1]['attr_reads']} attribute reads)")
        assert rec is not None and image is not None
        rec.save(self.work / "signatures" / "pipe")
        with shapetrace.record(self.det) as rec_op:
            zoo.run_openpose(self.det)
        rec_op.save(self.work / "signatures" / "openpose")
        np.save(self.work / "torch_image.npy", image)
        self.torch_image = image
        self.calls = {g.name: g.num_calls for g in rec} | {g.name: g.num_calls for g in rec_op}
        ratio = med(recorded) / med(plain)
        pairs = [r / p for r, p in zip(recorded, plain)]
        self.r["record_overhead"] = {
            "plain_s": plain, "record_s": recorded, "median_plain_s": med(plain), "median_record_s": med(recorded),
            "ratio_of_medians": ratio, "ratio_of_mins": min(recorded) / min(plain),
            "median_pair_ratio": med(pairs), "pair_ratios": pairs,
            "plain_relative_spread": (max(plain) - min(plain)) / med(plain),
            "cpu_plain_s": cpu["plain"], "cpu_record_s": cpu["record"],
            "cpu_ratio_of_medians": med(cpu["record"]) / med(cpu["plain"]),
            "instrumented_runs": inside,
            "calls_per_run": self.calls,
            "loadavg": os.getloadavg(),
        }
        self.r["e2e_torch_s"] = med(plain)
        self.log(f"  wall ratio {ratio:.4f} (min-based {min(recorded) / min(plain):.4f}), CPU-time ratio "
                 f"{med(cpu['record']) / med(cpu['plain']):.4f}")
        self.per_call()
        ov = self.r["record_overhead"]
        attr_us = self.r["record_overhead_per_call"]["attribute_read"]["overhead_us"]
        own = [x["call_overhead_s"] + x["enter_exit_s"] + x["attr_reads"] * attr_us * 1e-6 for x in inside]
        ov["own_seconds_per_run"] = own
        ov["instrumented_ratio"] = 1 + med(own) / med(plain)
        self.r["record_overhead_ratio"] = round(ov["instrumented_ratio"], 5)
        self.r["record_overhead_ratio_wall"] = round(ratio, 4)
        self.log(f"  instrumented: shapetrace's own {med(own) * 1e3:.1f} ms per run -> ratio "
                 f"{ov['instrumented_ratio']:.5f}")
        self.save("overhead")

    def per_call(self) -> None:
        import shapetrace

        class Tiny(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lin = torch.nn.Linear(8, 8)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.lin(x)

        class UNetShaped(torch.nn.Module):
            """The UNet call pattern of the ControlNet pipeline (3 tensors + 12 residuals + 1, 2 constants)."""

            def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None,
                        cross_attention_kwargs=None, down_block_additional_residuals=None,
                        mid_block_additional_residual=None, added_cond_kwargs=None, return_dict=True):
                return (sample,)

        class Box:
            pass

        def bench_one(make_call: Callable[[Any], Callable[[], Any]], module: torch.nn.Module, n: int) -> dict:
            box = Box()
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

        x = torch.randn(1, 8)
        s, t, e = torch.randn(2, 4, 8, 8), torch.tensor(981), torch.randn(2, 77, 32)
        res = [torch.randn(2, 8, 8, 8) for _ in range(12)]
        mid = torch.randn(2, 8, 1, 1)
        n = self.a.per_call_n
        with torch.no_grad():
            tiny = bench_one(lambda box: (lambda m=box.m: m(x)), Tiny(), n)
            unet_like = bench_one(lambda box: (lambda m=box.m: m(
                s, t, encoder_hidden_states=e, timestep_cond=None, cross_attention_kwargs=None,
                down_block_additional_residuals=res, mid_block_additional_residual=mid, added_cond_kwargs=None,
                return_dict=False)), UNetShaped(), max(200, n // 5))
        attr = bench_one(lambda box: (lambda m=box.m: m.lin), Tiny(), n * 5)
        self.r["record_overhead_us_per_call"] = round(tiny["overhead_us"], 2)
        self.r["record_overhead_per_call"] = {"tiny_linear": tiny, "unet_call_pattern": unet_like,
                                              "attribute_read": attr}
        ov = self.r["record_overhead"]
        calls = sum(ov["calls_per_run"].get(g, 0) for g in PIPE_GRAPHS)
        ov["predicted_ratio_from_per_call"] = 1 + calls * unet_like["overhead_us"] * 1e-6 / ov["median_plain_s"]
        self.log(f"  per call: tiny {tiny['overhead_us']:.1f} us, UNet-shaped {unet_like['overhead_us']:.1f} us")

    # ------------------------------------------------------------------------------------------ 2. export
    def export(self, graphs: tuple[str, ...] | None = None, formats: str = "onnx,openvino",
               key: str = "export", keep: bool = True, patches: tuple[str, ...] = (),
               verify: bool = False) -> None:
        graphs = graphs or (PIPE_GRAPHS + OPENPOSE_GRAPHS)
        out_root = self.work / key
        shutil.rmtree(out_root, ignore_errors=True)
        out_root.mkdir(parents=True)
        results = self.r.setdefault(key, {})
        for name in graphs:
            sig = self.work / "signatures" / ("openpose" if name in OPENPOSE_GRAPHS else "pipe")
            out = out_root / name
            res_file = out_root / f"{name}.result.json"
            cmd = [sys.executable, str(HERE / "export_one.py"), "--suite", self.suite, "--graph", name,
                   "--signatures", str(sig), "--out", str(out), "--formats", formats, "--seed", str(self.a.seed),
                   "--result", str(res_file)]
            if name in (self.a.profile_export or []):
                cmd += ["--profile", str(out_root / f"{name}.profile.txt")]
            for patch in patches:
                cmd += ["--patch", patch]
            self.log(f"export {name} ({formats}) in a child process")
            log = out_root / f"{name}.log"
            with open(log, "w") as f:
                t, proc = timed(lambda: subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                                       timeout=self.a.export_timeout))
            if proc.returncode != 0 or not res_file.exists():
                tail = log.read_text()[-2000:]
                results[name] = {"error": f"child exited {proc.returncode}", "log_tail": tail}
                self.log(f"  FAILED ({proc.returncode}); see {log}")
                self.save(None)
                continue
            res = json.loads(res_file.read_text())
            res["child_wall_seconds"] = round(t, 1)
            marks = res["rss_marks"]
            w = res["weights_bytes"] or 1
            peak = res["vm_hwm_bytes"] or res["peak_rss_bytes"]
            res["peak_over_weights"] = peak / w
            res["peak_minus_build_over_weights"] = (peak - marks["after_build"]) / w
            res["peak_minus_before_export_over_weights"] = (peak - marks["before_export"]) / w
            expected = self.r.get("models", {}).get("fingerprints", {}).get(
                name if name in OPENPOSE_GRAPHS else name.split(".")[0])
            res["same_weights_as_pipeline"] = expected is None or abs(expected - res["fingerprint"]) < 1e-6 * max(
                1.0, abs(expected))
            if verify and not res.get("error"):
                res["verify"] = self._verify(out)
            results[name] = res
            self.log(f"  {name}: {res['seconds']}s, peak {gb(peak)} (sampled {gb(res['peak_rss_bytes'])}), "
                     f"weights {gb(w)}, ratio {res['peak_over_weights']:.2f}, error={res['error']}")
            self.save(None)
        if keep:
            self.merge(out_root, graphs)
        self.save(key)

    def _verify(self, out: Path) -> dict:
        """shapetrace.verify from the folder alone: recorded PyTorch outputs vs ONNX Runtime and OpenVINO (f32)."""
        import shapetrace

        try:
            t, report = timed(lambda: shapetrace.verify(out, write=False))
            text = str(report)
            return {"passed": bool(report), "seconds": t, "report": text[-1500:]}
        except Exception as e:
            return {"passed": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}

    def whatif(self) -> None:
        """The same export with one step of export.py replaced (bench/export_one.py PATCHES), to measure a proposed
        change before anyone edits export.py; every result is verified (shapetrace.verify, f32)."""
        graphs = tuple(self.a.whatif_graphs.split(","))
        for key, patches in WHATIF.items():
            self.log(f"{key}: patches {', '.join(patches) or '(none: baseline with the anonymous-RSS split)'}")
            self.export(graphs=graphs, key=key, keep=False, patches=patches, verify=True)
            shutil.rmtree(self.work / key, ignore_errors=True)

    def merge(self, out_root: Path, graphs: tuple[str, ...]) -> None:
        """One export folder per object (pipeline, detector) from the per-graph folders the children wrote."""
        from shapetrace._record.recording import read_json

        for obj_key, names in (("pipe", PIPE_GRAPHS), ("openpose", OPENPOSE_GRAPHS)):
            names = [n for n in names if n in graphs and (out_root / n / "manifest.json").exists()]
            if not names:
                continue
            dest = out_root / obj_key
            dest.mkdir(exist_ok=True)
            manifest = None
            entries = []
            for n in names:
                m = json.loads((out_root / n / "manifest.json").read_text())
                for f in (out_root / n).iterdir():
                    if f.name != "manifest.json":
                        os.replace(f, dest / f.name)
                entries.extend(m["graphs"])
                manifest = manifest or m
            manifest["graphs"] = entries
            sig = read_json(self.work / "signatures" / obj_key / "signatures.json", "signatures file")
            manifest["object_class"] = sig["object_class"]
            (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))

    def export_dir(self, graph: str) -> Path:
        return self.work / "export" / ("openpose" if graph in OPENPOSE_GRAPHS else "pipe")

    # ------------------------------------------------------------------------------------------ 3. graphs
    def graphs(self) -> None:
        from shapetrace.backends import open_runner
        from shapetrace._export.flat import flat_module
        from shapetrace.manifest import GraphEntry
        from shapetrace._core.walker import parse_path, resolve

        out = self.r.setdefault("graphs", {})
        for name in PIPE_GRAPHS + OPENPOSE_GRAPHS:
            folder = self.export_dir(name)
            if not (folder / "manifest.json").exists():
                continue
            entry = next((e for e in json.loads((folder / "manifest.json").read_text())["graphs"]
                          if e["name"] == name and not e.get("error")), None)
            if entry is None:
                continue
            with np.load(folder / entry["files"]["inputs"]) as z:
                feed = {k: z[k] for k in z.files}
            with np.load(folder / entry["files"]["outputs"]) as z:
                ref = {k: z[k] for k in z.files}
            obj = self.det if name in OPENPOSE_GRAPHS else self.pipe
            _, _, module = resolve(obj, parse_path(entry["module"]))
            rows: dict[str, Any] = {}
            torch_times: list[float] = []
            for label, backend, precision, static in VARIANTS + (VARIANTS[0],):  # torch again last: drift check
                gc.collect()
                kw: dict[str, Any] = dict(precision=precision, static_shapes=static)
                if backend == "torch":
                    kw = {"module": flat_module(module, GraphEntry.from_json(entry))}
                try:
                    runner = open_runner(backend, folder, GraphEntry.from_json(entry), **kw)
                    t_open, _ = timed(runner.__enter__)
                    try:
                        t_first, _ = timed(lambda: runner.infer(feed))
                        times = []
                        result = None
                        for _ in range(self.runs):
                            t, result = timed(lambda: runner.infer(feed))
                            times.append(t)
                        rss_in = rss()
                    finally:
                        runner.__exit__(None, None, None)
                    del runner
                except Exception as e:  # one variant failing never stops the others
                    rows[label] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                    self.log(f"  {name} / {label}: ERROR {rows[label]['error']}")
                    continue
                if backend == "torch" and label in rows:  # the second torch pass: pool both passes
                    torch_times += times
                    rows[label].update(times_s=torch_times, median_s=med(torch_times), times_s_after=times)
                    self.log(f"  {name} / torch eager again: {med(times) * 1e3:.1f} ms")
                    continue
                if backend == "torch":
                    torch_times += times
                snrs = [snr_db(result[k], ref[k]) for k in ref if k in result]
                errs = [float(np.max(np.abs(result[k].astype(np.float64) - ref[k]))) for k in ref if k in result]
                rows[label] = {"backend": backend, "precision": precision, "static_shapes": static,
                               "open_s": t_open, "first_s": t_first, "times_s": times, "median_s": med(times),
                               "snr_db": min(snrs) if snrs else None, "max_abs_err": max(errs) if errs else None,
                               "rss_while_open": rss_in}
                self.log(f"  {name} / {label}: {med(times) * 1e3:.1f} ms (open {t_open:.1f}s), "
                         f"SNR {fmt_db(rows[label]['snr_db'])}")
            base = rows.get("torch eager", {}).get("median_s")
            for row in rows.values():
                if base and row.get("median_s"):
                    row["speedup"] = base / row["median_s"]
            out[name] = {"calls_per_run": getattr(self, "calls", {}).get(name), "loadavg": os.getloadavg(), "shapes": {
                i["name"]: i["example_shape"] for i in entry["inputs"]}, "variants": rows}
            self.save(None)
        self.estimate_e2e()
        self.save("graphs")

    def estimate_e2e(self) -> None:
        """e2e per variant ~ sum(calls x graph median) + what is not a graph (scheduler, tokenizer, image I/O)."""
        g = self.r.get("graphs", {})
        calls = self.r.get("record_overhead", {}).get("calls_per_run", {})
        torch_e2e = self.r.get("e2e_torch_s")
        if not torch_e2e or not all(n in g for n in PIPE_GRAPHS):
            return
        torch_graphs = sum(calls.get(n, 1) * g[n]["variants"]["torch eager"]["median_s"] for n in PIPE_GRAPHS)
        rest = max(0.0, torch_e2e - torch_graphs)
        est = {}
        for label, *_ in VARIANTS:
            try:
                t = rest + sum(calls.get(n, 1) * g[n]["variants"][label]["median_s"] for n in PIPE_GRAPHS)
            except KeyError:
                continue
            est[label] = {"seconds": t, "speedup": torch_e2e / t}
        self.r["e2e_estimated"] = {"not_in_graphs_s": rest, "torch_graph_sum_s": torch_graphs, "variants": est}

    # ------------------------------------------------------------------------------------------ 4. e2e
    def breakdown(self) -> None:
        """Where a PyTorch pipeline run spends its time: each graph timed in place (hooks), the rest outside."""
        timers: dict[str, list[float]] = {}
        hooks = []
        for name in ("text_encoder", "controlnet", "unet"):
            def pre(mod, args, name=name):
                timers.setdefault(name, []).append(-time.perf_counter())

            def post(mod, args, out, name=name):
                timers[name][-1] += time.perf_counter()

            module = getattr(self.pipe, name)
            hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        vae = self.pipe.vae
        orig = vae.decode

        def decode(*args, **kwargs):
            t = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                timers.setdefault("vae.decode", []).append(time.perf_counter() - t)

        runs = []
        try:
            vae.decode = decode
            for _ in range(self.runs):
                timers.clear()
                gc.collect()
                t, _ = timed(self.run_pipe)
                runs.append({"total_s": t, "graphs": {k: {"calls": len(v), "seconds": sum(v)}
                                                      for k, v in timers.items()}})
                runs[-1]["outside_graphs_s"] = t - sum(g["seconds"] for g in runs[-1]["graphs"].values())
                self.log(f"  breakdown: {t:.2f}s, outside graphs {runs[-1]['outside_graphs_s']:.2f}s: "
                         + ", ".join(f"{k} {g['seconds']:.2f}s/{g['calls']}" for k, g in runs[-1]["graphs"].items()))
        finally:
            del vae.decode
            for h in hooks:
                h.remove()
        self.r["e2e_torch_breakdown"] = {"runs": runs, "loadavg": os.getloadavg()}
        self.save("breakdown")

    def shell(self) -> Any:
        """A second pipeline object sharing the same modules (own scheduler): load() swaps its attributes only,
        so PyTorch (``self.pipe``) and the runtime can run alternately without a second copy of the weights."""
        comps = dict(self.pipe.components)
        comps["scheduler"] = type(comps["scheduler"]).from_config(comps["scheduler"].config)
        p = type(self.pipe)(**comps, requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        return p

    def e2e(self) -> None:
        import shapetrace

        try:
            load = shapetrace.load
        except (ImportError, AttributeError) as e:
            self.r["e2e_note"] = f"shapetrace.load is not available ({type(e).__name__}: {e}); see e2e_estimated"
            self.log(self.r["e2e_note"])
            self.save("e2e")
            return
        folder = self.work / "export" / "pipe"
        ref = getattr(self, "torch_image", None)
        if ref is None:
            ref = self.run_pipe()
        plain = list(self.r.get("record_overhead", {}).get("plain_s", []))
        rows: dict[str, Any] = {"torch eager": {"times_s": plain, "psnr_db": 0.0 if not plain else float("inf"),
                                                "from_overhead_section_s": plain}}
        if plain:
            rows["torch eager"]["median_s"] = med(plain)
        self.r["e2e"] = rows
        for label, backend, precision, static in VARIANTS[1:]:
            gc.collect()
            self.log(f"e2e: {label} (interleaved with PyTorch runs)")
            try:
                row = self._e2e_variant(load, folder, backend, precision, static, ref)
            except Exception as e:
                row = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
            rows[label] = row
            if row.get("torch_times_s"):
                rows["torch eager"]["times_s"] += row["torch_times_s"]
                rows["torch eager"]["torch_cpu_s"] = rows["torch eager"].get("torch_cpu_s", []) + row["torch_cpu_s"]
                rows["torch eager"]["median_s"] = med(rows["torch eager"]["times_s"])
                rows["torch eager"]["psnr_db"] = row["torch_psnr_db"]
                row["speedup_vs_interleaved_torch"] = med(row["torch_times_s"]) / row["median_s"]
            self.log(f"  {label}: {row.get('median_s', float('nan')):.2f}s (PyTorch alongside "
                     f"{med(row.get('torch_times_s', [])):.2f}s) PSNR {fmt_db(row.get('psnr_db'))} "
                     f"{row.get('error') or ''}")
            self._e2e_summary(rows)
            self.save(None)
        self._e2e_summary(rows)
        self.save("e2e")

    def _e2e_summary(self, rows: dict) -> None:
        base = rows["torch eager"].get("median_s")
        if not base:
            return
        rows["torch eager"]["speedup"] = 1.0
        for k, row in rows.items():
            if row.get("median_s") and k != "torch eager":
                row["speedup"] = base / row["median_s"]
        def headline(row: dict) -> float | None:  # adjacent-pair ratios: robust to a drifting machine load
            return row.get("median_pair_speedup") or row.get("speedup")

        ok = [(headline(r), k) for k, r in rows.items() if k.startswith("OpenVINO") and headline(r)
              and (r.get("psnr_db") or 0) >= PSNR_TARGET]
        if ok:
            best = max(ok)
            self.r["e2e_speedup_openvino_vs_torch"] = round(best[0], 3)
            self.r["e2e_best_variant"] = best[1]
            self.r["e2e_speedup_definition"] = ("median over adjacent (runtime run, PyTorch run) pairs of "
                                                "PyTorch seconds / runtime seconds, best OpenVINO variant with "
                                                f"PSNR >= {PSNR_TARGET} dB")
        anyov = [(r["speedup"], k) for k, r in rows.items() if k.startswith("OpenVINO") and r.get("speedup")]
        if anyov:
            self.r["e2e_speedup_openvino_any_psnr"] = dict(zip(("speedup", "variant"), max(anyov)))

    def _e2e_variant(self, load: Callable, folder: Path, backend: str, precision: str, static: bool,
                     ref: np.ndarray) -> dict:
        shell = self.shell()
        t_load, runtime = timed(lambda: load(shell, folder, backend=backend, precision=precision,
                                             static_shapes=static))
        rss_loaded = rss()
        try:
            t_first, _ = timed(lambda: zoo.run_pipeline(shell, self.suite, self.a.seed))
            times, torch_times, image, torch_image = [], [], None, None
            cpu_rt, cpu_pt = [], []
            k = self.a.e2e_torch_runs if self.a.e2e_torch_runs is not None else self.runs
            # PyTorch runs interleaved with the runtime's (rt pt rt pt ... then the remaining rt), so a drifting
            # machine load hits both
            order = [kind for i in range(self.runs) for kind in (("rt", "pt") if i < k else ("rt",))]
            for kind in order:
                gc.collect()
                c0 = time.process_time()
                if kind == "rt":
                    t, image = timed(lambda: zoo.run_pipeline(shell, self.suite, self.a.seed))
                    times.append(t)
                    cpu_rt.append(time.process_time() - c0)
                else:
                    t, torch_image = timed(self.run_pipe)
                    torch_times.append(t)
                    cpu_pt.append(time.process_time() - c0)
            stats = [{"graph": st.graph, "ran_on": st.ran_on, "calls": st.calls, "seconds": st.seconds}
                     for st in runtime.stats()]
        finally:
            runtime.close()
            del runtime, shell
            gc.collect()
        pairs = [p / r for r, p in zip(times, torch_times)]  # each runtime run and the PyTorch run right after it
        return {"load_s": t_load, "first_s": t_first, "times_s": times, "median_s": med(times),
                "pair_speedups": pairs, "median_pair_speedup": med(pairs) if pairs else None,
                "cpu_s": cpu_rt, "torch_cpu_s": cpu_pt,
                "torch_times_s": torch_times, "psnr_db": psnr(image, ref),
                "torch_psnr_db": psnr(torch_image, ref) if torch_image is not None else None,
                "rss_loaded": rss_loaded, "loadavg": os.getloadavg(), "runtime_stats": stats}


@contextlib.contextmanager
def _instrument_recorder(acc: dict):
    """Time shapetrace's own work inside a record() block (bench only; shapetrace's code is not changed):
    every ``Recorder.call`` minus the wrapped call itself, and the number of attribute reads through a proxy."""
    from shapetrace._record.proxy import Recorder, RecordingProxy

    orig_call, orig_getattr = Recorder.call, RecordingProxy.__getattr__

    def call(self, path, module, method, fn, args, kwargs):
        inner = 0.0

        def timed_fn(*a, **k):
            nonlocal inner
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                inner += time.perf_counter() - t

        t = time.perf_counter()
        try:
            return orig_call(self, path, module, method, timed_fn, args, kwargs)
        finally:
            acc["calls"] += 1
            acc["call_overhead_s"] += time.perf_counter() - t - inner

    def getattr_(self, name):
        acc["attr_reads"] += 1
        return orig_getattr(self, name)

    Recorder.call, RecordingProxy.__getattr__ = call, getattr_
    try:
        yield acc
    finally:
        Recorder.call, RecordingProxy.__getattr__ = orig_call, orig_getattr


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return repr(v)
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return repr(v)


# ============================================================================================== RESULTS.md
def _other_sections(folder: Path, suite: str) -> str:
    """Sections other bench scripts keep in RESULTS.md (bench/generation.py: ``generation.json``,
    bench/optimum_infer.py: ``optimum_infer.json``), re-appended so
    that re-rendering this file keeps them."""
    gen, peer = folder / "generation.json", folder / "optimum_infer.json"
    if suite != "full":
        return ""
    text = ""
    if gen.exists():
        import generation

        text += "\n" + generation.render(json.loads(gen.read_text())) + generation.CAVEAT_IF_LOADED(
            json.loads(gen.read_text()))
    if peer.exists():
        import optimum_infer

        text += "\n" + optimum_infer.render(json.loads(peer.read_text()))
    return text


def render_md(r: dict) -> str:
    L: list[str] = []
    m, v, s = r["machine"], r["versions"], r["settings"]
    runs = [{"command": r["command"], "started": r["started"], "loadavg_start": m.get("loadavg_start", []),
             "head": r.get("head", v.get("shapetrace_git"))}]
    runs += r.get("updates", [])
    L += [f"# shapetrace benchmark ({r['suite']})", "",
          "Command" + ("s (later ones re-ran some sections with `--update`, replacing those sections only)"
                       if len(runs) > 1 else "") + ":", ""]
    L += [f"- `{x['command']}` (started {x['started']}, shapetrace at {x.get('head') or '?'}, load average "
          f"{', '.join(f'{v:.1f}' for v in x.get('loadavg_start', []))})" for x in runs]
    L += ["", f"Sections in this file: {', '.join(r['sections_done']) or 'none'}.", ""]
    heads = sorted({f"{e['export_py']['head']} (export.py sha1 {e['export_py']['export_py_sha1']})"
                    for e in (r.get("export") or {}).values() if isinstance(e, dict) and e.get("export_py")})
    if heads:
        L += [f"Section 2 measured shapetrace at {', '.join(heads)}.", ""]
    L += [
          f"Machine: {m.get('cpu')}, {m.get('usable_cpus', m.get('logical_cpus'))} usable CPUs "
          f"(ISA: {', '.join(m.get('isa', []))}), {gb(m.get('MemTotal'))} RAM, swap {gb(m.get('SwapTotal'))}; "
          f"torch threads {m.get('torch_threads')}. The machine is shared with other jobs (load averages "
          f"above): speed ratios are only taken between runs interleaved in time.", "",
          "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val and k != "shapetrace_git") + ".",
          "",
          f"Workload: `StableDiffusionControlNetPipeline`, random weights, {s['height']}x{s['width']}, "
          f"{s['steps']} steps, guidance_scale {s['guidance_scale']} (one prompt, so the UNet and ControlNet see "
          f"batch 2), DDIM; medians of {s['runs']} runs after one warm-up run.", ""]
    if "models" in r:
        p = r["models"]["parameters"]
        L += ["Models: " + ", ".join(f"{k} {n / 1e6:.1f}M params" for k, n in p.items())
              + f" (built in {r['models']['build_seconds']} s).", ""]
    L += _md_targets(r)
    if r.get("record_overhead", {}).get("median_plain_s"):
        o = r["record_overhead"]
        pc = r.get("record_overhead_per_call", {})
        L += ["## 1. Recording overhead", "",
              "| | median wall | min wall | median CPU time | runs |", "|---|---|---|---|---|",
              f"| pipeline, plain | {o['median_plain_s']:.3f} s | {min(o['plain_s']):.3f} s | "
              f"{med(o.get('cpu_plain_s', [])):.3f} s | {len(o['plain_s'])} |",
              f"| pipeline inside `shapetrace.record` | {o['median_record_s']:.3f} s | {min(o['record_s']):.3f} s | "
              f"{med(o.get('cpu_record_s', [])):.3f} s | {len(o['record_s'])} |", ""]
        if o.get("instrumented_ratio"):
            own = o["own_seconds_per_run"]
            x = o["instrumented_runs"][-1]
            L += [f"**Ratio with / without: {o['instrumented_ratio']:.5f}** = 1 + shapetrace's own time per recorded "
                  f"run ({med(own) * 1e3:.1f} ms: {x['calls']} recorded calls, {x['attr_reads']} attribute reads "
                  f"through a proxy, entering and leaving `record`) / the plain run's median. Measured inside the "
                  f"recorded runs: each `Recorder.call` is timed minus the wrapped module call, plus the time of "
                  f"`record()`'s enter / exit, plus attribute reads x their measured proxy cost.", ""]
        L += [f"Wall-clock ratio with / without: {o['ratio_of_medians']:.4f} (median of each), "
              f"{o['ratio_of_mins']:.4f} (min of each), {o['median_pair_ratio']:.4f} (median of the interleaved "
              f"pairs); CPU-time ratio {o.get('cpu_ratio_of_medians', float('nan')):.4f}. The plain runs alone "
              f"spread by {o['plain_relative_spread'] * 100:.1f} % on this shared machine (load average "
              f"{', '.join(f'{v:.1f}' for v in o.get('loadavg', []))}), so the wall-clock ratio cannot resolve "
              f"1 %; the instrumented figure above can.", ""]
        if pc:
            t, u = pc["tiny_linear"], pc["unet_call_pattern"]
            L += ["| per call (microbenchmark) | direct | through the proxy | overhead |", "|---|---|---|---|",
                  f"| `Linear(8, 8)`, 1 tensor ({t['calls']} calls) | {t['direct_us']:.1f} us | "
                  f"{t['proxied_us']:.1f} us | **{t['overhead_us']:.1f} us** |",
                  f"| UNet call pattern, 16 tensors + 4 constants ({u['calls']} calls) | {u['direct_us']:.1f} us | "
                  f"{u['proxied_us']:.1f} us | **{u['overhead_us']:.1f} us** |"]
            if pc.get("attribute_read"):
                a = pc["attribute_read"]
                L.append(f"| attribute read (`proxy.lin`, {a['calls']} reads) | {a['direct_us']:.2f} us | "
                         f"{a['proxied_us']:.2f} us | **{a['overhead_us']:.2f} us** |")
            L += ["", f"Calls per pipeline run: {', '.join(f'{k} x{n}' for k, n in o['calls_per_run'].items())}; "
                  f"at the UNet-pattern cost that predicts a ratio of "
                  f"{o.get('predicted_ratio_from_per_call', 1):.5f}.", ""]
    if r.get("export"):
        L += ["## 2. Export (one child process per graph, `formats=(\"onnx\", \"openvino\")`)", "",
              "Peak = VmHWM of the child, reset right before `export_all` (so it is the export's own peak, model "
              "weights included); sampled = export.py's own 20 ms sampler (`manifest peak_rss_bytes`). "
              "`after build` = RSS right after constructing the model; `before export` = after recording one call.",
              "",
              "| graph | weights (fp32) | seconds | ONNX s | IR s (IR from) | RSS after build | RSS before export | "
              "peak RSS | sampled peak (anonymous part) | peak / weights | (peak - after build) / weights | "
              "ONNX size | IR size |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, e in r["export"].items():
            if e.get("error") and "rss_marks" not in e:
                L.append(f"| {name} | FAILED: {str(e['error'])[:200]} |" + " |" * 11)
                continue
            peak = e.get("vm_hwm_bytes") or e.get("peak_rss_bytes")
            t = e.get("timings") or {}
            sz = e.get("sizes") or {}
            src = (e.get("tools") or {}).get("openvino_from", "?")
            L.append(f"| {name} | {gb(e['weights_bytes'])} | {e['seconds']:.1f} | {t.get('onnx', 0):.1f} | "
                     f"{t.get('openvino', 0):.1f} ({src}) | {gb(e['rss_marks']['after_build'])} | "
                     f"{gb(e['rss_marks']['before_export'])} | {gb(peak)} | {gb(e['peak_rss_bytes'])}"
                     f"{' (' + gb(e['sampled_peak_anon_bytes']) + ')' if e.get('sampled_peak_anon_bytes') else ''} | "
                     f"**{e['peak_over_weights']:.2f}x** | {e['peak_minus_build_over_weights']:.2f}x | "
                     f"{gb(sz.get('onnx'))} | {gb(sz.get('openvino'))} |")
        L += ["", "Where the time and memory go (per phase; peak RSS sampled every 20 ms inside the phase; the "
              "anonymous part excludes file-backed pages such as mmapped weight files and shared libraries, "
              "~0.5 GB here):", ""]
        for name, e in r["export"].items():
            if not e.get("phases"):
                continue
            w = e["weights_bytes"] or 1
            L += [f"<details><summary>{name}</summary>", "", "| phase | start | seconds | RSS at start | peak RSS | "
                  "peak / weights | peak anonymous RSS |", "|---|---|---|---|---|---|---|"]
            for p in e["phases"]:
                L.append(f"| {p['phase']} | {p['start_s']:.1f} s | {p['seconds']:.1f} | {gb(p['rss_start'])} | "
                         f"{gb(p['peak_rss'])} | {p['peak_rss'] / w:.2f}x | {gb(p.get('peak_anon'))} |")
            L += ["", "</details>", ""]
        bad = [n for n, e in r["export"].items() if e.get("same_weights_as_pipeline") is False]
        if bad:
            L += [f"WARNING: the children's weights differ from the pipeline's for {', '.join(bad)}.", ""]
    extra = [k for k in r if k in ("export-previous", "export-ov-direct") or k.startswith("export-whatif")]
    for key in extra:
        title = ("IR straight from torch (`formats=(\"openvino\",)`: `openvino.convert_model(module)`, no ONNX)"
                 if key == "export-ov-direct" else
                 f"Before: {r.get('export-previous-note', 'an earlier export.py')}" if key == "export-previous" else
                 f"What-if `{key[len('export-whatif-'):]}`: export.py steps replaced in the child only "
                 f"(bench/export_one.py PATCHES), then `shapetrace.verify` (f32, ONNX Runtime + OpenVINO)")
        note = (r.get("notes") or {}).get(key)
        L += [f"### {title}", ""] + ([f"_{note}_", ""] if note else []) + [
              "| graph | seconds | ONNX s | IR s | peak RSS (VmHWM) | sampled peak (anonymous) | peak / weights | "
              "(peak - after build) / weights | ONNX size | IR size | verify | error |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, e in r[key].items():
            if "rss_marks" not in e:
                L.append(f"| {name} | FAILED: {str(e.get('error'))[:200]} |" + " |" * 10)
                continue
            peak = e.get("vm_hwm_bytes") or e.get("peak_rss_bytes")
            t = e.get("timings") or {}
            sz = e.get("sizes") or {}
            v = e.get("verify")
            vtxt = "-" if not v else ("passed" if v.get("passed") else f"FAILED {v.get('error', '')[:80]}")
            L.append(f"| {name} | {e.get('seconds') or '-'} | {t.get('onnx', '-')} | {t.get('openvino', '-')} | "
                     f"{gb(peak)} | {gb(e.get('sampled_peak_rss_bytes'))} ({gb(e.get('sampled_peak_anon_bytes'))}) | "
                     f"**{(e.get('peak_over_weights') or 0):.2f}x** | "
                     f"{(e.get('peak_minus_build_over_weights') or 0):.2f}x | {gb(sz.get('onnx'))} | "
                     f"{gb(sz.get('openvino'))} | {vtxt} | {str(e.get('error') or '')[:200]} |")
        L.append("")
    if r.get("graphs"):
        L += ["## 3. Per graph inference (recorded inputs, `<graph>.inputs.npz`)", "",
              "Median latency; speedup = PyTorch eager / variant; parity = worst output's SNR against PyTorch's "
              "outputs (`<graph>.outputs.npz`), max abs error in brackets. `open` = load + compile.", ""]
        labels = [v[0] for v in VARIANTS]
        L += ["| graph (calls/run) | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        for name, g in r["graphs"].items():
            cells = []
            for lab in labels:
                row = g["variants"].get(lab)
                if not row:
                    cells.append("-")
                elif row.get("error"):
                    cells.append("error")
                else:
                    cells.append(f"{row['median_s'] * 1e3:.0f} ms ({row.get('speedup', 0):.2f}x)<br>"
                                 f"{fmt_db(row['snr_db'])} [{row['max_abs_err']:.1e}]<br>open {row['open_s']:.1f} s")
            L.append(f"| {name} (x{g.get('calls_per_run') or '?'}) | " + " | ".join(cells) + " |")
        errs = [(n, lab, row["error"]) for n, g in r["graphs"].items() for lab, row in g["variants"].items()
                if row.get("error")]
        L += [""] + [f"- {n} / {lab}: {e}" for n, lab, e in errs] + ([""] if errs else [])
    if r.get("e2e_estimated"):
        e = r["e2e_estimated"]
        L += ["### End to end, estimated from the per-graph medians", "",
              f"calls x graph median, plus {e['not_in_graphs_s']:.2f} s of the pipeline that is not a graph "
              f"(PyTorch e2e {r['e2e_torch_s']:.2f} s - {e['torch_graph_sum_s']:.2f} s in graphs).", "",
              "| variant | estimated e2e | speedup |", "|---|---|---|"]
        L += [f"| {k} | {x['seconds']:.2f} s | {x['speedup']:.2f}x |" for k, x in e["variants"].items()]
        L.append("")
    if r.get("e2e_torch_breakdown"):
        runs = r["e2e_torch_breakdown"]["runs"]
        names = list(runs[0]["graphs"])
        L += ["### Where a PyTorch pipeline run spends its time (graphs timed in place with hooks)", "",
              "| run | total | " + " | ".join(names) + " | outside the graphs |", "|---" * (len(names) + 3) + "|"]
        for i, x in enumerate(runs):
            L.append(f"| {i + 1} | {x['total_s']:.2f} s | "
                     + " | ".join(f"{x['graphs'][n]['seconds']:.2f} s ({x['graphs'][n]['calls']} calls)" for n in names)
                     + f" | {x['outside_graphs_s']:.2f} s |")
        L.append("")
    if r.get("e2e") or r.get("e2e_note"):
        L += ["## 4. End to end (`shapetrace.load(pipe, out_dir, backend=..., precision=..., static_shapes=...)`)",
              ""]
        if r.get("e2e_note"):
            L += [r["e2e_note"], ""]
        if r.get("e2e"):
            L += ["Each variant runs on a second pipeline object that shares the modules (load() swaps its attributes "
                  "only); each of its timed runs is followed by a PyTorch run, so a drifting machine load hits both. "
                  "**Pair speedup** = median over those adjacent pairs of PyTorch seconds / runtime seconds (the "
                  "headline: robust to the load drifting between variants). Medians speedup = median of all PyTorch "
                  "runs of this process / the variant's median. CPU = process CPU time per run (all threads). "
                  "PSNR of the final image (float, [0, 1]) against PyTorch's. `in graphs` = time the runtime spent "
                  "inside its compiled graphs per run (`Runtime.stats()`, first run included).", "",
                  "| variant | median | pair speedup | medians speedup | PSNR vs PyTorch image | median CPU | "
                  "in graphs / run | load (compile) | first run |", "|---|---|---|---|---|---|---|---|---|"]
            for k, row in r["e2e"].items():
                if row.get("error"):
                    L.append(f"| {k} | error: {row['error'][:300]} |" + " |" * 7)
                    continue
                if not row.get("median_s"):
                    continue
                inner = ""
                if row.get("runtime_stats"):
                    per = sum(x["seconds"] for x in row["runtime_stats"] if x["ran_on"] != "torch")
                    inner = f"{per / (len(row['times_s']) + 1):.2f} s"
                pair = row.get("median_pair_speedup")
                pair_txt = (f"**{pair:.2f}x** ({', '.join(f'{x:.2f}' for x in row['pair_speedups'])})"
                            if pair else ("1.00x" if k == "torch eager" else "-"))
                cpu = row.get("cpu_s") or row.get("torch_cpu_s")
                L.append(f"| {k} | {row['median_s']:.2f} s | {pair_txt} | {row.get('speedup', 1):.2f}x | "
                         f"{fmt_db(row['psnr_db'])} | {f'{med(cpu):.1f} s' if cpu else '-'} | {inner} | "
                         f"{row.get('load_s', 0):.1f} s | {row.get('first_s', 0):.2f} s |")
            L.append("")
    L += quantize_bench.render(r)
    notes = HERE / "analysis.md"
    if r["suite"] == "full" and notes.exists():
        L += ["## 5. Analysis: where the time / memory goes, and what would reach the targets", "",
              "_Written by hand from the run recorded in this file (`bench/analysis.md`, embedded by run.py); "
              "a new run regenerates the tables above but not this text._", "", notes.read_text().strip(), ""]
    return "\n".join(L) + "\n"


def _md_targets(r: dict) -> list[str]:
    rows = []
    if "record_overhead_ratio" in r:
        x = r["record_overhead_ratio"]
        if "record_overhead_ratio_wall" not in r:
            rows.append("| (the ratio below is wall-clock only: noise on this machine) | | |")
        rows.append(f"| recording overhead <= 1 % | {x:.4f} ({(x - 1) * 100:+.2f} %), "
                    f"{r.get('record_overhead_us_per_call', 0):.1f} us / call | {'met' if x <= 1.01 else 'MISSED'} |")
    if r.get("export"):
        ok = [n for n, e in r["export"].items() if (e.get("peak_over_weights") or 99) <= 2]
        txt = "; ".join(f"{n} {e.get('peak_over_weights', 0):.2f}x" for n, e in r["export"].items()
                        if e.get("peak_over_weights"))
        big = r["export"].get("unet", {})
        if big.get("seconds"):
            txt += (f" (UNet: {gb(big.get('vm_hwm_bytes') or big.get('peak_rss_bytes'))} peak, {big['seconds']:.0f} s; "
                    f"below ~1 GB of weights the ~1.1 GB the process holds before exporting is already >2x)")
        verdict = "met for " + ", ".join(ok) + ", missed for the others" if ok else "MISSED"
        rows.append(f"| export peak RSS <= 2x fp32 weights | {txt} | {verdict} |")
    if r.get("e2e"):
        best = r.get("e2e_speedup_openvino_vs_torch")
        rows.append(f"| OpenVINO e2e >= 2.2x PyTorch, PSNR >= 40 dB (aim 3x) | "
                    f"{best if best is not None else 'none >= 40 dB'}x ({r.get('e2e_best_variant', '-')}) | "
                    f"{'met' if best and best >= 2.2 else 'MISSED'}{' (3x aim met)' if best and best >= 3 else ''} |")
    elif r.get("e2e_estimated"):
        est = r["e2e_estimated"]["variants"]
        best = max(((x["speedup"], k) for k, x in est.items() if k.startswith("OpenVINO")), default=(0, "-"))
        rows.append(f"| OpenVINO e2e >= 2.2x PyTorch (estimated from graphs) | {best[0]:.2f}x ({best[1]}) | "
                    f"{'met' if best[0] >= 2.2 else 'MISSED'} (estimate) |")
    if r.get("quantize"):
        best = r.get("e2e_speedup_openvino_quantized_best") or {}
        ratio = r.get("ir_size_ratio_int8")
        rows.append(f"| best quantized variant e2e >= 3x PyTorch | {best.get('speedup', '-')}x ({best.get('variant', '-')}, "
                    f"PSNR {best.get('psnr_db') or 0:.1f} dB vs float) | "
                    f"{'met' if (best.get('speedup') or 0) >= 3 else 'MISSED'} |")
        rows.append(f"| int8 IR >= 3.5x smaller than f32 | {ratio or 0:.2f}x | "
                    f"{'met' if (ratio or 0) >= 3.5 else 'MISSED'} |")
        snrs = [float(g["worst_snr_db"]) for m in ("int8", "hybrid") for g in
                (r["quantize"].get(m) or {}).get("graphs", {}).values() if g.get("worst_snr_db") is not None]
        if snrs:
            rows.append(f"| per-graph output SNR >= 20 dB on held-out calls | worst {min(snrs):.1f} dB | "
                        f"{'met' if min(snrs) >= 20 else 'MISSED'} |")
    if not rows:
        return []
    note = ([f"Quick suite: tiny models on a shared machine; the ratios below exercise the code path and mean "
             f"little (weights are kilobytes, so RSS / weights is dominated by the interpreter).", ""]
            if r["suite"] == "quick" else [])
    return ["## Targets", "", *note, "| target | measured | |", "|---|---|---|", *rows, ""]


# ============================================================================================== main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny offline pipelines, a few minutes")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per measurement (median; default 3)")
    ap.add_argument("--overhead-runs", type=int, default=None, help="interleaved plain/record pairs (default 5)")
    ap.add_argument("--per-call-n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="export folders etc. (default /tmp/shapetrace-bench-<suite>)")
    ap.add_argument("--output", default=None, help="where RESULTS.md / results.json go (default bench/)")
    ap.add_argument("--sections", default="overhead,export,graphs,breakdown,e2e,quantize,export-ov-direct",
                    help="comma list of overhead, export, graphs, breakdown, e2e, quantize, export-ov-direct, "
                         "export-whatif")
    ap.add_argument("--profile-export", action="append", default=None, help="cProfile this graph's export child")
    ap.add_argument("--export-timeout", type=int, default=3600)
    ap.add_argument("--whatif-graphs", default="text_encoder,controlnet,unet")
    ap.add_argument("--update", action="store_true",
                    help="start from the existing results.json and replace only the sections run now")
    ap.add_argument("--render", action="store_true", help="only re-render RESULTS.md from results.json")
    ap.add_argument("--e2e-torch-runs", type=int, default=None,
                    help="PyTorch runs interleaved with each e2e variant (default: --runs; the full default is 1, "
                         "the plain runs of the overhead section count too)")
    a = ap.parse_args()
    sections = a.sections.split(",")
    if not a.quick:
        a.overhead_runs = a.overhead_runs or 3
        a.e2e_torch_runs = a.runs or 3 if a.e2e_torch_runs is None else a.e2e_torch_runs
    torch.set_grad_enabled(False)
    if a.render:
        suffix = ".quick" if a.quick else ""
        out = Path(a.output or HERE)
        (out / f"RESULTS{suffix}.md").write_text(render_md(json.loads((out / f"results{suffix}.json").read_text()))
                                                  + _other_sections(out, "quick" if a.quick else "full"))
        return
    b = Bench(a)
    b.build()
    b.save(None)
    if "overhead" in sections or not (b.work / "signatures" / "pipe").exists():
        b.overhead()
    else:
        from shapetrace._record.recording import Recording

        b.calls = {g.name: g.num_calls for key in ("pipe", "openpose")
                   for g in Recording.load(b.work / "signatures" / key)}
        b.r.setdefault("record_overhead", {})["calls_per_run"] = b.calls
        b.torch_image = np.load(b.work / "torch_image.npy") if (b.work / "torch_image.npy").exists() else None
    if "export" in sections:
        # the children need the memory: drop the pipeline (~6 GB at full size) and build it again afterwards
        # (seeded per component: the same weights, checked against the fingerprints)
        before = b.r["models"]["fingerprints"]
        b.pipe = b.det = None
        gc.collect()
        b.export()
        if any(s in sections for s in ("graphs", "e2e")):
            b.build()
            if b.r["models"]["fingerprints"] != before:
                raise SystemExit("rebuilt pipeline has other weights than the first build")
    if "graphs" in sections:
        b.graphs()
    if "breakdown" in sections:
        b.breakdown()
    if "e2e" in sections:
        b.e2e()
    if "quantize" in sections:
        quantize_bench.run(b, PIPE_GRAPHS)
    if "export-ov-direct" in sections:
        b.pipe = b.det = None  # the last sections need the memory for their children
        gc.collect()
        b.export(formats="openvino", key="export-ov-direct", keep=False)
        shutil.rmtree(b.work / "export-ov-direct", ignore_errors=True)
    if "export-whatif" in sections:
        b.pipe = b.det = None
        gc.collect()
        b.whatif()
    b.log("done")


if __name__ == "__main__":
    main()
