"""The HTML parity report: what it holds (from `verify --report`, on the tiny export of tests/_tiny.py), that it is
self-contained, and the numbers behind it (error histograms, worst elements, end-to-end images)."""

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch

from shapetrace._cli import main as cli
from shapetrace._report import e2e
from shapetrace._verify.compare import compare_arrays
from shapetrace._report.evidence import EDGES, EvidenceLog, summarize
from shapetrace._verify.report import ParityCheck

from _tiny import shift_linear_weights

PIL = pytest.importorskip("PIL.Image")


def _pngs(page):
    return [PIL.open(io.BytesIO(base64.b64decode(m))) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_verify_report_is_one_self_contained_page(tiny, tmp_path, capsys):
    path = tmp_path / "sub" / "report.html"
    assert cli.main(["verify", str(tiny), "--report", str(path)]) == cli.EXIT_OK
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"report: {path}"
    page = path.read_text()
    assert "<script" not in page and not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched
    parity = json.loads((tiny / "manifest.json").read_text())["parity"]
    assert page.count('<tr class="check ') == parity["num_checks"] == 9
    assert page.count('<tr class="check row-pass"') == 9 and 'id="verdict">PASS<' in page
    # one histogram per output (h, positive, total), every picture a real PNG
    assert page.count('class="histogram"') == 3
    images = _pngs(page)
    assert len(images) == 3 and all(im.size[0] > 100 and im.size[1] > 50 for im in images)
    # the signature and dims tables, the tolerance applied and the one needed
    assert "<code>[batch, seq, 8]</code>" in page and "<code>seq</code></td><td>1</td><td>64</td><td>5</td>" in page
    assert "1.00e-04 / 1.00e-03" in page and ">exact<" in page
    assert "No end-to-end images: this report was made from the export folder alone" in page


def test_a_failing_check_is_red_with_its_worst_elements(tiny, tmp_path, capsys):
    shift_linear_weights(tiny, 0.05)
    path = tmp_path / "report.html"
    assert cli.main(["verify", str(tiny), "--backends", "onnxruntime", "--report", str(path)]) == cli.EXIT_FAILED
    page = path.read_text()
    assert 'id="verdict">FAIL<' in page and '<tr class="check row-FAIL"' in page
    with np.load(tiny / "tiny.outputs.npz") as ref:
        h_ref = ref["h"]
    # every element of h moved by ~0.05 * |x + emb| summed: the worst element's reference value is printed
    worst = re.search(r'id="out-tiny-h".*?<span class="mono">\[(\d+), (\d+), (\d+)\] (\S+) vs (\S+) ', page, re.S)
    index = tuple(int(worst.group(i)) for i in (1, 2, 3))
    assert float(worst.group(5)) == pytest.approx(float(h_ref[index]), rel=1e-5)
    assert abs(float(worst.group(4)) - float(worst.group(5))) > 1e-3


def test_summarize_bins_every_element_and_ranks_like_compare():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 50)).astype(np.float32)
    got = ref.copy()
    got[0, :10] += 1e-6
    got[1, 7] += 0.5  # the worst
    got[2, 3] = np.nan
    result = compare_arrays(got, ref, atol=1e-4, rtol=1e-3)
    check = ParityCheck("g", "openvino", "torch", "example", "y", result)
    ev = summarize(check, got, ref, worst=3)
    assert ev.numel == 150 and ev.nonfinite == 1 and sum(ev.counts) == 11 and ev.exact == 138
    assert ev.exact + ev.nonfinite + sum(ev.counts) == ev.numel
    assert ev.worst[0].index == (2, 3) and result.worst_index == (2, 3)  # NaN first, as compare_arrays
    assert ev.worst[1].index == (1, 7) and ev.worst[1].abs_err == pytest.approx(0.5, rel=1e-6)
    # 0.5 lands in the bin of log10(0.5), the 1e-6 shifts near -6 (float32 rounding)
    assert ev.counts[int((np.log10(0.5) - EDGES[0]) // 0.25)] == 1
    assert sum(ev.counts[int((-6.5 - EDGES[0]) / 0.25):int((-5.5 - EDGES[0]) / 0.25)]) == 10
    assert summarize(check, got[:2], ref) is None  # shapes differ: nothing to bin
    log = EvidenceLog()
    log(check, got, ref)
    assert list(log.by_key()) == [("g", "openvino", "torch", "example", "y")]


class _Output(dict):  # diffusers' BaseOutput is an OrderedDict with attributes
    def __init__(self, images):
        super().__init__(images=images)
        self.images = images


def test_images_of_finds_images_in_pipeline_outputs():
    arr = np.linspace(0, 1, 2 * 16 * 16 * 3).reshape(2, 16, 16, 3)
    assert [a.shape for a in e2e.images_of(_Output(arr))] == [(16, 16, 3), (16, 16, 3)]
    pil = PIL.fromarray((arr[0] * 255).astype(np.uint8))
    (from_pil,) = e2e.images_of(pil)
    assert from_pil.max() <= 1.0 and np.abs(from_pil - arr[0]).max() < 1 / 255
    (from_tensor,) = e2e.images_of(torch.from_numpy(arr[:1]).permute(0, 3, 1, 2))  # NCHW
    assert from_tensor.shape == (16, 16, 3)
    assert e2e.images_of([{"label": "POSITIVE", "score": 0.5}]) == []  # a text pipeline's output
    assert e2e.images_of(np.zeros((2, 5))) == []
