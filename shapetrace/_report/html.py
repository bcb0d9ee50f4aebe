"""The parity report as one self-contained HTML file (inline CSS, images as ``data:`` URIs, no script, nothing
fetched): :func:`write_report`, used by ``shapetrace verify OUT --report FILE`` and ``shapetrace export ...
--report FILE``.

What it shows:

- the verdict, the export's object class, tools and folder, a summary row per graph;
- with a live pipeline whose output is an image (``export --report``), PyTorch's final image, each runtime's and an
  amplified difference map side by side, with their PSNR (:mod:`shapetrace._report.e2e`);
- per graph: the signature (inputs / outputs with dim names), the dims with their ranges, the constraints a call
  must respect (pruned), constants; then per output the error histogram of every runtime against its reference
  (:func:`shapetrace._report.plots.histogram_png`), and a table with the tolerance applied, the one that would have
  been needed and the worst elements;
- the recorded signature table, when the report was made from a recording, and verify's notes.

Matplotlib draws the pictures (``pip install 'shapetrace[report]'``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .e2e import RuntimeImages
from .evidence import ErrorEvidence, ErrorSample
from ..manifest import GraphEntry, Manifest
from .._record.recording import Recording
from .._verify.report import ParityCheck, ParityReport
from .plots import difference_png, histogram_png, image_png

__all__ = ["write_report", "render_html"]

_CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#1d1f23;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px} h4{font-size:14px;margin:14px 0 4px;font-family:monospace}
table{border-collapse:collapse;margin:6px 0 12px;font-size:12.5px} th,td{border:1px solid #e1e1e1;
padding:3px 7px;text-align:left;vertical-align:top} th{background:#f5f6f8} td.num{text-align:right;white-space:nowrap;
font-family:monospace} code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.pass{color:#17752f;font-weight:600} .FAIL,.ERROR{color:#b3261e;font-weight:700}
tr.row-FAIL td,tr.row-ERROR td{background:#fdecea} .badge{display:inline-block;padding:3px 10px;border-radius:12px;
color:#fff;font-weight:600} .badge.ok{background:#17752f} .badge.bad{background:#b3261e}
.meta{color:#555;font-size:12.5px} .e2e{display:flex;gap:14px;flex-wrap:wrap;margin-bottom:10px} .e2e figure{margin:0;
text-align:center;font-size:12px} .e2e img{image-rendering:pixelated;border:1px solid #ccc;width:256px}
img.histogram{max-width:100%;border:1px solid #eee} pre{background:#f7f7f9;padding:10px;overflow:auto;
font-size:11.5px} .note{color:#6b4e00;background:#fff8e1;padding:6px 10px;border-radius:4px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(x: float | None, fmt: str = ".2e") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return "0" if x == 0 else format(x, fmt)


def _img(png: bytes, alt: str, cls: str) -> str:
    return (f'<img class="{cls}" alt="{_e(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">')


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "", numeric: Iterable[int] = (),
           row_classes: Sequence[str] | None = None) -> str:
    """Cells are HTML already (escape before)."""
    numeric = set(numeric)
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes else ""
        out.append(f"<tr{rc}>" + "".join(f'<td class="num">{c}</td>' if j in numeric else f"<td>{c}</td>"
                                          for j, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _shape(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


# ---------------------------------------------------------------------------------------------------- sections
def _summary(manifest: Manifest, report: ParityReport | None) -> str:
    rows, classes = [], []
    for g in manifest.graphs:
        checks = [c for c in (report.checks if report is not None else ()) if c.graph == g.name]
        failed = [c for c in checks if not c]
        needed = [c.result.needed_atol for c in checks if c.result is not None and not c.result.exact]
        if g.error is not None:
            verdict = "ERROR"
        elif not checks:
            verdict = "not checked"
        else:
            verdict = "FAIL" if failed else "pass"
        classes.append(f"graph-row row-{verdict.replace(' ', '-')}")
        rows.append((f'<a href="#graph-{_e(g.name)}">{_e(g.name)}</a>', _e(g.cls.rsplit(":", 1)[-1]),
                     str(len(g.outputs)), str(len(checks)), str(len(failed)), _num(max(needed) if needed else None),
                     ", ".join(_e(d) for d in g.dims) or "static", f'<span class="{verdict}">{verdict}</span>'))
    return _table(("graph", "class", "outputs", "checks", "failed", "worst needed atol", "dims", "verdict"), rows,
                  "summary", numeric=(2, 3, 4, 5), row_classes=classes)


def _images(images: Sequence[RuntimeImages] | None, note: str) -> str:
    out = ["<h2>End to end: the pipeline's final output</h2>"]
    if not images:
        out.append(f'<p class="note">{_e(note)}</p>')
        return "".join(out)
    ref = images[0]
    out.append('<p class="meta">The whole pipeline run again with the same call and seed, every exported graph '
               'served by the runtime (<code>shapetrace.load</code>); the difference map is amplified so that the '
               'largest difference is full scale.</p>')
    for i, reference in enumerate(ref.images):
        torch_png = image_png(reference)
        for run in images[1:]:
            out.append(f'<div class="e2e" id="e2e-{_e(run.name)}-{i}"><figure>{_img(torch_png, f"torch image {i}", "e2e")}'
                       f"<figcaption>PyTorch (reference) #{i}</figcaption></figure>")
            if run.error is not None or i >= len(run.images):
                out.append(f'<figure><p class="ERROR">{_e(run.name)}: {_e(run.error or "no image")}</p></figure></div>')
                continue
            diff, factor = difference_png(run.images[i], reference)
            out.append(f'<figure>{_img(image_png(run.images[i]), f"{run.name} image {i}", "e2e")}<figcaption>'
                       f"{_e(run.name)}: PSNR {_num(run.psnr, '.1f')} dB, max abs {_num(run.max_abs)}"
                       f'</figcaption></figure><figure>{_img(diff, f"{run.name} difference {i}", "e2e diff")}'
                       f"<figcaption>|{_e(run.name)} - torch| x {factor:.3g}</figcaption></figure></div>")
    return "".join(out)


def _signature(g: GraphEntry) -> str:
    inputs = _table(("input", "dtype", "shape", "example", "values"),
                    [(f"<code>{_e(i.name)}</code>", _e(i.dtype), f"<code>{_e(_shape(i.shape))}</code>",
                      _e(_shape(i.example_shape)), _e(f"{i.value_range[0]}..{i.value_range[1]}")
                      if i.value_range else "") for i in g.inputs], "signature")
    outputs = _table(("output", "dtype", "shape", "example"),
                     [(f"<code>{_e(o.name)}</code>", _e(o.dtype), f"<code>{_e(_shape(o.shape))}</code>",
                       _e(_shape(o.example_shape))) for o in g.outputs], "signature")
    dims = _table(("dim", "min", "max", "example", "appears in"),
                  [(f"<code>{_e(n)}</code>", str(d.min), "-" if d.max is None else str(d.max), str(d.example),
                    _e(", ".join(d.sources))) for n, d in g.dims.items()], "dims") if g.dims else \
        "<p>no dynamic dim (static)</p>"
    parts = [inputs, outputs, "<h4>dims</h4>", dims]
    if g.constraints:
        hidden = len(set(g.guards) - set(g.constraints))
        more = f" ({hidden} more guards implied by these and the ranges)" if hidden else ""
        parts.append(f"<h4>constraints{_e(more)}</h4><ul class=\"constraints\">"
                     + "".join(f"<li><code>{_e(c)}</code></li>" for c in g.constraints) + "</ul>")
    if g.constants:
        parts.append("<p class=\"meta\">constants: " + ", ".join(f"<code>{_e(k)}={_e(repr(v))}</code>"
                                                                  for k, v in g.constants.items()) + "</p>")
    return "".join(parts)


def _worst(samples: Sequence[ErrorSample]) -> str:
    return "<br>".join(f"<span class=\"mono\">[{_e(', '.join(map(str, s.index)))}] {s.got:.6g} vs {s.ref:.6g} "
                       f"(|d| {_num(s.abs_err)})</span>" for s in samples[:3]) or "-"


def _output(graph: str, output: str, checks: Sequence[ParityCheck], evidence: Mapping[tuple, ErrorEvidence]) -> str:
    evs = [evidence[k] for k in ((c.graph, c.backend, c.reference, c.input_set, c.output) for c in checks)
           if k in evidence]
    parts = [f'<div class="output" id="out-{_e(graph)}-{_e(output)}"><h4>{_e(output)}</h4>']
    if evs:
        parts.append(_img(histogram_png(evs, f"{graph} : {output}"), f"error histogram of {graph} {output}",
                          "histogram"))
    rows, classes = [], []
    for c in checks:
        r = c.result
        ev = evidence.get((c.graph, c.backend, c.reference, c.input_set, c.output))
        sizes = ", ".join(f"{k}={v}" for k, v in c.sizes.items())
        if r is None:
            rows.append((_e(c.backend), _e(c.reference), _e(c.input_set), _e(sizes), "-", "-", "-", "-", "-", "-",
                         _e(c.message), f'<span class="{c.verdict}">{c.verdict}</span>'))
        else:
            tol = "exact" if r.exact else f"{_num(r.atol)} / {_num(r.rtol)}"
            rows.append((_e(c.backend), _e(c.reference), _e(c.input_set), _e(sizes), _num(r.max_abs),
                         _num(r.max_rel), _num(r.cosine, ".6f"), tol, _num(r.needed_atol), _num(r.needed_rtol),
                         _worst(ev.worst) if ev else _e(r.message or "-"),
                         f'<span class="{c.verdict}">{c.verdict}</span>'))
        classes.append(f"check row-{c.verdict}")
    parts.append(_table(("backend", "vs", "inputs", "dim sizes", "max abs", "max rel", "cosine", "atol / rtol applied",
                         "atol needed", "rtol needed", "worst elements (index: got vs ref)", "verdict"), rows,
                        "checks", numeric=(4, 5, 6, 8, 9), row_classes=classes))
    parts.append("</div>")
    return "".join(parts)


def _graph(g: GraphEntry, report: ParityReport | None, evidence: Mapping[tuple, ErrorEvidence]) -> str:
    parts = [f'<section class="graph" id="graph-{_e(g.name)}"><h2>graph {_e(g.name)}</h2>'
             f'<p class="meta">{_e(g.label)} &middot; {_e(g.cls)}'
             + (f" &middot; exported in {g.seconds:.1f}s" if g.seconds else "") + "</p>"]
    if g.error is not None:
        parts.append(f'<p class="ERROR">not exported: {_e(g.error)}</p></section>')
        return "".join(parts)
    parts.append("<h3>signature</h3>" + _signature(g))
    checks = [c for c in (report.checks if report is not None else ()) if c.graph == g.name]
    parts.append("<h3>parity</h3>")
    if not checks:
        parts.append('<p class="note">not verified</p>')
    for c in (c for c in checks if c.output in ("*", "-", "")):
        parts.append(f'<p class="ERROR">{_e(c.where)}: {_e(c.message)}</p>')
    for o in g.outputs:
        mine = [c for c in checks if c.output == o.name]
        if mine:
            parts.append(_output(g.name, o.name, mine, evidence))
    parts.append("</section>")
    return "".join(parts)


def _genai(manifest: Manifest, report: ParityReport | None, evidence: Mapping[tuple, ErrorEvidence]) -> str:
    """The GenAI folder's checks (``export_all(..., genai=True)``): run in OpenVINO GenAI, its own backend."""
    note = manifest.genai or {}
    if "pipeline" not in note:
        return ""
    graph = f"{note['dir']}/"
    checks = [c for c in (report.checks if report is not None else ()) if c.graph == graph]
    parts = [f'<section class="graph" id="genai"><h2>OpenVINO GenAI folder {_e(graph)}</h2>'
             f'<p class="meta">{_e(note["pipeline"])} &middot; from graph {_e(note.get("graph", "?"))}</p>']
    if not checks:
        parts.append('<p class="note">not checked in GenAI (verify with the live object checks it)</p>')
    for c in (c for c in checks if c.output in ("*", "-", "")):
        parts.append(f'<p class="ERROR">{_e(c.where)}: {_e(c.message)}</p>')
    for output in dict.fromkeys(c.output for c in checks if c.output not in ("*", "-", "")):
        parts.append(_output(graph, output, [c for c in checks if c.output == output], evidence))
    parts.append("</section>")
    return "".join(parts)


