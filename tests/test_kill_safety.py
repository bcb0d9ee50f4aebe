"""An export killed at any moment leaves a complete export behind (the earlier one or the new one), the next export
cleans what the killed one left, and two exports never write into one folder at once."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import shapetrace
from shapetrace._flow.staging import staged

HERE = Path(__file__).resolve().parent
pytest.importorskip("onnxruntime")


def test_twenty_kills_at_random_moments_each_leave_a_complete_export(tmp_path):
    out = tmp_path / "o"
    rng = random.Random(0)
    kills = []
    for _ in range(20):
        child = subprocess.Popen([sys.executable, str(HERE / "_kill_child.py"), str(out)], stdout=subprocess.PIPE,
                                 text=True)
        assert child.stdout.readline().strip() == "ready"
        if not (out / "manifest.json").exists():  # a first complete export to protect
            assert child.stdout.readline().strip() == "exported"
        time.sleep(rng.uniform(0.0, 1.5))  # an export takes about a second here: anywhere inside one or two
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        kills.append(sorted(p.name for p in out.iterdir()))
        report = shapetrace.verify(out, backends=("onnxruntime",), write=False)
        assert report and report.checks, (kills[-1], str(report))
    # the next export cleans up whatever the kills left and stands alone
    holder = type("Holder", (), {})()
    holder.m = torch.nn.Linear(8, 4)
    with torch.no_grad(), shapetrace.record(holder):
        holder.m(torch.ones(2, 8))
    shapetrace.export_all(holder, out, overwrite=True, progress=False, formats=("onnx",))
    left = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert left == [], left
    # the kills did land inside exports (a staging or keep folder was left behind), not only between them
    assert any(any(n.startswith(".shapetrace-") for n in names) for names in kills), kills


def test_a_second_export_into_a_folder_being_written_is_refused(tmp_path):
    class Abandoned(Exception):
        pass

    out = tmp_path / "o"
    with pytest.raises(Abandoned):
        with staged(out, overwrite=False):  # an export in progress holds the folder ...
            with pytest.raises(shapetrace.ExportError, match="another export_all is writing into"):
                with staged(out, overwrite=True):  # ... so a second one is refused, not interleaved
                    pass
            raise Abandoned
    assert not list(out.glob(".shapetrace-staging-*"))  # and the abandoned one left nothing
    with pytest.raises(Abandoned):
        with staged(out, overwrite=False):  # the lock went with it: a new export may start
            raise Abandoned
