"""Export ONE graph in a fresh process and measure the export itself (run by ``bench/run.py``, one child per graph).

    python bench/export_one.py --suite full --graph unet --signatures DIR --out DIR --formats onnx,openvino \
        --result result.json [--profile prof.txt] [--openvino-from program]

1. builds only the graph's module (``zoo.build_component``: same seed, same weights as the benchmark's pipeline);
2. replays the pipeline's first recorded call of that graph (``DIR/signatures.json`` + ``.inputs.npz``, written by
   ``Recording.save`` in the parent) inside ``shapetrace.record``: one recorded call, as a user's script has;
3. measures RSS right after building the model and right before the export, resets the kernel's high-water mark
   (``/proc/self/clear_refs``), then runs ``shapetrace.export_all(holder, out, graphs=[name], verify=False)``
   while a thread samples RSS every 20 ms; the export's phases (prepare, torch.export, ONNX writer, dim rename,
   onnx.checker, openvino.convert_model, openvino.save_model) come from the library's phase hook
   (``shapetrace._core.phases.listen``: the export marks its steps, nothing is patched);
4. writes ``result.json``: the manifest entry (``seconds``, ``peak_rss_bytes``, ``weights_bytes``, ``timings``,
   ``sizes``), VmHWM, the RSS marks, the per-phase peak RSS and a thinned RSS time series.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite.metrics import Sampler, reset_hwm, rss, rss_split, vm_hwm


def _export_py_version() -> dict:
    """Which export code this child ran: the repository HEAD and a hash of shapetrace/_export/*.py and
    _flow/export_all.py (they may be uncommitted; the key keeps its old name)."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    h = hashlib.sha1()
    for f in sorted([*(root / "shapetrace" / "_export").glob("*.py"), root / "shapetrace" / "_flow" / "export_all.py"]):
        h.update(f.read_bytes())
    digest = h.hexdigest()[:10]
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
    ap.add_argument("--openvino-from", default="auto", help="export_all(openvino_from=...) (section export-whatif)")
    a = ap.parse_args()

    import torch
    import zoo

    import shapetrace
    from shapetrace._record.recording import Recording

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

    from shapetrace._core import phases

    phase_log: list = []
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
    with phases.listen(phase_log.append):
        result = shapetrace.export_all(holder, a.out, recording=rec, formats=formats, graphs=[a.graph], verify=False,
                                       progress=False, overwrite=True, openvino_from=a.openvino_from)
    t1 = time.perf_counter()
    if prof is not None:
        prof.disable()
    sampler.stop()
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
    for p in sorted(phase_log, key=lambda p: p.start):
        phase_rows.append({"phase": p.name, "seconds": round(p.seconds, 3), "start_s": round(p.start - t0, 3),
                           "rss_start": p.rss_start, "peak_rss": max(p.rss_start, sampler.peak(p.start, p.end)),
                           "peak_anon": sampler.peak_anon(p.start, p.end)})
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
        "phases": phase_rows, "rss_series": series, "openvino_from": a.openvino_from, "export_py": _export_py_version(),
    }
    Path(a.result).write_text(json.dumps(out, indent=1, default=repr))
    print(json.dumps({k: out[k] for k in ("graph", "seconds", "peak_rss_bytes", "weights_bytes", "vm_hwm_bytes",
                                          "error")}, default=repr))


if __name__ == "__main__":
    main()
