"""The export that tests/test_kill_safety.py kills: records a tiny module once, says "ready", then exports it into
OUT again and again (overwrite=True) until it is killed."""

from __future__ import annotations

import sys
import warnings

import torch

import shapetrace


def main(out: str) -> None:
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    holder = type("Holder", (), {})()
    holder.m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    with torch.no_grad(), shapetrace.record(holder):
        holder.m(torch.ones(2, 8))
    print("ready", flush=True)
    while True:
        shapetrace.export_all(holder, out, overwrite=True, progress=False, verify=False, formats=("onnx",),
                              skeleton=False)
        print("exported", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
