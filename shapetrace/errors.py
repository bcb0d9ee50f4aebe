"""The exceptions shapetrace raises, all rooted at :class:`ShapetraceError`.

::

    ShapetraceError
    ├── ModuleNotFoundInObject   no nn.Module found, or include/exclude matched nothing
    ├── RecordingError           record() misuse: nested on the same object, no recording for an object
    ├── FlattenError             a value shapetrace cannot flatten (register a flattener)
    ├── SignatureFileError       a signatures.json / manifest.json that is missing, corrupt or from a newer version
    │   └── UnsafePathError      a file name in it that points outside the export folder
    ├── SkeletonError            an object whose skeleton cannot be written, or a folder it cannot be rebuilt from
    ├── ExportError              export_all() could not start, or a graph failed to export
    │   └── DiskFullError        the export folder's filesystem filled up: how much was needed, how much is free
    ├── VerifyError              verify() could not run (missing files, nothing to compare)
    ├── RuntimeMismatchError     load() on another object, or a call the exported graph cannot answer
    ├── SourceError              the command line's SOURCE cannot be loaded or run (no such folder, no model in it,
    │                            a user function that raises, a call the pipeline refuses)
    └── RunnerError              a runtime could not open or run a model file (verify and load re-raise it
                                 as their own error, naming the graph)

Every message names the thing at fault and what to do next.
"""

from __future__ import annotations

__all__ = [
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


class ShapetraceError(Exception):
    """Root of every error shapetrace raises on purpose."""


class ModuleNotFoundInObject(ShapetraceError):
    """No ``torch.nn.Module`` was found, or include / exclude selected none."""


class RecordingError(ShapetraceError):
    """``record`` was misused (nested on the same object, nothing recorded, ...)."""


class FlattenError(ShapetraceError):
    """A value holds tensors inside a type shapetrace does not know how to flatten."""


class SignatureFileError(ShapetraceError):
    """A saved ``signatures.json`` or ``manifest.json`` is missing, corrupt or too new."""


class UnsafePathError(SignatureFileError):
    """A manifest names a file outside its export folder (an absolute path, ``..``): refused, never opened."""


class SkeletonError(ShapetraceError):
    """The object's skeleton cannot be written (a part another process cannot rebuild), or an export folder cannot
    be rebuilt into an object (no skeleton, a class that is not installed)."""


class ExportError(ShapetraceError):
    """An export could not start, or one graph failed to export."""


class DiskFullError(ExportError):
    """The filesystem of the export folder filled up: the message says how much space the export needed and how
    much was free; nothing of the export was kept, and an earlier export in the folder is intact."""


class VerifyError(ShapetraceError):
    """A parity check could not run."""


class RuntimeMismatchError(ShapetraceError):
    """An export does not fit the object or the call it is asked to serve."""


class RunnerError(ShapetraceError):
    """A backend runner could not load, compile or run its model file, or was fed wrongly."""


class SourceError(ShapetraceError):
    """``shapetrace export SOURCE``: the source cannot be loaded, built or run (the message names it and the fix)."""
