"""An export into a folder whose filesystem fills up fails with a typed :class:`~shapetrace.DiskFullError` that says
how much space it needed and how much was free, leaves nothing of itself behind, and the earlier export in the
folder complete (it still verifies). The filesystem is a 4 MB tmpfs the test mounts (as root here, or in a user and
mount namespace of its own with ``unshare -rm``); the test is skipped, saying why, where neither is allowed."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _full_disk_child import SIZE, scenario

HERE = Path(__file__).resolve().parent

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


def _mount(folder: Path) -> str | None:
    """Mount a tmpfs of :data:`SIZE` at ``folder``; None when it is mounted, else why not."""
    if os.geteuid() != 0:
        return "not root"
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    return None if done.returncode == 0 else f"mount: {done.stderr.strip()}"


def _in_namespace(folder: Path) -> dict:
    """The scenario in a child process with user and mount namespaces of its own, where it may mount the tmpfs."""
    if shutil.which("unshare") is None:
        pytest.skip("cannot mount a small filesystem: not root, and no `unshare` for a user namespace")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["unshare", "-rm", sys.executable, str(HERE / "_full_disk_child.py"), "--mount",
                           str(folder)], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0 and not done.stdout.strip():  # the namespace or the mount was refused: nothing ran
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        pytest.skip(f"cannot mount a small filesystem: not root, and in `unshare -rm`: {last}")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def on_small_disk(tmp_path):
    folder = tmp_path / "small"
    why = _mount(folder)
    if why is not None:
        return _in_namespace(folder)
    try:
        return scenario(folder)
    finally:
        gc.collect()  # the runtimes verify opened may still map the files
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_full_disk_is_a_typed_error_saying_the_space_needed_and_the_earlier_export_stays(on_small_disk):
    r = on_small_disk
    over = r["over"]
    assert over is not None, "the larger export fit in the small filesystem: make it larger"
    assert over["type"] == "DiskFullError" and over["is_export_error"]
    # both formats: 2 x 6.3 MB of weights; the tmpfs holds 4.2 MB
    assert "ran out of disk space (m.onnx: No space left on device)" in over["message"]
    assert "It needs at least 12.6 MB there" in over["message"]
    assert " free of 4.2 MB: free at least " in over["message"]
    assert over["message"].endswith("or export into a folder on a larger disk. Nothing of this export was kept; "
                                    "the earlier export in the folder is intact.")
    # the earlier export, byte for byte, and nothing else: no staging or keep folder, no stray file
    assert r["after"] == r["before"] and "manifest.json" in r["after"]
    assert r["verified"], r["report"]
    # OpenVINO's writer says "iostream error", not ENOSPC: still a full disk, still nothing left
    fresh = r["fresh"]
    assert fresh is not None and fresh["type"] == "DiskFullError", fresh
    assert "(m.xml (OpenVINO, from torch): the disk filled up (RuntimeError: basic_ios::clear: iostream error))" \
        in fresh["message"]
    assert "It needs at least 6.3 MB there" in fresh["message"] and "the folder holds no export." in fresh["message"]
    assert r["fresh_files"] == {}
    assert r["left"] == ["fresh", "o"]  # the folder export_all made, empty
