"""shapetrace: record every torch module inside a pipeline, export each to ONNX / OpenVINO IR, prove parity."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (ExportError, FlattenError, ModuleNotFoundInObject, RecordingError, RuntimeMismatchError,
                     ShapetraceError, SignatureFileError, VerifyError)
from .proxy import RecordingProxy, record, recording_for
from .recording import GraphRecord, Recording, TensorSpec
from .tree import register_flattener
from .walker import find_modules

__all__ = [
    "__version__",
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
