"""The ONNX file as a source for the IR when only the IR is asked (``formats=("openvino",)``).

With the default formats the IR comes from the ONNX file just written or from the torch module, and verify's degrade
moves a graph OpenVINO gets wrong from one to the other. With the IR alone there was no ONNX file, so a graph whose
IR only OpenVINO's PyTorch frontend gets wrong (its attention op answers NaN on a query row the mask hides entirely,
where torch answers 0: a left-padded prompt) failed where the default passed. :class:`OnnxOnDemand` is that source
back: the graph's ONNX file, written when a conversion first asks for it (once), in a temporary folder of its own
beside the IR, and removed with the folder when the block ends. The IR says where it came from
(``tools.openvino_from: "onnx"``, ``tools.openvino_via_onnx``: how the file was written, ``"kept": false``); the
file itself never reaches the export folder or the manifest's ``files``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ExportError
from . import dims as dims_mod
from . import writers
from .flat import ExportPlan

__all__ = ["OnnxOnDemand", "SOURCE_PREFIX"]

#: the temporary folder's name begins so (inside the staging folder: never committed)
SOURCE_PREFIX = ".onnx-source-"


class OnnxOnDemand:
    """``source()`` writes the graph's ONNX file (:func:`writers.write_onnx`) on its first call and returns its
    path; a later call returns the same path, or raises the first call's error again. Used as a context manager:
    the folder goes when the block ends. ``tools`` holds how the file was written (empty until it was)."""

    def __init__(self, plan: ExportPlan, ep: Any, info: dims_mod.DimInfo, opset: int | None, near: Path,
                 name: str) -> None:
        self._args = (plan, ep, info, opset)
        self._near, self._name = near, name
        self._dir: Path | None = None
        self._path: Path | None = None
        self._error: Exception | None = None
        self.tools: dict[str, Any] = {}

    def __call__(self) -> Path:
        if self._error is not None:
            raise self._error
        if self._path is None:
            self._dir = Path(tempfile.mkdtemp(prefix=SOURCE_PREFIX, dir=self._near))
            path = self._dir / self._name
            t = time.perf_counter()
            try:
                tools = writers.write_onnx(*self._args[:2], path, *self._args[2:])
            except ImportError as e:  # an IR-only install may lack the ONNX exporter: one source less, not a crash
                self._error = ExportError(f"the ONNX file as a source for the IR: {e}")
                raise self._error from e
            except (MemoryError, OSError):
                raise
            except Exception as e:
                self._error = e
                raise
            self.tools = {**tools, "seconds": round(time.perf_counter() - t, 3)}
            self._path = path
            self._args = ()  # the program is the caller's to free
        return self._path

    @property
    def written(self) -> bool:
        return self._path is not None

    def __enter__(self) -> "OnnxOnDemand":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._args = ()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
