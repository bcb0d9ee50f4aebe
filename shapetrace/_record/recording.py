"""Frozen records of what a pipeline run did: :class:`TensorSpec`, :class:`GraphRecord`, :class:`Recording`.

A *graph* is one (module path, method) pair: ``"unet"`` for ``unet.forward`` (called through ``__call__``),
``"vae.decode"`` for another method. ``Recording.save(dir)`` writes ``signatures.json`` (schema below, versioned
by ``format_version``) and one ``<graph>.inputs.npz`` per graph whose keys are the flat input names::

    {"format_version": 1, "shapetrace_version": "0.1.0", "object_class": "diffusers...:StableDiffusion...",
     "graphs": [{"name": "unet", "module_path": "unet", "method": "forward", "module_class": "diffusers...:UNet2D...",
                 "num_calls": 4,
                 "inputs":  [{"name": "sample", "shape": [2, 4, 8, 8], "dtype": "float32", "device": "cpu",
                              "value_range": null, "shapes_seen": [[2, 4, 8, 8]], "varying_dims": []}, ...],
                 "outputs": [... same fields ...],
                 "input_tree": {"t": "args", "params": [...]}, "output_tree": {...},
                 "constants": {"return_dict": false}, "varying_constants": {"timestep": [...]},
                 "examples": "unet.inputs.npz"}]}
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import torch

from .._core import table, tree
from .._version import __version__
from ..errors import SignatureFileError
from .._core.files import FORMAT_VERSION, inside, load_npz, read_json, save_npz, write_json
from .samples import SampleStore
from .stats import RecordingStats

__all__ = ["TensorSpec", "GraphRecord", "Recording", "FORMAT_VERSION", "file_stem", "dtype_name",
           "dtype_from_name", "to_numpy", "from_numpy", "read_json"]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def dtype_from_name(name: str) -> torch.dtype:
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise SignatureFileError(f"unknown dtype {name!r}")
    return value


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy; bf16 (which numpy lacks) is widened to float32."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


def from_numpy(a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.array(a, copy=True, order="C"))  # ascontiguousarray would turn 0-d into 1-d
    return t.to(dtype) if dtype is not None and t.dtype != dtype else t


def file_stem(graph_name: str) -> str:
    """A file-name-safe stem for a graph name (``nets[0]`` -> ``nets_0_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", graph_name)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor leaf: the first call's shape / dtype / device, plus every shape seen across calls."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str = "cpu"
    value_range: tuple[float, float] | None = None  # min / max of the first call, integer and bool tensors only
    shapes_seen: tuple[tuple[int, ...], ...] = ()
    varying_dims: tuple[int, ...] = ()  # dims whose size changed across calls

    def to_json(self, name: str) -> dict:
        return {"name": name, "shape": list(self.shape), "dtype": dtype_name(self.dtype), "device": self.device,
                "value_range": list(self.value_range) if self.value_range is not None else None,
                "shapes_seen": [list(s) for s in self.shapes_seen], "varying_dims": list(self.varying_dims)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TensorSpec":
        vr = d.get("value_range")
        return cls(shape=tuple(int(x) for x in d["shape"]), dtype=dtype_from_name(d["dtype"]),
                   device=d.get("device", "cpu"), value_range=tuple(vr) if vr is not None else None,
                   shapes_seen=tuple(tuple(int(x) for x in s) for s in d.get("shapes_seen", ())),
                   varying_dims=tuple(d.get("varying_dims", ())))

    def __str__(self) -> str:
        dims = ", ".join(f"{n}*" if i in self.varying_dims else str(n) for i, n in enumerate(self.shape))
        return f"{dtype_name(self.dtype)}[{dims}]"


@dataclass(frozen=True)
class GraphRecord:
    """What one (module path, method) was called with; ``inputs`` / ``outputs`` describe the first call."""

    name: str
    module_path: str
    method: str
    module_class: str
    num_calls: int
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    input_tree: Mapping[str, Any]
    output_tree: Mapping[str, Any]
    varying_constants: Mapping[str, tuple] = field(default_factory=dict)
    examples: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    variant_of: str | None = None  # set when calls of one method came in several structures (see record())
    #: the module's plain attributes at the first call (:mod:`shapetrace._core.modstate`); in memory only, like examples
    state: Mapping[tuple[str, str], Any] = field(default_factory=dict, repr=False, compare=False)
    #: calls that reached the module without going through the object's attribute (``self(...)`` inside its own
    #: ``generate``, seen by the module's hooks): load then serves the module's own ``forward`` too
    direct_calls: int = 0

    @property
    def constants(self) -> dict[str, Any]:
        """The non-tensor arguments of the first call, by flat name (``{"return_dict": False}``)."""
        return tree.constants_of(dict(self.input_tree))

    def example_inputs(self) -> tuple[tuple, dict[str, Any]]:
        """The first call's real ``(args, kwargs)``, rebuilt from the kept CPU copies."""
        if not self.examples:
            raise SignatureFileError(f"graph {self.name!r} has no example inputs (its .inputs.npz was not loaded)")
        leaves = dict(self.examples)
        for name, v in tree.constants_of(dict(self.input_tree)).items():
            # opaque values (a torch.Generator) are kept in memory only; after load() they come back as None
            if isinstance(v, str) and v.startswith("<") and name not in leaves:
                leaves[name] = None
        args, kwargs = tree.split_call(self.input_tree, leaves)
        return tuple(args), kwargs

    def to_json(self) -> dict:
        return {"name": self.name, "module_path": self.module_path, "method": self.method,
                "module_class": self.module_class, "num_calls": self.num_calls,
                "inputs": [s.to_json(n) for n, s in self.inputs.items()],
                "outputs": [s.to_json(n) for n, s in self.outputs.items()],
                "input_tree": self.input_tree, "output_tree": self.output_tree,
                "constants": self.constants,
                "varying_constants": {k: list(v) for k, v in self.varying_constants.items()},
                "examples": f"{file_stem(self.name)}.inputs.npz", "variant_of": self.variant_of,
                "direct_calls": self.direct_calls}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], examples: Mapping[str, Any] | None = None) -> "GraphRecord":
        return cls(name=d["name"], module_path=d["module_path"], method=d["method"],
                   module_class=d["module_class"], num_calls=int(d["num_calls"]),
                   inputs=MappingProxyType({x["name"]: TensorSpec.from_json(x) for x in d["inputs"]}),
                   outputs=MappingProxyType({x["name"]: TensorSpec.from_json(x) for x in d["outputs"]}),
                   input_tree=d["input_tree"], output_tree=d["output_tree"],
                   varying_constants=MappingProxyType({k: tuple(v) for k, v in
                                                       d.get("varying_constants", {}).items()}),
                   examples=MappingProxyType(dict(examples or {})), variant_of=d.get("variant_of"),
                   direct_calls=int(d.get("direct_calls", 0)))


