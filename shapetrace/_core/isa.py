"""Which x86 instruction set OpenVINO's CPU kernels run with here: the figure every int8 measurement is read with.

int8 arithmetic is not the same on every x86 CPU. With VNNI (``avx512_vnni``, or ``avx_vnni`` on AVX2 CPUs) a u8 x s8
dot product accumulates in 32 bits. Without it, OpenVINO's kernels multiply with ``vpmaddubsw``, whose 16-bit
intermediate *saturates* when two products of full-range 8-bit values are summed: an int8 IR whose weights use all
8 bits loses most of its accuracy there (a tiny UNet: 20 dB -> 8 dB). NNCF's overflow fix (weights quantized to 7
bits) is exact on both, so :mod:`shapetrace._flow.quantize` always applies it.

oneDNN -- and OpenVINO's CPU plugin, built on it -- can be held below the CPU's best instruction set by the
environment variable ``ONEDNN_MAX_CPU_ISA`` (read once, when the library loads): ``AVX512_CORE`` on an AVX-512 CPU
runs the int8 kernels without VNNI, as an AVX2-only CPU does. :func:`cpu_isa` reports the set in effect (the CPU's
flags under that cap); :func:`without_vnni` names the cap that takes VNNI away on this CPU, for tests and checks
that must hold on both kinds of CPU. (``AVX2`` is the literal cap, but OpenVINO 2026.4 crashes in some of its
kernels with it on AVX-512 CPUs, while ``AVX512_CORE`` keeps the vector width and drops only VNNI and later.)
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from typing import Mapping

__all__ = ["CpuIsa", "ISA_ENV", "cpu_isa", "cpu_features", "without_vnni"]

#: The environment variables oneDNN reads for its cap (the first set one wins).
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")

#: oneDNN's instruction-set levels, each as the features it needs (``cpu_isa_traits.hpp``: ``avx2_vnni`` is not
#: part of ``avx512_core_vnni``), weakest first.
LEVELS: Mapping[str, frozenset[str]] = {
    "sse41": frozenset({"sse41"}),
    "avx": frozenset({"sse41", "avx"}),
    "avx2": frozenset({"sse41", "avx", "avx2"}),
    "avx2_vnni": frozenset({"sse41", "avx", "avx2", "avx2_vnni"}),
    "avx2_vnni_2": frozenset({"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2"}),
    "avx512_core": frozenset({"sse41", "avx", "avx2", "avx512"}),
    "avx512_core_vnni": frozenset({"sse41", "avx", "avx2", "avx512", "vnni512"}),
    "avx512_core_bf16": frozenset({"sse41", "avx", "avx2", "avx512", "vnni512", "bf16"}),
    "avx512_core_fp16": frozenset({"sse41", "avx", "avx2", "avx512", "vnni512", "bf16", "fp16"}),
    "avx512_core_amx": frozenset({"sse41", "avx", "avx2", "avx512", "vnni512", "bf16", "amx"}),
    "avx512_core_amx_fp16": frozenset({"sse41", "avx", "avx2", "avx512", "vnni512", "bf16", "fp16", "amx"}),
}

#: /proc/cpuinfo flags -> the features of :data:`LEVELS` (all flags of a tuple needed).
_FLAGS: Mapping[str, tuple[str, ...]] = {
    "sse41": ("sse4_1",), "avx": ("avx",), "avx2": ("avx2", "fma"), "avx2_vnni": ("avx_vnni",),
    "avx2_vnni_2": ("avx_vnni_int8",), "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "vnni512": ("avx512_vnni",), "bf16": ("avx512_bf16",), "fp16": ("avx512_fp16",),
    "amx": ("amx_int8", "amx_bf16", "amx_tile"),
}


@dataclass(frozen=True)
class CpuIsa:
    """The instruction set in effect: ``name`` (oneDNN's level, lower case; ``"unknown"`` off x86 Linux),
    ``vnni`` (int8 dot products accumulate in 32 bits; None when unknown), ``cpu`` (the CPU's own best level) and
    ``cap`` (the ``ONEDNN_MAX_CPU_ISA`` value holding it lower, or None)."""

    name: str
    vnni: bool | None
    cpu: str
    cap: str | None = None

    def __str__(self) -> str:
        int8 = {True: "int8 with VNNI", False: "int8 without VNNI", None: "int8 kernels unknown"}[self.vnni]
        capped = f", capped by ONEDNN_MAX_CPU_ISA={self.cap}; the CPU has {self.cpu}" if self.name != self.cpu else ""
        return f"{self.name} ({int8}{capped})"

    def to_json(self) -> dict:
        return {"name": self.name, "vnni": self.vnni, "cpu": self.cpu, "cap": self.cap}


def cpu_features(flags: frozenset[str] | None = None) -> frozenset[str]:
    """The :data:`LEVELS` features of this CPU (from ``/proc/cpuinfo``; ``flags`` to read other flags)."""
    if flags is None:
        flags = _cpuinfo_flags()
    return frozenset(f for f, need in _FLAGS.items() if all(n in flags for n in need))


def _cpuinfo_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _best(features: frozenset[str]) -> str | None:
    fits = [name for name, need in LEVELS.items() if need <= features]
    return max(fits, key=lambda n: len(LEVELS[n])) if fits else None


def resolve(features: frozenset[str], cap: str | None) -> CpuIsa:
    """The level in effect on a CPU with ``features`` under oneDNN's ``cap`` (an unknown cap is ignored, as
    oneDNN ignores it)."""
    cpu = _best(features)
    if cpu is None:
        return CpuIsa("unknown", None, platform.machine() or "unknown", cap)
    allowed = LEVELS.get(cap.lower()) if cap else None
    name = _best(features & allowed) if allowed is not None else cpu
    name = name or "sse41"
    need = LEVELS[name]
    return CpuIsa(name, "vnni512" in need or "avx2_vnni" in need, cpu, cap if allowed is not None else None)


@functools.lru_cache(maxsize=None)
def cpu_isa() -> CpuIsa:
    """The instruction set OpenVINO's CPU kernels run with in this process (the CPU's flags under oneDNN's cap)."""
    cap = next((os.environ[k] for k in ISA_ENV if os.environ.get(k)), None)
    return resolve(cpu_features(), cap)


def without_vnni(features: frozenset[str] | None = None) -> str | None:
    """The ``ONEDNN_MAX_CPU_ISA`` value that runs this CPU's int8 kernels without VNNI while keeping its vector
    width (``AVX512_CORE`` on AVX-512 CPUs, ``AVX2`` otherwise), or None off x86."""
    features = cpu_features() if features is None else features
    if "avx512" in features:
        return "AVX512_CORE"
    return "AVX2" if "avx2" in features else None
