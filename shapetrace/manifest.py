"""The export manifest (``manifest.json``) as frozen records: :class:`Manifest` holds one :class:`GraphEntry` per
graph, each with its :class:`InputSpec` / :class:`OutputSpec` rows and its :class:`Dim` s.

:func:`read` is the one reader (it validates as it builds the records) and :func:`write` the one writer (atomic).
Export builds the records; verify, load, the backends and the CLI read attributes, never string keys. The JSON
layout (documented in docs/export.md, ``format_version`` 1) is unchanged by the records: ``GraphEntry.to_json()`` writes
the same keys in the same order, and keys a reader does not know are kept (``extra``) so that a rewrite loses
nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

from ._version import __version__
from .errors import SignatureFileError
from ._core.files import FORMAT_VERSION, inside, read_json, write_json
from ._core.jsonshape import example_shape as _example_shape, shape as _shape, text as _text

__all__ = ["MANIFEST", "Dim", "InputSpec", "OutputSpec", "GraphError", "GraphEntry", "Manifest", "read", "write",
           "store_parity", "pick"]

MANIFEST = "manifest.json"

DimSize = Union[int, str]  # a fixed size, a dim name, or an expression over dim names ("2*height")
_FROZEN: Mapping[str, Any] = MappingProxyType({})




@dataclass(frozen=True)
class Dim:
    """One named dynamic dim: its range (``max`` None = unbounded), the recorded size, where it appears."""

    name: str
    min: int
    max: int | None
    example: int
    sources: tuple[str, ...] = ()  # "input.dim" places that carry it, first one first

    def to_json(self) -> dict:
        return {"min": self.min, "max": self.max, "example": self.example, "sources": list(self.sources)}

    @classmethod
    def from_json(cls, name: str, d: Mapping[str, Any]) -> "Dim":
        hi = d.get("max")
        example = _shape([d["example"]])[0]
        if not isinstance(example, int):
            raise ValueError(f"dim {name!r} has example {example!r}; it is a size")
        return cls(name, int(d.get("min") or 0), None if hi is None else int(hi), example,
                   tuple(d.get("sources") or ()))


@dataclass(frozen=True)
class InputSpec:
    """One flat graph input: dtype name, shape with dim names, the recorded shape, integer value range."""

    name: str
    dtype: str
    shape: tuple[DimSize, ...]
    example_shape: tuple[int, ...]
    value_range: tuple[int, int] | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "example_shape": list(self.example_shape),
                "value_range": None if self.value_range is None else list(self.value_range)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "InputSpec":
        vr = d.get("value_range")
        shape = _shape(d.get("shape"))
        return cls(_text(d["name"]), _text(d.get("dtype", "float32")), shape,
                   _example_shape(d.get("example_shape", shape)), None if vr is None else (int(vr[0]), int(vr[1])))


@dataclass(frozen=True)
class OutputSpec:
    """One flat graph output: ``name`` in the model file, ``key`` in the output tree (differs when renamed)."""

    name: str
    key: str
    dtype: str
    shape: tuple[DimSize, ...]
    example_shape: tuple[int, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "key": self.key, "dtype": self.dtype, "shape": list(self.shape),
                "example_shape": list(self.example_shape)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "OutputSpec":
        shape = _shape(d.get("shape"))
        return cls(_text(d["name"]), _text(d.get("key", d["name"])), _text(d.get("dtype", "float32")), shape,
                   _example_shape(d.get("example_shape", shape)))


@dataclass(frozen=True)
class GraphError:
    """Why a graph failed to export."""

    type: str
    message: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    def to_json(self) -> dict:
        return {"type": self.type, "message": self.message, "where": self.where}

    @classmethod
    def from_json(cls, d: Any) -> "GraphError":
        if isinstance(d, Mapping):
            return cls(str(d.get("type", "error")), str(d.get("message", "")), str(d.get("where", "")))
        return cls("error", str(d))


_NO_FILES: Mapping[str, Any] = MappingProxyType({"onnx": None, "openvino": None, "inputs": None, "outputs": None})
# JSON keys written by GraphEntry.to_json, in order (the attribute is named where the key is a Python keyword)
_ENTRY_KEYS = ("name", "module", "method", "class", "files", "inputs", "outputs", "constants", "input_tree",
               "output_tree", "dims", "constraints", "guards", "specialized", "promoted", "tools", "timings",
               "seconds", "peak_rss_bytes", "weights_bytes", "sizes", "error", "variant_of", "weights_dtype",
               "quantization")


@dataclass(frozen=True)
class GraphEntry:
    """One graph of an export: where it came from, its files, its flat signature, dims and constraints.

    ``constraints`` are what a call must respect (pruned: guards implied by the dim ranges or by other
    constraints are left out); ``guards`` are every guard torch.export reported, translated to dim names.
    ``error`` is set (and ``files`` empty) when the graph failed to export.
    """

    name: str
    module: str = ""
    method: str = "forward"
    cls: str = ""  # "package.module:Class" of the module ("class" in JSON)
    files: Mapping[str, Any] = field(default_factory=lambda: _NO_FILES)
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    constants: Mapping[str, Any] = field(default_factory=lambda: _FROZEN)
    input_tree: Mapping[str, Any] = field(default_factory=lambda: _FROZEN)
    output_tree: Mapping[str, Any] = field(default_factory=lambda: _FROZEN)
    dims: Mapping[str, Dim] = field(default_factory=lambda: _FROZEN)
    constraints: tuple[str, ...] = ()
    guards: tuple[str, ...] = ()
    specialized: tuple[Mapping[str, Any], ...] = ()
    promoted: tuple[str, ...] = ()
    tools: Mapping[str, Any] = field(default_factory=lambda: _FROZEN)
    timings: Mapping[str, float] = field(default_factory=lambda: _FROZEN)
    seconds: float | None = None
    peak_rss_bytes: int | None = None
    weights_bytes: int | None = None
    sizes: Mapping[str, int] = field(default_factory=lambda: _FROZEN)
    error: GraphError | None = None
    variant_of: str | None = None  # the method's first graph, when its calls came in several structures
    weights_dtype: str | None = None  # the module's floating-point parameter dtype when it was exported
    quantization: Mapping[str, Any] | None = None  # export_all(quantize=...): mode, NNCF, calls, quality (quantize.py)
    extra: Mapping[str, Any] = field(default_factory=lambda: _FROZEN, repr=False)  # JSON keys this version does not know
    # What the other stages act on. In JSON these stay keys of "tools" (as manifests have always written them); in
    # memory they are fields, and ``tools`` holds diagnostics only (a key of BEHAVIOUR_KEYS given in ``tools`` moves
    # to its field when the entry is made).
    #: Why the graph has no ONNX file though ONNX was asked for (export degraded it on purpose); None when it has one.
    no_onnx: str | None = None
    #: Inputs exported as their ``(..., 2)`` real view (``view_as_real``): load converts a complex argument so.
    complex_inputs: tuple[str, ...] = ()
    #: ``{input: last valid index}`` of integer inputs that index a table: load refuses an index past it.
    index_bounds: Mapping[str, int] = field(default_factory=lambda: _FROZEN)
    #: Calls the module made of itself, past the proxy (``generate``): load serves its own ``forward`` too.
    calls_without_proxy: int = 0
    #: Cache outputs the trace does not return (``{"outputs": [...], "why": ...}``): None in their place at load.
    dropped_outputs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        moved = {k: v for k, v in self.tools.items() if k in BEHAVIOUR_KEYS}
        if not moved:
            return
        object.__setattr__(self, "tools", MappingProxyType({k: v for k, v in self.tools.items() if k not in moved}))
        for key, value in moved.items():
            if getattr(self, key) == _BEHAVIOUR_DEFAULTS[key]:
                object.__setattr__(self, key, _BEHAVIOUR_TYPES[key](value))

    @property
    def ok(self) -> bool:
        return self.error is None

    def lacks(self) -> list[str]:
        """The JSON keys that serving this graph needs and its entry lacks (empty for what export_all writes)."""
        have = {"module": self.module, "class": self.cls, "input_tree": self.input_tree,
                "output_tree": self.output_tree}
        return [k for k, v in have.items() if not v]

    @property
    def label(self) -> str:
        """``unet`` or ``vae.decode``: the module path, and the method unless it is ``forward``."""
        return self.module if self.method == "forward" else f"{self.module}.{self.method}"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(f"graph {self.name!r} has no input {name!r}; inputs: {', '.join(self.input_names)}")

    def file(self, kind: str) -> str | None:
        """The file name of ``kind`` (``onnx``, ``openvino``, ``inputs``, ``outputs``), or None."""
        value = self.files.get(kind)
        return value if isinstance(value, str) and value else None

    def file_names(self) -> Iterator[str]:
        """Every file this graph owns in the export folder (the IR's ``.bin`` included)."""
        for value in self.files.values():
            for f in value if isinstance(value, list) else [value]:
                if isinstance(f, str) and f:
                    yield f
                    if f.endswith(".xml"):
                        yield f[:-4] + ".bin"

    def _tools_json(self) -> dict:
        """``tools`` as JSON has it: the diagnostics, and every behaviour field that is set, under its own key."""
        out = dict(self.tools)
        for key in sorted(BEHAVIOUR_KEYS):
            value = getattr(self, key)
            if value != _BEHAVIOUR_DEFAULTS[key]:
                out[key] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, Mapping) \
                    else value
        return out

    def to_json(self) -> dict:
        values = {"class": self.cls, "files": dict(self.files), "inputs": [i.to_json() for i in self.inputs],
                  "outputs": [o.to_json() for o in self.outputs], "constants": dict(self.constants),
                  "input_tree": self.input_tree, "output_tree": self.output_tree,
                  "dims": {n: d.to_json() for n, d in self.dims.items()}, "constraints": list(self.constraints),
                  "guards": list(self.guards), "specialized": [dict(s) for s in self.specialized],
                  "promoted": list(self.promoted), "tools": self._tools_json(), "timings": dict(self.timings),
                  "sizes": dict(self.sizes), "error": None if self.error is None else self.error.to_json(),
                  "quantization": None if self.quantization is None else dict(self.quantization)}
        out = {k: values[k] if k in values else getattr(self, k) for k in _ENTRY_KEYS}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "GraphEntry":
        err = d.get("error")
        return cls(
            name=d["name"], module=d.get("module", ""), method=d.get("method", "forward"), cls=d.get("class", ""),
            files=MappingProxyType(dict(d.get("files") or {})),
            inputs=tuple(InputSpec.from_json(x) for x in d.get("inputs") or ()),
            outputs=tuple(OutputSpec.from_json(x) for x in d.get("outputs") or ()),
            constants=MappingProxyType(dict(d.get("constants") or {})),
            input_tree=d.get("input_tree") or _FROZEN, output_tree=d.get("output_tree") or _FROZEN,
            dims=MappingProxyType({n: Dim.from_json(n, x) for n, x in (d.get("dims") or {}).items()}),
            constraints=tuple(d.get("constraints") or ()),
            guards=tuple(d.get("guards", d.get("constraints")) or ()),
            specialized=tuple(MappingProxyType(dict(s)) for s in d.get("specialized") or ()),
            promoted=tuple(d.get("promoted") or ()), tools=MappingProxyType(dict(d.get("tools") or {})),
            timings=MappingProxyType(dict(d.get("timings") or {})), seconds=d.get("seconds"),
            peak_rss_bytes=d.get("peak_rss_bytes"), weights_bytes=d.get("weights_bytes"),
            sizes=MappingProxyType(dict(d.get("sizes") or {})),
            error=None if err is None else GraphError.from_json(err), variant_of=d.get("variant_of"),
            weights_dtype=d.get("weights_dtype"), quantization=d.get("quantization"),
            extra=MappingProxyType({k: v for k, v in d.items() if k not in _ENTRY_KEYS}))


