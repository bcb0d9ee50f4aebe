"""The scenario of tests/test_full_disk.py, run on a small filesystem at FOLDER: a small export that fits, then a
larger one over it and another into a fresh folder, neither of which fits. :func:`scenario` returns what happened
as JSON-able data; run as a script (``--mount``: in a mount namespace of its own, ``unshare -rm``), it first mounts
a 4 MB tmpfs at FOLDER and prints that data as one JSON line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import torch

import shapetrace

SIZE = "4m"


def _holder(*layers: torch.nn.Module) -> object:
    holder = type("Holder", (), {})()
    holder.m = torch.nn.Sequential(*layers).eval()
    with torch.no_grad(), shapetrace.record(holder):
        holder.m(torch.ones(2, layers[0].in_features))
    return holder


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def _export(holder: object, out: Path, **kwargs: object) -> dict[str, str] | None:
    try:
        shapetrace.export_all(holder, out, progress=False, verify=False, **kwargs)
    except shapetrace.ShapetraceError as e:
        return {"type": type(e).__name__, "message": str(e), "is_export_error": isinstance(e, shapetrace.ExportError)}
    return None


def scenario(folder: Path) -> dict:
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    out = folder / "o"
    small = _holder(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    assert _export(small, out) is None, "the small export does not fit"
    before = _files(out)
    large = _holder(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 512))  # 6.3 MB of weights per format
    over = _export(large, out, overwrite=True)  # ONNX first: onnx.save raises ENOSPC
    after = _files(out)
    report = shapetrace.verify(out, backends=("onnxruntime", "openvino"), write=False)
    fresh = _export(large, folder / "fresh", formats=("openvino",))  # OpenVINO's save_model: "iostream error"
    return {"over": over, "fresh": fresh, "before": before, "after": after,
            "verified": bool(report) and len(report.checks) > 0, "report": str(report),
            "fresh_files": _files(folder / "fresh"), "left": sorted(p.name for p in folder.iterdir())}


if __name__ == "__main__":
    target = Path(sys.argv[-1])
    target.mkdir(parents=True, exist_ok=True)
    if "--mount" in sys.argv:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(target)], check=True)
    print(json.dumps(scenario(target)), flush=True)
