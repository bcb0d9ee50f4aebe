"""shapetrace: record every torch module inside a pipeline, export each to ONNX / OpenVINO IR, prove parity."""

from __future__ import annotations

from ._version import __version__
from .errors import (ExportError, FlattenError, ModuleNotFoundInObject, RecordingError, RunnerError,
                     RuntimeMismatchError, ShapetraceError, SignatureFileError, SourceError, VerifyError)
from .export import ExportResult, export_all
from .flat import ExportPlan, prepare
from .proxy import RecordingProxy, record, recording_for
from .recording import GraphRecord, Recording, TensorSpec
from .report import ParityReport
from .runtime import load
from .tree import register_flattener
from .verify import verify
from .walker import find_modules

__all__ = [
    "__version__",
    "export_all",
    "prepare",
    "ExportPlan",
    "ExportResult",
    "verify",
    "ParityReport",
    "load",
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
    "ExportError",
    "VerifyError",
    "RuntimeMismatchError",
    "RunnerError",
    "SourceError",
]