def _frozen_map(value: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


#: The behaviour fields of :class:`GraphEntry` that JSON keeps under ``tools``, with how each is read.
_BEHAVIOUR_TYPES: Mapping[str, Any] = MappingProxyType({
    "no_onnx": lambda v: None if v is None else str(v),
    "complex_inputs": lambda v: tuple(v or ()),
    "index_bounds": lambda v: MappingProxyType({str(k): int(b) for k, b in dict(v or {}).items()}),
    "calls_without_proxy": lambda v: int(v or 0),
    "dropped_outputs": lambda v: None if v is None else _frozen_map(v),
})
BEHAVIOUR_KEYS = frozenset(_BEHAVIOUR_TYPES)
_BEHAVIOUR_DEFAULTS: Mapping[str, Any] = MappingProxyType({"no_onnx": None, "complex_inputs": (),
                                                           "index_bounds": _FROZEN, "calls_without_proxy": 0,
                                                           "dropped_outputs": None})


_MANIFEST_KEYS = ("format_version", "shapetrace_version", "object_class", "created", "tools", "graphs", "parity",
                  "skeleton", "genai")


@dataclass(frozen=True)
class Manifest:
    """A whole export: the object it was made from, tool versions, the graphs, and the stored parity report
    (``parity``: the JSON of a :class:`~shapetrace.ParityReport`, or None before verify)."""

    graphs: tuple[GraphEntry, ...]
    object_class: str = ""
    created: str = ""
    tools: Mapping[str, Any] = field(default_factory=lambda: _FROZEN)
    parity: Mapping[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    shapetrace_version: str = __version__
    extra: Mapping[str, Any] = field(default_factory=lambda: _FROZEN, repr=False)
    #: how to rebuild the object without its weights (:func:`shapetrace.load_pipeline`): ``{"format", "root",
    #: "dropped"}`` (the tree, docs/deploy.md), or ``{"error": why}`` when it could not be written; None in exports
    #: older than the skeleton
    skeleton: Mapping[str, Any] | None = field(default=None, repr=False)
    #: the folder OpenVINO GenAI opens (``export_all(..., genai=True)``, :mod:`shapetrace._export.genai`):
    #: ``{"pipeline": "LLMPipeline" or "WhisperPipeline", "dir": "genai", "graph", "module", "inputs", "outputs",
    #: "states", "files", "tokenizer", ...}``, or ``{"error": why}`` when there is none; None when it was not asked for
    genai: Mapping[str, Any] | None = field(default=None, repr=False)

    def graph(self, name: str) -> GraphEntry:
        for g in self.graphs:
            if g.name == name:
                return g
        raise KeyError(f"no graph {name!r} in this export; it holds {', '.join(self.names) or '(none)'}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.graphs)

    @property
    def exported(self) -> tuple[GraphEntry, ...]:
        """The graphs that exported (no error)."""
        return tuple(g for g in self.graphs if g.ok)

    def with_parity(self, parity: Mapping[str, Any] | None) -> "Manifest":
        return dataclasses.replace(self, parity=parity)

    def to_json(self) -> dict:
        out = {"format_version": self.format_version, "shapetrace_version": self.shapetrace_version,
               "object_class": self.object_class, "created": self.created, "tools": dict(self.tools),
               "graphs": [g.to_json() for g in self.graphs], "parity": self.parity}
        if self.skeleton is not None:
            out["skeleton"] = self.skeleton
        if self.genai is not None:
            out["genai"] = self.genai
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = MANIFEST) -> "Manifest":
        graphs = d.get("graphs")
        if not isinstance(graphs, list):
            raise SignatureFileError(f"{where} has no valid 'graphs' list; re-create it with export_all")
        entries = []
        for i, g in enumerate(graphs):
            if not isinstance(g, dict) or not isinstance(g.get("name"), str):
                raise SignatureFileError(f"{where}: graph entry #{i} has no name; re-create it with export_all")
            if g.get("error") is None:
                missing = [k for k in ("files", "inputs", "outputs") if not isinstance(g.get(k), (dict, list))]
                if missing:
                    raise SignatureFileError(f"{where}: graph {g['name']!r} lacks {', '.join(missing)}; re-create "
                                             f"it with export_all")
            try:
                entries.append(GraphEntry.from_json(g))
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
                raise SignatureFileError(f"{where}: graph {g['name']!r} is malformed ({type(e).__name__}: {e}); "
                                         f"re-create it with export_all") from e
        return cls(tuple(entries), str(d.get("object_class") or ""), str(d.get("created") or ""),
                   MappingProxyType(dict(d.get("tools") or {})), d.get("parity"), int(d["format_version"]),
                   str(d.get("shapetrace_version") or ""),
                   MappingProxyType({k: v for k, v in d.items() if k not in _MANIFEST_KEYS}),
                   d.get("skeleton") if isinstance(d.get("skeleton"), dict) else None,
                   d.get("genai") if isinstance(d.get("genai"), dict) else None)


def read(out_dir: str | Path) -> Manifest:
    """Read and validate ``out_dir/manifest.json`` (:class:`SignatureFileError` when missing, corrupt, too new)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SignatureFileError(f"{out} is a file, not a folder: pass the folder export_all() wrote")
    path = out / MANIFEST
    manifest = Manifest.from_json(read_json(path, what="export manifest"), where=str(path))
    for e in manifest.graphs:  # a tampered manifest never makes a reader open a file outside the folder
        for kind, value in e.files.items():
            if not (value is None or isinstance(value, str) or
                    (isinstance(value, list) and all(isinstance(f, str) for f in value))):
                raise SignatureFileError(f"{path}: graph {e.name!r}'s files[{kind!r}] is {value!r:.60}, not a file "
                                         f"name (or a list of them); re-create it with export_all")
        for f in e.file_names():
            inside(out, f, f"graph {e.name!r}'s file")
    return manifest


def write(out_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest`` into ``out_dir/manifest.json`` atomically; returns the path."""
    path = Path(out_dir) / MANIFEST
    write_json(path, manifest.to_json())
    return path


def store_parity(out_dir: str | Path, parity: Mapping[str, Any] | None) -> Path:
    """Set the manifest's ``parity`` and change nothing else in the file (atomic rewrite)."""
    path = Path(out_dir) / MANIFEST
    data = read_json(path, what="export manifest")
    data["parity"] = parity
    write_json(path, data)
    return path


def pick(available: Sequence[str], wanted: Iterable[str] | str | None) -> tuple[list[str], list[str]]:
    """The ``graphs=`` argument of export / verify / load: ``(selected names, unknown names)``; all when None."""
    if wanted is None:
        return list(available), []
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    return [n for n in wanted if n in available], [n for n in wanted if n not in available]
