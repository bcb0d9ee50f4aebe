"""Runtimes behind one small runner interface (see :mod:`shapetrace.backends.base`).

``open_runner(backend, out_dir, entry)`` builds the runner for one manifest :class:`~shapetrace.manifest.GraphEntry`::

    with open_runner("openvino", "out", shapetrace.manifest.read("out").graphs[0]) as r:
        outputs = r.infer(feed)

=============  ===========================================  ==========================================
backend        model it runs                                 needs
=============  ===========================================  ==========================================
onnxruntime    ``entry.file("onnx")``, CPUExecutionProvider  ``pip install 'shapetrace[onnx]'``
openvino       ``entry.file("openvino")`` (.xml + .bin)      ``pip install 'shapetrace[openvino]'``
torch          the live module (``module=``), flat wrapper   torch
=============  ===========================================  ==========================================

The runtime packages are imported when a runner is entered, so importing this module costs nothing.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from ..manifest import GraphEntry
from .base import Runner, model_file
from .onnxruntime_backend import OnnxRuntimeRunner
from .openvino_backend import OpenVINORunner
from .torch_backend import TorchRunner

__all__ = ["BACKENDS", "FILE_KIND", "Runner", "OnnxRuntimeRunner", "OpenVINORunner", "TorchRunner", "open_runner"]

#: The runtimes that run exported files, in the order verify() uses them.
BACKENDS = ("onnxruntime", "openvino")
#: Which ``files`` key of a manifest entry each backend runs.
FILE_KIND = {"onnxruntime": "onnx", "openvino": "openvino"}


def open_runner(backend_name: str, out_dir: str | os.PathLike, graph_entry: GraphEntry, *,
                device: str = "CPU", precision: str = "f32", threads: int | None = None,
                static_shapes: bool = False, module: torch.nn.Module | None = None,
                config: Mapping[str, Any] | None = None) -> Runner:
    """A (not yet entered) runner for one graph of an export folder.

    ``backend_name`` is ``"onnxruntime"``, ``"openvino"`` or ``"torch"`` (which needs ``module``: a flat module
    whose ``forward(*inputs)`` returns the outputs in manifest order). ``precision`` is ``"f32"`` (parity) or
    ``"bf16"`` / ``"f16"`` (OpenVINO only). ``static_shapes`` pins every dynamic dim to its example size
    (OpenVINO reshapes, ONNX Runtime overrides the free dims). ``config``: extra OpenVINO ``compile_model``
    properties, applied last. A missing model file raises :class:`~shapetrace.RunnerError`; a missing runtime
    package raises ``ImportError`` on entering.
    """
    entry = graph_entry
    label = f"{backend_name}:{entry.name}"
    if backend_name == "torch":
        if module is None:
            raise ValueError("the torch backend runs the live module: pass module=flat_module(module, entry)")
        return TorchRunner(module, entry.input_names, entry.output_names, {i.name: i.dtype for i in entry.inputs},
                           device=device, label=label)
    if backend_name not in FILE_KIND:
        raise ValueError(f"unknown backend {backend_name!r}; choose from {', '.join(BACKENDS + ('torch',))}")
    if config and backend_name != "openvino":
        raise ValueError(f"config= holds OpenVINO compile properties; backend {backend_name!r} takes threads= only")
    path = model_file(out_dir, entry, FILE_KIND[backend_name])
    if backend_name == "onnxruntime":
        fixed = {name: dim.example for name, dim in entry.dims.items()} if static_shapes else None
        return OnnxRuntimeRunner(path, entry.input_names, entry.output_names, device=device, precision=precision,
                                 threads=threads, fixed_dims=fixed, label=label)
    shapes = {i.name: i.example_shape for i in entry.inputs} if static_shapes else None
    return OpenVINORunner(path, entry.input_names, entry.output_names, device=device, precision=precision,
                          threads=threads, example_shapes=shapes, config=config, label=label)