def _fmt_specs(specs: Mapping[str, TensorSpec]) -> list[str]:
    return [f"{n}: {s}" for n, s in specs.items()] or ["-"]


class Recording:
    """Everything one ``record`` block saw. ``graphs`` maps graph name -> :class:`GraphRecord`.

    While the block runs, ``graphs`` is a live snapshot; after it ends the recording is fixed. ``samples`` is the
    :class:`~shapetrace._record.samples.SampleStore` of ``record(obj, samples=N)`` (None without ``samples=``).
    """

    def __init__(self, graphs: Mapping[str, GraphRecord] | None = None, object_class: str = "",
                 _source: Any = None, samples: SampleStore | None = None) -> None:
        self._graphs = MappingProxyType(dict(graphs or {}))
        self.object_class = object_class
        self._source = _source  # the live recorder while recording
        self.samples = samples
        self._stats = RecordingStats()

    @property
    def graphs(self) -> Mapping[str, GraphRecord]:
        if self._source is not None:
            return self._source.snapshot()
        return self._graphs

    @property
    def stats(self) -> RecordingStats:
        """What recording cost (:class:`~shapetrace._record.stats.RecordingStats`); zeros for a loaded recording."""
        if self._source is not None:
            return self._source.stats.freeze()
        return self._stats

    def _finish(self) -> None:
        if self._source is not None:
            self._graphs = self._source.snapshot()
            self._stats = self._source.stats.freeze()
            self._source = None

    def __getitem__(self, name: str) -> GraphRecord:
        try:
            return self.graphs[name]
        except KeyError:
            raise KeyError(f"no graph {name!r}; recorded graphs: {', '.join(map(repr, self.graphs)) or '(none)'}") from None

    def __iter__(self):
        return iter(self.graphs.values())

    def __len__(self) -> int:
        return len(self.graphs)

    def __repr__(self) -> str:
        return f"<Recording of {self.object_class.rsplit(':', 1)[-1]}: {len(self.graphs)} graphs>"

    def __str__(self) -> str:
        return render_table(self)

    # ----------------------------------------------------------------------------------------- persistence
    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, "shapetrace_version": __version__,
                "object_class": self.object_class, "graphs": [g.to_json() for g in self.graphs.values()]}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``signatures.json`` and ``<graph>.inputs.npz`` files into ``directory`` (created if needed), and the
        calibration samples (``samples/``) when the recording kept some."""
        out = Path(directory)
        if out.exists() and not out.is_dir():
            raise SignatureFileError(f"{out} exists and is not a directory; pass a directory path")
        out.mkdir(parents=True, exist_ok=True)
        for g in self.graphs.values():
            arrays = {n: to_numpy(t) for n, t in g.examples.items() if isinstance(t, torch.Tensor)}
            save_npz(out / f"{file_stem(g.name)}.inputs.npz", arrays)
        if self.samples is not None:
            self.samples.save(out)
        write_json(out / "signatures.json", self.to_json())
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Recording":
        """Read a folder written by :meth:`save`."""
        src = Path(directory)
        path = src / "signatures.json"
        data = read_json(path, what="signatures file")
        graphs = {}
        for d in data.get("graphs", []):
            try:
                npz = inside(src, d.get("examples", f"{file_stem(d['name'])}.inputs.npz"), "an examples file",
                             "signatures.json")
                examples: dict[str, Any] = {}
                if npz.exists():
                    specs = {x["name"]: x["dtype"] for x in d["inputs"]}
                    for key, array in load_npz(npz, "recorded inputs").items():
                        examples[key] = from_numpy(array, dtype_from_name(specs[key]) if key in specs else None)
                g = GraphRecord.from_json(d, examples)
            except (KeyError, TypeError, ValueError) as e:
                raise SignatureFileError(f"{path}: graph entry {d.get('name', '?')!r} is malformed ({e}); "
                                         f"re-create it with Recording.save") from e
            graphs[g.name] = g
        return cls(graphs, data.get("object_class", ""), samples=SampleStore.load(src))


def render_table(rec: Recording) -> str:
    """A readable table: graph, calls, inputs and outputs (``*`` marks a dim that varied across calls)."""
    rows = [("graph", "calls", "inputs", "outputs")]
    for g in rec.graphs.values():
        ins, outs = _fmt_specs(g.inputs), _fmt_specs(g.outputs)
        consts = [f"{k}={v!r}" for k, v in g.constants.items()]
        ins = ins + [f"const {c}" for c in consts]
        for i in range(max(len(ins), len(outs))):
            rows.append((g.name if i == 0 else "", str(g.num_calls) if i == 0 else "",
                         ins[i] if i < len(ins) else "", outs[i] if i < len(outs) else ""))
    return "\n".join(table.render(rows, breaks={k for k, r in enumerate(rows[1:]) if r[0] and k}))
