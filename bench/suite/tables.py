"""One renderer per section: ``results.json`` (a dict, so ``--render`` works from the file alone) -> the lines of
its part of RESULTS.md; empty when the section did not run."""

from __future__ import annotations

from .graphs import VARIANTS
from .metrics import fmt_db, gb, med


def overhead(r: dict) -> list[str]:
    """Section 1: recording overhead."""
    L: list[str] = []
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
    return L


def export(r: dict) -> list[str]:
    """Section 2: export (one child per graph), with its per-phase details."""
    L: list[str] = []
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
    return L


def export_other(r: dict) -> list[str]:
    """The other export runs: IR straight from torch, what-ifs, an earlier export."""
    L: list[str] = []
    extra = [k for k in r if k in ("export-previous", "export-ov-direct") or k.startswith("export-whatif")]
    for key in extra:
        title = ("IR straight from torch (`formats=(\"openvino\",)`: `openvino.convert_model(module)`, no ONNX)"
                 if key == "export-ov-direct" else
                 f"Before: {r.get('export-previous-note', 'an earlier export.py')}" if key == "export-previous" else
                 f"What-if `{key[len('export-whatif-'):]}`: `export_all(openvino_from=...)` in the child "
                 f"(section `export-whatif`), then `shapetrace.verify` (f32, ONNX Runtime + OpenVINO)")
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
    return L


def graphs(r: dict) -> list[str]:
    """Section 3: per graph inference, and the e2e estimate from it."""
    L: list[str] = []
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
    return L


def breakdown(r: dict) -> list[str]:
    """Where a PyTorch run spends its time."""
    L: list[str] = []
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
    return L


def e2e(r: dict) -> list[str]:
    """Section 4: end to end on the exported graphs."""
    L: list[str] = []
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
    return L
