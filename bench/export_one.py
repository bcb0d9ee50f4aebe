"""Export ONE graph in a fresh process and measure the export itself (run by ``bench/run.py``, one child per graph).

    python bench/export_one.py --suite full --graph unet --signatures DIR --out DIR --formats onnx,openvino \
        --result result.json [--profile prof.txt]

1. builds only the graph's module (``zoo.build_component``: same seed, same weights as the benchmark's pipeline);
2. replays the pipeline's first recorded call of that graph (``DIR/signatures.json`` + ``.inputs.npz``, written by
   ``Recording.save`` in the parent) inside ``shapetrace.record``: one recorded call, as a user's script has;
3. measures RSS right after building the model and right before the export, resets the kernel's high-water mark
   (``/proc/self/clear_refs``), then runs ``shapetrace.export_all(holder, out, graphs=[name], verify=False)``
   while a thread samples RSS every 20 ms; the export's phases (prepare, torch.export, ONNX writer, dim rename,
   onnx.checker, openvino.convert_model, openvino.save_model) are timed by wrapping those functions in this
   process only (shapetrace's code is not changed);
4. writes ``result.json``: the manifest entry (``seconds``, ``peak_rss_bytes``, ``weights_bytes``, ``timings``,
   ``sizes``), VmHWM, the RSS marks, the per-phase peak RSS and a thinned RSS time series.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import sys
import threading
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def rss_split() -> tuple[int, int]:
    """(resident, resident file-backed + shmem): statm's 2nd and 3rd fields; anonymous = the difference."""
    with open("/proc/self/statm") as f:
        parts = f.read().split()
    return int(parts[1]) * PAGE, int(parts[2]) * PAGE


