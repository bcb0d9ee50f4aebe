"""OpenVINO: one compiled model per graph and one reused infer request.

Parity runs must use ``precision="f32"`` (``INFERENCE_PRECISION_HINT: f32``): on CPUs with AMX / AVX512-BF16,
OpenVINO otherwise computes in bf16 by default and no f32 tolerance would hold.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import RunnerError
from .._core.optional import require
from .base import Runner, by_name_or_position, cast_feed, match_inputs, short_error

__all__ = ["OpenVINORunner", "import_openvino", "PRECISIONS"]

PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16"}


def import_openvino() -> Any:
    """The ``openvino`` package, or ImportError naming ``pip install 'shapetrace[openvino]'``."""
    return require("openvino", "openvino")


class OpenVINORunner(Runner):
    """Runs one IR (``.xml`` + ``.bin``). ``example_shapes`` (static shapes) reshapes the model first; ``config``
    holds extra ``compile_model`` properties (``NUM_STREAMS``...), applied after the defaults."""

    name = "openvino"

    def __init__(self, xml_path: str | os.PathLike, input_names: Sequence[str], output_names: Sequence[str], *,
                 device: str = "CPU", precision: str = "f32", threads: int | None = None,
                 example_shapes: Mapping[str, Sequence[int]] | None = None,
                 config: Mapping[str, Any] | None = None, label: str = "") -> None:
        super().__init__(input_names, output_names, label or f"openvino:{os.fspath(xml_path)}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not known; use one of {', '.join(PRECISIONS)}")
        self.path = os.fspath(xml_path)
        self.device = device
        self.precision = precision
        self.threads = threads
        self.example_shapes = dict(example_shapes) if example_shapes else None
        self.config = dict(config or {})
        self._compiled: Any = None
        self._request: Any = None

    @property
    def compiled(self) -> Any:
        """The ``openvino.CompiledModel`` while the runner is entered (None outside): its properties say how it
        was compiled (``compiled.get_property("NUM_STREAMS")``)."""
        return self._compiled

    def _activate(self) -> None:
        ov = import_openvino()
        bin_path = os.path.splitext(self.path)[0] + ".bin"
        if not os.path.isfile(bin_path):
            raise RunnerError(f"{bin_path} not found (the weights of {self.path}); re-run export_all")
        core = ov.Core()
        try:
            model = core.read_model(self.path)
        except Exception as e:
            raise RunnerError(f"openvino cannot read {self.path} ({short_error(e)}); "
                              f"the IR is missing or corrupt: re-run export_all") from e
        in_ports = [set(p.get_names()) for p in model.inputs]
        in_index = match_inputs(self.input_names, in_ports, self.label)
        if self.example_shapes:
            model.reshape({i: list(self.example_shapes[n]) for n, i in zip(self.input_names, in_index)
                           if i >= 0 and n in self.example_shapes})
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISIONS[self.precision],
                                  "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        config.update(self.config)
        # with a model cache, compile from the file: OpenVINO then keys the cache on the path and, on a hit, imports
        # the compiled blob without reading (or hashing) the IR's weights, so their pages are never touched
        source = self.path if "CACHE_DIR" in config and not self.example_shapes else model
        try:
            self._compiled = core.compile_model(source, self.device, config)
        except Exception as e:
            raise RunnerError(f"openvino cannot compile {self.path} for {self.device} with {config} "
                              f"({short_error(e)})") from e
        self._request = self._compiled.create_infer_request()
        self._in_index = in_index
        self._in_types = [self._np_type(p.get_element_type()) for p in self._compiled.inputs]
        # names as the IR has them: compiling merges the names of two outputs that are one tensor (a vision
        # tower returning the same features as last_hidden_state and pooler_output); the ports keep their order
        out_ports = [set(p.get_names()) for p in model.outputs]
        self._out_index = by_name_or_position(self.output_names, out_ports, "output", self.label)

    @staticmethod
    def _np_type(element_type: Any) -> Any:
        try:
            return np.dtype(element_type.to_dtype())
        except Exception:  # bf16 and other types numpy lacks: feed as is
            return None

    def _deactivate(self) -> None:
        self._request = None
        self._compiled = None

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {i: cast_feed(feed[n], self._in_types[i]) for n, i in zip(self.input_names, self._in_index)
                  if i >= 0}
        result = self._request.infer(inputs)
        outs = self._compiled.outputs
        # copy: the request reuses its output buffers on the next call
        return {name: np.array(result[outs[i]], copy=True) for name, i in zip(self.output_names, self._out_index)}
