"""The ONNX external data a model file names (``<graph>.onnx.data``), checked to lie inside the export folder before
any runtime opens the file: a tampered ``location`` (absolute, ``..``, a link leaving the folder) is an
:class:`~shapetrace.errors.UnsafePathError`, and nothing it names is read. Recent ONNX Runtime, ``onnx`` and
OpenVINO refuse such files too, each in its own words (and older ones did not); this check does not depend on them.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from ..errors import UnsafePathError
from .optional import require

__all__ = ["check_inside"]


def _names_external_data(path: Path) -> bool:
    """Whether the file holds the word ``location`` at all (every external-data entry does): a file without it is
    not parsed (a model with its weights inside may be hundreds of MB)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(b"location") >= 0


def check_inside(onnx_path: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Raise :class:`UnsafePathError` when a tensor of the ONNX file at ``onnx_path`` keeps its data in a file outside
    ``folder`` (its ``location`` is resolved against the model file's own folder, as the runtimes do)."""
    path = Path(onnx_path)
    if not _names_external_data(path):
        return
    onnx = require("onnx", "onnx")
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    root = Path(folder).resolve()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        if os.path.isabs(location) or not (path.parent / location).resolve().is_relative_to(root):
            raise UnsafePathError(f"{path} keeps the data of tensor {tensor.name!r} in {location!r}, outside the "
                                  f"export folder {folder}; refused, nothing read (an export's ONNX files only name "
                                  f"data files beside them): re-export into a new folder")
