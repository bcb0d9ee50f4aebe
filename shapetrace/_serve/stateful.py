"""Serving a decoder step from OpenVINO's stateful form (:mod:`shapetrace._export.stateful`).

:class:`StatefulMethod` serves every call of the method (the first, with an empty cache, and the later ones) with
that one model: a call with an empty cache resets the state, and the cache object handed back to ``generate`` holds
no data, only its length and the beam order (tensors of shape ``[batch, 1, length, 1]`` whose values are the row
each batch entry came from), so ``generate`` runs unchanged and a reorder by beam search reaches ``beam_idx``.

The cache lives in an infer request's state, which outlasts a call: each thread gets its own request
(:attr:`StatefulMethod.request`), so threads generating at once each keep their own sequence.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .._core.optional import require
from ..backends.openvino_stateful import cache_pairs
from ..errors import RuntimeMismatchError
from ..manifest import GraphEntry
from .serve import ServedGraph

__all__ = ["StatefulMethod"]


class StatefulMethod:
    """Serves every call of one method from the stateful model of its cache-taking variant (see module docs)."""

    def __init__(self, entry: GraphEntry, module: torch.nn.Module, path: Path, device: str, config: Mapping[str, Any],
                 backend: str) -> None:
        ov = require("openvino", "openvino")
        self.entry = entry
        self.name = entry.name
        self.served = ServedGraph(entry, module, None, backend, False)  # binds calls, rebuilds outputs
        self.pairs = cache_pairs(entry)
        self.compiled = ov.Core().compile_model(str(path), device, dict(config))
        self._local = threading.local()  # each thread's infer request: its own cache
        self.inputs = [n for n in entry.input_names if n not in self.pairs]
        first = entry.input(next(iter(self.pairs)))
        self.axis = next(a for a, d in enumerate(first.shape) if a and isinstance(d, str))  # the growing dim
        self.lock = threading.Lock()
        self.calls = 0
        self.seconds = 0.0
        outputs = {o.name: o for o in entry.outputs}
        self.keys = {out: outputs[out].key for out in self.pairs.values()}
        self.ranks = {out: len(entry.input(inp).shape) for inp, out in self.pairs.items()}
        #: cache parts the step reads and hands back unchanged (cross-attention keys / values: the same dim in and
        #: out); the empty state cannot hold them, so a new sequence starts on :attr:`prefill`
        self.fixed = [inp for inp, out in self.pairs.items()
                      if entry.input(inp).shape[self.axis] == outputs[out].shape[self.axis]]
        self.prefill: ServedGraph | None = None
        self.ov = ov

    @property
    def request(self) -> Any:
        """This thread's infer request (made on its first call): a request's state is the cache of the sequence
        that thread is generating, which another thread's calls must never reset or extend."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def _grown(self, feed: Mapping[str, np.ndarray], past: int) -> int:
        """The cache's length after this call: ``past`` plus the size of the ``sequence`` dim in the feed (the
        tokens this call adds), else read off the first state (a copy of it)."""
        grow = self.entry.dims.get("sequence")
        if grow is not None:
            for src in grow.sources:
                name, axis = src.rsplit(".", 1)
                if name in feed:
                    return past + int(feed[name].shape[int(axis)])
        states = self.request.query_state()
        return int(states[0].state.shape[self.axis]) if states else past

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        t0 = time.perf_counter()
        nodes, leaves = self.served.bind(args, kwargs)
        cache = [leaves[n] for n in self.pairs if isinstance(leaves.get(n), torch.Tensor)]
        missing = [n for n in self.inputs if not isinstance(leaves.get(n), torch.Tensor)]
        if missing:
            raise RuntimeMismatchError(f"graph {self.name!r} (stateful): this call gives no tensor for "
                                       f"{', '.join(map(repr, missing))}; record a call that passes them")
        problems = self.served.index_problems({n: leaves[n] for n in self.inputs})
        if problems:
            raise RuntimeMismatchError(f"graph {self.name!r} (stateful) cannot answer this call: {'; '.join(problems)}")
        feed = {n: leaves[n].detach().cpu().numpy() for n in self.inputs}
        batch = next(iter(feed.values())).shape[0]
        with self.lock:
            if not cache and self.prefill is not None:  # a new sequence whose cache has parts only it computes
                value = self._start(module, nodes, leaves, batch)
                self.prefill.calls += 1  # counted as the first variant's call: it ran there
                self.prefill.seconds += time.perf_counter() - t0
                return value
            request = self.request
            if not cache:  # an empty cache: a new sequence
                request.reset_state()
                past, order = 0, np.arange(batch)
            else:
                marks = cache[0]
                if marks.shape[-1] != 1 or marks.shape[0] != batch or marks.numel() != batch * marks.shape[self.axis]:
                    raise RuntimeMismatchError(f"graph {self.name!r} (stateful): the cache passed in was not made by "
                                               f"this runtime; start generation with an empty cache")
                past, order = marks.shape[self.axis], marks.reshape(batch, -1)[:, 0].round().long().numpy()
            feed["beam_idx"] = order.astype(np.int32)
            result = request.infer(feed)
            grown = self._grown(feed, past)
            self.calls += 1
        lengths = {out: int(grown) for out in self.pairs.values()}
        lengths.update({self.pairs[n]: int(leaves[n].shape[self.axis]) for n in self.fixed if n in leaves})
        out = {o.key: torch.from_numpy(np.array(result[self.compiled.output(o.name)]))
               for o in self.entry.outputs if o.name not in lengths}
        value = self.served.rebuild(module, nodes, {**out, **self._marks(batch, lengths)})
        with self.lock:
            self.seconds += time.perf_counter() - t0
        return value

    def _marks(self, batch: int, lengths: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """What ``generate`` gets back as the cache: per cache output ``[batch, 1, length, 1]`` (the growing dim at
        its axis) whose values are each entry's row, for ``beam_idx`` after a reorder."""
        marks = {}
        for name, length in lengths.items():
            rank = self.ranks[name]
            shape = [batch] + [1] * (rank - 1)
            shape[self.axis] = length
            rows = torch.arange(batch, dtype=torch.float32).reshape([batch] + [1] * (rank - 1))
            marks[self.keys[name]] = rows.expand(shape).contiguous()
        return marks

    def _start(self, module: torch.nn.Module, nodes: Any, leaves: Any, batch: int) -> Any:
        """A new sequence on the cache-less variant, run explicitly: its outputs answer the call, its cache fills
        every state (the parts the steps only read included)."""
        prefill = self.prefill
        assert prefill is not None
        feed, _ = prefill.match(nodes, leaves)
        result = prefill.runner.infer(feed)
        names = {o.key: o.name for o in prefill.entry.outputs}
        self.request.reset_state()
        states = {st.name: st for st in self.request.query_state()}
        lengths = {}
        for inp, out in self.pairs.items():
            value = np.array(result[names[self.keys[out]]], copy=True, order="C")
            states[f"{inp}{out}"].state = self.ov.Tensor(value)
            lengths[out] = int(value.shape[self.axis])
        caches = {self.keys[o] for o in self.pairs.values()}
        out = {o.key: torch.from_numpy(np.array(result[o.name])) for o in prefill.entry.outputs if o.key not in caches}
        return prefill.rebuild(module, nodes, {**out, **self._marks(batch, lengths)})
