"""Where a bench ran: the machine (CPU, ISA flags, memory, load) and the package versions, for the results' header."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "openvino", "diffusers", "transformers", "controlnet-aux",
            "numpy")


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def isa(flags: tuple[str, ...] = ISA_FLAGS) -> list[str]:
    """The vector / matrix extensions of ``flags`` this CPU has (/proc/cpuinfo)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in flags if f in have]
    return []


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "isa": isa()}
    with contextlib.suppress(AttributeError, OSError):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(("MemTotal", "SwapTotal")):
                k, v = line.split(":")
                info[k] = int(v.split()[0]) * 1024
    info["torch_threads"] = torch.get_num_threads()
    info["loadavg_start"] = os.getloadavg()
    info["python"] = platform.python_version()
    return info


def git_head() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False).stdout.strip()
    return ""


def versions() -> dict[str, str | None]:
    from importlib import metadata

    import shapetrace

    out: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["shapetrace"] = shapetrace.__version__
    out["shapetrace_git"] = git_head()
    return out
