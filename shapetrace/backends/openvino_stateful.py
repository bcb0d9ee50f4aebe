"""OpenVINO's stateful form of a decoder step, as a runner: :class:`StatefulRunner` runs the stateful IR on an
explicit call (the cache inputs written into its variables, read back as the cache outputs), so ``verify`` holds it
to the same recorded inputs and outputs as the explicit IR. :func:`cache_pairs` names the cache inputs and the
outputs that update them; :data:`STATEFUL_FILE` is the manifest's ``files`` key of the stateful IR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .._core import tree
from .._core.optional import require
from ..manifest import GraphEntry

__all__ = ["STATEFUL_FILE", "StatefulRunner", "cache_pairs"]

#: The ``files`` key of a graph's stateful IR.
STATEFUL_FILE = "openvino_stateful"


def cache_pairs(entry: GraphEntry) -> dict[str, str]:
    """``{cache input: its updated output}`` of a graph variant (empty when it passes no cache through)."""
    caches = tree.cache_tensor_names(entry.input_tree)
    outputs = {o.key: o.name for o in entry.outputs}
    return {n: outputs[n] for n in entry.input_names if n in caches and n in outputs}



class StatefulRunner:
    """Runs a decoder step's stateful IR on an explicit call, for ``verify``: the cache inputs are written into the
    model's variables, the other inputs fed, and the variables read back afterwards as the cache outputs -- so the
    stateful file is held to the same recorded inputs and outputs as the explicit one."""

    name = "openvino-stateful"

    def __init__(self, out: Path, entry: GraphEntry, device: str = "CPU") -> None:
        ov = require("openvino", "openvino")
        self.ov, self.entry, self.pairs = ov, entry, cache_pairs(entry)
        props = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
        self.compiled = ov.Core().compile_model(str(out / entry.files[STATEFUL_FILE]), device, props)
        self.request = self.compiled.create_infer_request()

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.request.reset_state()
        states = {st.name: st for st in self.request.query_state()}
        for inp, out in self.pairs.items():
            states[f"{inp}{out}"].state = self.ov.Tensor(np.array(feed[inp], copy=True, order="C"))
        plain = {n: feed[n] for n in self.entry.input_names if n not in self.pairs}
        plain["beam_idx"] = np.arange(next(iter(plain.values())).shape[0], dtype=np.int32)
        result = self.request.infer(plain)
        got = {o.name: np.array(result[self.compiled.output(o.name)]) for o in self.entry.outputs
               if o.name not in self.pairs.values()}
        states = {st.name: st for st in self.request.query_state()}
        got.update({out: np.array(states[f"{inp}{out}"].state.data) for inp, out in self.pairs.items()})
        return got
