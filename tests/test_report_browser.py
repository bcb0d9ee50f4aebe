"""The HTML report rendered in a real browser (headless Chromium, `make browser`): `shapetrace export --report` on a
saved tiny ControlNet pipeline, then assertions on the rendered page -- every picture decoded (naturalWidth > 0),
one histogram per output, the end-to-end images of both runtimes, one table row per parity check, no console
error -- and two screenshots, the top and the first parity section (copied to $SHAPETRACE_SCREENSHOT and
...-parity.png when set: `make report-screenshot` -> docs/report.png, docs/report-parity.png).

Marked `browser` (not in the default run): `make test-browser`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from browser import Chromium, chromium_path

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from shapetrace.testing import controlnet_pipeline

    root = tmp_path_factory.mktemp("report-browser")
    controlnet_pipeline().save_pretrained(root / "controlnet")
    report = root / "report.html"
    proc = subprocess.run([sys.executable, "-m", "shapetrace", "export", str(root / "controlnet"), str(root / "out"),
                           "--report", str(report)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "out", report, proc.stdout


@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed: `make browser` installs Debian's "
                                                     "chromium package (apt-get)")
def test_the_report_renders_in_chromium(exported, tmp_path):
    out, report, stdout = exported
    manifest = json.loads((out / "manifest.json").read_text())
    outputs = sum(len(g["outputs"]) for g in manifest["graphs"])
    assert "  openvino: PSNR " in stdout and "  onnxruntime: PSNR " in stdout
    with Chromium(width=1280, height=1700) as browser:
        browser.open(report.as_uri())
        page = browser.evaluate("""(() => {
            const imgs = Array.from(document.images);
            return {
              images: imgs.map(i => ({cls: i.className, ok: i.complete && i.naturalWidth > 0,
                                      w: i.naturalWidth, shown: i.getBoundingClientRect().width})),
              checks: document.querySelectorAll('table.checks tr.check').length,
              failed: document.querySelectorAll('tr.row-FAIL, tr.row-ERROR').length,
              graphs: Array.from(document.querySelectorAll('section.graph h2')).map(h => h.textContent),
              verdict: document.getElementById('verdict').textContent,
              captions: Array.from(document.querySelectorAll('.e2e figcaption')).map(f => f.textContent),
              width: document.documentElement.scrollWidth,
            };
        })()""")
        shot = browser.screenshot(tmp_path / "report.png")
        top = browser.evaluate("(() => { const o = document.querySelector('section.graph .output');"
                               " window.scrollTo(0, o.getBoundingClientRect().top + window.scrollY - 8);"
                               " return window.scrollY; })()")
        parity_shot = browser.screenshot(tmp_path / "report-parity.png")
        errors = list(browser.errors)
    assert errors == []
    assert page["verdict"] == "PASS"
    assert page["graphs"] == [f"graph {g['name']}" for g in manifest["graphs"]]
    assert page["checks"] == manifest["parity"]["num_checks"] and page["failed"] == 0
    assert all(i["ok"] and i["shown"] > 0 for i in page["images"]), page["images"]
    histograms = [i for i in page["images"] if i["cls"] == "histogram"]
    e2e = [i for i in page["images"] if i["cls"].startswith("e2e")]
    assert len(histograms) == outputs
    assert len(e2e) == 6 and all(i["w"] == 64 for i in e2e)  # (torch, runtime, difference) x 2 runtimes, 64x64
    assert sum("PSNR" in c for c in page["captions"]) == 2
    assert page["width"] <= 1280  # nothing runs off the side
    from PIL import Image

    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.shape == (1700, 1280) and pixels.std() > 20  # a page, not a blank
    assert top > 1000  # scrolled down to the first output's histogram and checks
    target = os.environ.get("SHAPETRACE_SCREENSHOT")
    if target:
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
        shutil.copyfile(parity_shot, target.with_name(f"{target.stem}-parity{target.suffix}"))
