"""shapetrace: record every torch module inside a pipeline, export each to ONNX / OpenVINO IR, prove parity.

The public face: everything a user needs is importable from here (and from :mod:`shapetrace.manifest`,
:mod:`shapetrace.constraints`, :mod:`shapetrace.backends`, :mod:`shapetrace.errors`, :mod:`shapetrace.testing`).
The stages live in private subpackages, one each: ``_record``, ``_skeleton`` (the object without its weights),
``_export``, ``_verify``, ``_serve``, ``_flow`` (``export_all``), ``_report``, ``_sources`` and ``_cli``, over ``_core``.
"""

from __future__ import annotations

from ._core.isa import CpuIsa, cpu_isa
from ._core.tree import register_flattener
from ._core.walker import find_modules
from ._export.flat import ExportPlan, prepare
from ._flow.export_all import ExportResult, export_all
from ._flow.quantize import QuantizeOptions
from ._record.proxy import RecordingProxy, record, recording_for
from ._record.recording import GraphRecord, Recording, TensorSpec
from ._serve.deployed import load_pipeline, rebuild, runtime_of
from ._serve.runtime import GraphStats, PyTorchFallbackWarning, Runtime, load
from ._verify.compare import DEFAULT_TOLERANCES, Tolerance
from ._verify.images import max_abs_diff, psnr
from ._verify.quality import DEFAULT_MIN_SNR_DB
from ._verify.report import ParityCheck, ParityReport
from ._verify.verify import verify
from ._version import __version__
from .errors import (DiskFullError, ExportError, FlattenError, ModuleNotFoundInObject, RecordingError, RunnerError,
                     RuntimeMismatchError, ShapetraceError, SignatureFileError, SkeletonError, SourceError,
                     UnsafePathError, VerifyError)

__all__ = [
    "__version__",
    "export_all",
    "prepare",
    "ExportPlan",
    "ExportResult",
    "QuantizeOptions",
    "verify",
    "ParityReport",
    "ParityCheck",
    "DEFAULT_TOLERANCES",
    "Tolerance",
    "DEFAULT_MIN_SNR_DB",
    "psnr",
    "max_abs_diff",
    "cpu_isa",
    "CpuIsa",
    "load",
    "load_pipeline",
    "rebuild",
    "runtime_of",
    "Runtime",
    "GraphStats",
    "PyTorchFallbackWarning",
    "find_modules",
    "record",
    "recording_for",
    "register_flattener",
    "Recording",
    "GraphRecord",
    "TensorSpec",
    "RecordingProxy",
    "ShapetraceError",
    "ModuleNotFoundInObject",
    "RecordingError",
    "FlattenError",
    "SignatureFileError",
    "UnsafePathError",
    "SkeletonError",
    "ExportError",
    "DiskFullError",
    "VerifyError",
    "RuntimeMismatchError",
    "RunnerError",
    "SourceError",
]