def vm_hwm() -> int | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler:
    """RSS every ``interval`` s in a thread: (t, rss) pairs."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.anon: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total, shared = rss_split()
            self.samples.append((time.perf_counter(), total))
            self.anon.append(total - shared)
            self._stop.wait(self.interval)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        total, shared = rss_split()
        self.samples.append((time.perf_counter(), total))
        self.anon.append(total - shared)

    def peak(self, t0: float = float("-inf"), t1: float = float("inf")) -> int:
        vals = [r for t, r in self.samples if t0 <= t <= t1]
        return max(vals) if vals else 0

    def peak_anon(self, t0: float = float("-inf"), t1: float = float("inf")) -> int:
        vals = [a for (t, _), a in zip(self.samples, self.anon) if t0 <= t <= t1]
        return max(vals) if vals else 0


class Phases:
    """Wraps functions so each call is logged as (phase, start, end, rss at start)."""

    def __init__(self) -> None:
        self.log: list[dict] = []
        self._undo: list = []

    def wrap(self, owner: object, attr: str, phase: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start, r0 = time.perf_counter(), rss()
            try:
                return original(*args, **kwargs)
            finally:
                self.log.append({"phase": phase, "start": start, "end": time.perf_counter(), "rss_start": r0})

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)


# ------------------------------------------------------------------------------------------ what-if patches
# Each replaces one step of shapetrace/writers.py in this child process only, to measure a proposed change before
# anyone edits export.py. The originals are wrapped, so everything else export.py does stays as it is.
def _patch_onnx_external_data(export_mod) -> None:
    """Every ONNX file saved with its weights as external data (``<stem>.onnx.data``), not only above 2 GB.

    Then ``onnx.checker.check_model(path)`` reads the graph only, and OpenVINO's ``read_model`` maps the weights
    from the file instead of parsing them out of a protobuf.
    """
    from torch.onnx._internal.exporter import _onnx_program

    orig = _onnx_program.ONNXProgram.save

    def save(self, destination, *, include_initializers=True, keep_initializers_as_inputs=False,
             external_data=None):
        return orig(self, destination, include_initializers=include_initializers,
                    keep_initializers_as_inputs=keep_initializers_as_inputs, external_data=True)

    _onnx_program.ONNXProgram.save = save


def _force_openvino_source(export_mod, source: str) -> None:
    import inspect

    orig = export_mod.write_openvino
    params = inspect.signature(orig).parameters

    def _write_openvino(onnx_path, plan, xml_path, compress_to_fp16, *args, **kwargs):
        if "source" in params:
            kwargs.pop("source", None)
            args = ()
            kwargs["source"] = source
            if onnx_path is None and source == "onnx":
                raise RuntimeError("ov-from-onnx needs 'onnx' in formats")
            return orig(onnx_path, plan, xml_path, compress_to_fp16, **kwargs)
        # older export.py: IR from ONNX when the ONNX file exists, else from torch
        return orig(onnx_path if source == "onnx" else None, plan, xml_path, compress_to_fp16, *args, **kwargs)

    export_mod.write_openvino = _write_openvino


def _patch_ov_from_exported_program(export_mod) -> None:
    """IR converted from the ExportedProgram that export.py already made (``ov.convert_model(ep)``): no second trace
    of the module. The program is kept alive until the IR step (export.py frees it before that step today)."""
    import openvino as ov
    import torch

    stash: dict = {}
    orig_export = torch.export.export

    def export(*args, **kwargs):
        ep = orig_export(*args, **kwargs)
        stash["ep"] = ep
        return ep

    torch.export.export = export

    def _write_openvino(onnx_path, plan, xml_path, compress_to_fp16, *args, **kwargs):
        ep = stash.pop("ep")
        model = ov.convert_model(ep)
        for port, name in zip(model.inputs, plan.input_names):
            port.get_tensor().set_names({name})
        for port, name in zip(model.outputs, plan.output_names):
            port.get_tensor().set_names({name})
        ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
        del model, ep
        return {"openvino_from": "exported_program", "compress_to_fp16": compress_to_fp16}

    export_mod.write_openvino = _write_openvino


PATCHES = {
    "ov-from-exported-program": _patch_ov_from_exported_program,
    "onnx-external-data": _patch_onnx_external_data,
    "ov-from-onnx": lambda m: _force_openvino_source(m, "onnx"),
    "ov-from-torch": lambda m: _force_openvino_source(m, "torch"),
}


def _export_py_version() -> dict:
    """Which export.py this child ran: the repository HEAD and the file's own hash (it may be uncommitted)."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    digest = hashlib.sha1((root / "shapetrace" / "export.py").read_bytes()).hexdigest()[:10]
    return {"head": head, "export_py_sha1": digest}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", required=True)
    ap.add_argument("--graph", required=True)
    ap.add_argument("--signatures", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--formats", default="onnx,openvino")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--result", required=True)
    ap.add_argument("--profile", default=None, help="write a cProfile summary of the export here")
    ap.add_argument("--patch", action="append", default=[], choices=sorted(PATCHES),
                    help="what-if: replace an export.py step in this process only (see PATCHES)")
    a = ap.parse_args()

    import torch
    import shapetrace
    from shapetrace._flow import export_all as export_mod
    from shapetrace._export import writers as writers_mod
    from shapetrace._record.recording import Recording

    import zoo

    torch.set_grad_enabled(False)
    marks = {"after_imports": rss()}
    module_path, _ = zoo.GRAPHS[a.graph]
    component = module_path if a.graph == "body_estimation.model" else module_path.split(".")[0]
    t = time.perf_counter()
    module = zoo.build_component(a.suite, component, a.seed)
    build_s = time.perf_counter() - t
    gc.collect()
    marks["after_build"] = rss()
    holder = zoo.Holder(module_path, module)

    parent_rec = Recording.load(a.signatures)
    g = parent_rec[a.graph]
    args, kwargs = g.example_inputs()
    method = g.method
    with shapetrace.record(holder) as rec:
        target = getattr(holder, module_path.split(".")[0])
        for part in module_path.split(".")[1:]:
            target = getattr(target, part)
        fn = target if method == "forward" else getattr(target, method)
        with torch.no_grad():
            out = fn(*args, **kwargs)
    del out, args, kwargs, parent_rec, g
    gc.collect()
    marks["after_record"] = rss()

    phases = Phases()
    import onnx
    import openvino

    from shapetrace._export import tracing

    phases.wrap(tracing, "prepare", "prepare")  # flat.prepare as the export calls it (tracing.trace)
    phases.wrap(torch.export, "export", "torch.export")
    phases.wrap(writers_mod, "write_onnx", "onnx (total)")
    phases.wrap(torch.onnx, "export", "torch.onnx.export")
    from torch.onnx._internal.exporter import _onnx_program

    phases.wrap(writers_mod, "_rename_onnx_dims", "rename dims (onnx load+save)")
    phases.wrap(writers_mod, "_rename_ir_dims", "rename dims (in memory)")
    phases.wrap(_onnx_program.ONNXProgram, "save", "ONNXProgram.save")
    phases.wrap(onnx.checker, "check_model", "onnx.checker")
    phases.wrap(writers_mod, "write_openvino", "openvino (total)")
    phases.wrap(openvino, "convert_model", "openvino.convert_model")
    phases.wrap(openvino.Core, "read_model", "openvino.Core.read_model")
    phases.wrap(openvino, "save_model", "openvino.save_model")

    for name in a.patch:
        PATCHES[name](writers_mod)
    formats = tuple(f for f in a.formats.split(",") if f)
    gc.collect()
    hwm_reset = reset_hwm()
    marks["before_export"] = rss()
    anon_before = marks["before_export"] - rss_split()[1]
    sampler = Sampler().start()
    prof = None
    if a.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    result = shapetrace.export_all(holder, a.out, recording=rec, formats=formats, graphs=[a.graph], verify=False,
                                   progress=False, overwrite=True)
    t1 = time.perf_counter()
    if prof is not None:
        prof.disable()
    sampler.stop()
    phases.restore()
    marks["after_export"] = rss()
    hwm = vm_hwm()

    if prof is not None:
        import io
        import pstats

        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("cumulative").print_stats(45)
        st.sort_stats("tottime").print_stats(30)
        Path(a.profile).write_text(buf.getvalue())

    entry = result.graphs[a.graph].entry.to_json()  # the manifest entry as JSON (keys as in manifest.json)
    phase_rows = []
    for p in sorted(phases.log, key=lambda p: p["start"]):
        phase_rows.append({"phase": p["phase"], "seconds": round(p["end"] - p["start"], 3),
                           "start_s": round(p["start"] - t0, 3), "rss_start": p["rss_start"],
                           "peak_rss": max(p["rss_start"], sampler.peak(p["start"], p["end"])),
                           "peak_anon": sampler.peak_anon(p["start"], p["end"])})
    step = max(1, len(sampler.samples) // 400)
    series = [(round(t - t0, 2), r, a) for (t, r), a in list(zip(sampler.samples, sampler.anon))[::step]]
    weights = entry.get("weights_bytes") or 0
    out = {
        "graph": a.graph, "suite": a.suite, "formats": list(formats), "build_seconds": round(build_s, 3),
        "fingerprint": zoo.fingerprint(module),
        "error": entry.get("error"),
        "seconds": entry.get("seconds"), "wall_seconds": round(t1 - t0, 3),
        "peak_rss_bytes": entry.get("peak_rss_bytes"), "weights_bytes": weights,
        "vm_hwm_bytes": hwm if hwm_reset else None, "vm_hwm_is_export_only": hwm_reset,
        "sampled_peak_rss_bytes": sampler.peak(),
        "sampled_peak_anon_bytes": sampler.peak_anon(),
        "anon_before_export": anon_before,
        "rss_marks": marks,
        "timings": entry.get("timings"), "sizes": entry.get("sizes"), "tools": entry.get("tools"),
        "dims": list((entry.get("dims") or {}).keys()), "specialized": entry.get("specialized"),
        "phases": phase_rows, "rss_series": series, "patches": a.patch, "export_py": _export_py_version(),
    }
    Path(a.result).write_text(json.dumps(out, indent=1, default=repr))
    print(json.dumps({k: out[k] for k in ("graph", "seconds", "peak_rss_bytes", "weights_bytes", "vm_hwm_bytes",
                                          "error")}, default=repr))


if __name__ == "__main__":
    main()
