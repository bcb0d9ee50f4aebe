"""ONNX Runtime: one ``InferenceSession`` per graph on the CPU execution provider."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import RunnerError
from .._core.optional import require
from .base import Runner, by_name_or_position, cast_feed, default_threads, short_error

__all__ = ["OnnxRuntimeRunner", "import_onnxruntime"]

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
              "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}

_PROVIDERS = {"CPU": ["CPUExecutionProvider"], "CUDA": ["CUDAExecutionProvider", "CPUExecutionProvider"],
              "GPU": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` package, or ImportError naming ``pip install 'shapetrace[onnx]'``."""
    return require("onnxruntime", "onnx")


class OnnxRuntimeRunner(Runner):
    """Runs one ``.onnx`` file. ``static_shapes`` pins every named free dim to its example size."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, input_names: Sequence[str], output_names: Sequence[str], *,
                 device: str = "CPU", precision: str = "f32", threads: int | None = None,
                 fixed_dims: Mapping[str, int] | None = None, label: str = "") -> None:
        super().__init__(input_names, output_names, label or f"onnxruntime:{os.fspath(path)}")
        if precision != "f32":
            raise ValueError(f"ONNX Runtime runs the model at the precision it was exported in; "
                             f"precision={precision!r} is not supported, use 'f32'")
        if device.upper() not in _PROVIDERS:
            raise ValueError(f"device={device!r} is not known to the onnxruntime backend; use one of "
                             f"{', '.join(_PROVIDERS)}")
        self.path = os.fspath(path)
        self.device = device.upper()
        self.threads = threads
        self.fixed_dims = dict(fixed_dims or {})
        self._session: Any = None

    @property
    def session(self) -> Any:
        """The ``onnxruntime.InferenceSession`` while the runner is entered (None outside): its providers and
        options say how it runs (``session.get_providers()``, ``session.get_session_options()``)."""
        return self._session

    def _activate(self) -> None:
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 4  # failures surface as exceptions, reported by the caller
        for dim, value in self.fixed_dims.items():
            opts.add_free_dimension_override_by_name(dim, int(value))
        providers = [p for p in _PROVIDERS[self.device] if p in ort.get_available_providers()]
        if not providers or providers[0] != _PROVIDERS[self.device][0]:
            raise RunnerError(f"onnxruntime has no {_PROVIDERS[self.device][0]} here (available: "
                              f"{', '.join(ort.get_available_providers())}); use device='CPU'")
        try:
            self._session = ort.InferenceSession(self.path, sess_options=opts, providers=providers)
        except Exception as e:  # InvalidProtobuf, Fail, NoSuchFile: all mean the file is unusable
            raise RunnerError(f"onnxruntime cannot load {self.path} ({short_error(e)}); "
                              f"the file is missing or corrupt: re-run export_all") from e
        ins = self._session.get_inputs()
        outs = self._session.get_outputs()
        # An exporter may drop an input the graph never reads: feed only what the session declares.
        declared = {i.name: i for i in ins}
        self._feed_names = [n for n in self.input_names if n in declared]
        unknown = [i.name for i in ins if i.name not in set(self.input_names)]
        if unknown:
            raise RunnerError(f"{self.path} has input(s) {', '.join(map(repr, unknown))} the manifest does not "
                              f"list ({', '.join(self.input_names)}); re-export")
        self._feed_types = {n: _ORT_TYPES.get(declared[n].type) for n in self._feed_names}
        self._out_index = by_name_or_position(self.output_names, [{o.name} for o in outs], "output", self.label)
        self._out_names = [o.name for o in outs]

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ort_feed = {n: cast_feed(feed[n], self._feed_types[n]) for n in self._feed_names}
        results = self._session.run(self._out_names, ort_feed)
        return {name: np.asarray(results[i]) for name, i in zip(self.output_names, self._out_index)}