def render_html(manifest: Manifest, report: ParityReport | None, *, out_dir: str = "",
                evidence: Sequence[ErrorEvidence] = (), images: Sequence[RuntimeImages] | None = None,
                images_note: str = "", recording: Recording | None = None, title: str = "") -> str:
    """The report page as a string (see the module docstring)."""
    ok = report is not None and bool(report) and bool(manifest.graphs) and all(g.ok for g in manifest.graphs)
    verdict = report.summary() if report is not None else "parity: not verified"
    failed = [g.name for g in manifest.graphs if not g.ok]
    if failed:
        verdict += f"; not exported: {', '.join(failed)}"
    by_key = {e.key: e for e in evidence}
    tools = ", ".join(f"{k} {v}" for k, v in manifest.tools.items() if v)
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>{_e(title or 'shapetrace parity report')}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(title or 'shapetrace parity report')}</h1>",
             f'<p><span class="badge {"ok" if ok else "bad"}" id="verdict">{"PASS" if ok else "FAIL"}</span> '
             f"{_e(verdict)}</p>",
             f'<p class="meta">export of <code>{_e(manifest.object_class or "?")}</code> in <code>{_e(out_dir)}'
             f"</code> &middot; made {_e(manifest.created or '?')} &middot; report "
             f"{_e(_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'))}<br>{_e(tools)}</p>",
             "<h2>Graphs</h2>", _summary(manifest, report),
             _images(images, images_note or "No end-to-end images: this report was made from the export folder "
                     "alone (shapetrace export --report runs the live pipeline on each runtime)."),
             *(_graph(g, report, by_key) for g in manifest.graphs), _genai(manifest, report, by_key)]
    if recording is not None:
        parts.append(f"<h2>Recorded signatures</h2><pre class=\"recording\">{_e(str(recording))}</pre>")
    if report is not None and report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(path: str | Path, manifest: Manifest, report: ParityReport | None, **kwargs: Any) -> Path:
    """Render :func:`render_html` and write it to ``path`` (parent folders made); returns the path."""
    path = Path(path)
    text = render_html(manifest, report, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
