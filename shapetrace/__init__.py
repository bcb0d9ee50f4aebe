"""shapetrace: record every torch module inside a pipeline, export each to ONNX / OpenVINO IR, prove parity."""

from __future__ import annotations

__version__ = "0.1.0"

from .export import ExportPlan, ExportResult, export_all, prepare
from .errors import (ExportError, FlattenError, ModuleNotFoundInObject, RecordingError, RuntimeMismatchError,
                     ShapetraceError, SignatureFileError, VerifyError)
from .proxy import RecordingProxy, record, recording_for
from .recording import GraphRecord, Recording, TensorSpec
from .tree import register_flattener
from .walker import find_modules
from .verify import ParityReport, verify  # noqa: E402 - after the submodule imports it relies on

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
]


def __getattr__(name: str):
    # load pulls in the runtime backends: imported on first use
    if name == "load":
        from .runtime import load

        return load
    raise AttributeError(f"module 'shapetrace' has no attribute {name!r}")
