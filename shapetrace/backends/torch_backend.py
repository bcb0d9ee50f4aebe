"""PyTorch: the live module, run through the graph's flat wrapper (``forward(*tensors) -> tuple``)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._core.caches import export_patches
from ..errors import RunnerError
from .._record.recording import dtype_from_name, from_numpy, to_numpy
from .base import Runner

__all__ = ["TorchRunner"]


class TorchRunner(Runner):
    """Runs ``module(*inputs in order)`` under ``torch.inference_mode``; inputs are cast to the manifest dtypes. A
    call the module refuses is run again under the patches the graph was traced with
    (:func:`shapetrace._core.caches.export_patches`) before the error stands.

    ``module`` must return a tensor or a tuple / list of tensors in ``output_names`` order (export.py's
    ``flat_module`` does).
    """

    name = "torch"

    def __init__(self, module: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str],
                 input_dtypes: Mapping[str, str] | None = None, *, device: str = "cpu", label: str = "") -> None:
        super().__init__(input_names, output_names, label or f"torch:{type(module).__name__}")
        self.module = module
        self.device = torch.device(device.lower() if isinstance(device, str) else device)
        self._dtypes = {n: dtype_from_name(d) for n, d in (input_dtypes or {}).items()}

    def _activate(self) -> None:
        pass

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [from_numpy(feed[n], self._dtypes.get(n)).to(self.device) for n in self.input_names]
        try:
            with torch.inference_mode():
                out: Any = self.module(*args)
        except Exception:
            # as the graph was traced: under transformers.exporters' tracing patches. A cache rebuilt from its
            # recorded context keeps the recorded Python token counter (a sliding-window layer's), which eager
            # code then holds against tensors of another length; traced, the layer reads the length off them
            args = [from_numpy(feed[n], self._dtypes.get(n)).to(self.device) for n in self.input_names]
            with torch.inference_mode(), export_patches("dynamo"):  # fresh arguments: the failed call may have
                out = self.module(*args)  # updated some in place
        if isinstance(out, torch.Tensor):
            out = (out,)
        out = list(out)
        if len(out) != len(self.output_names):
            raise RunnerError(f"{self.label} returned {len(out)} outputs, the manifest lists "
                              f"{len(self.output_names)} ({', '.join(self.output_names)})")
        return {n: to_numpy(t) for n, t in zip(self.output_names, out)}
