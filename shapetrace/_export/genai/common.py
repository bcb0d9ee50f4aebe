"""What every GenAI folder shares: the target a writer found, the tokenizer converted by ``openvino-tokenizers``, what
the object holds beside its model (tokenizer, feature extractor, the cache keyword its calls used)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..._core import tree
from ..._core.optional import require
from ...manifest import GraphEntry
from ..flat import module_for

__all__ = ["recorded_modules", "NoGenaiPipeline", "Target", "cache_argument", "feature_extractor_of", "tokenizer_of",
           "write_tokenizer"]


class NoGenaiPipeline(Exception):
    """The object holds nothing this GenAI pipeline runs (the message says what it holds instead)."""


@dataclass(frozen=True)
class Target:
    """What a writer's ``find`` chose: the graph it is written from, its module, anything else ``write`` needs."""

    graph: str
    module: Any
    extra: Mapping[str, Any] = field(default_factory=dict)


def write_tokenizer(tokenizer: Any, folder: Path, pipeline: str) -> str:
    """Save ``tokenizer`` into ``folder`` with its ``openvino_tokenizer.xml`` / ``openvino_detokenizer.xml``
    (``openvino_tokenizers.convert_tokenizer``); returns the note: its class, or why there is none."""
    if tokenizer is None:
        return (f"none found on the object: {pipeline} takes token ids only; convert one with "
                "openvino_tokenizers.convert_tokenizer into this folder")
    ov = require("openvino", "genai", "the GenAI folder")
    tokenizers = require("openvino_tokenizers", "genai", "the GenAI folder's tokenizer")
    tokenizer.save_pretrained(folder)
    tok, detok = tokenizers.convert_tokenizer(tokenizer, with_detokenizer=True)
    ov.save_model(tok, str(folder / "openvino_tokenizer.xml"))
    ov.save_model(detok, str(folder / "openvino_detokenizer.xml"))
    return type(tokenizer).__name__


def tokenizer_of(obj: Any) -> Any:
    """The tokenizer an object holds: itself, its ``tokenizer`` attribute (a pipeline, a processor), or the first
    attribute that is one."""
    transformers = require("transformers", "genai", "the GenAI folder")
    return _held(obj, transformers.PreTrainedTokenizerBase, "tokenizer")


def feature_extractor_of(obj: Any) -> Any:
    """The feature extractor (audio to model features) an object holds: itself, its ``feature_extractor`` attribute
    (a pipeline, a processor), or the first attribute that is one."""
    transformers = require("transformers", "genai", "the GenAI folder")
    return _held(obj, transformers.FeatureExtractionMixin, "feature_extractor")


def _held(obj: Any, base: type, name: str) -> Any:
    """``obj`` if it is a ``base``, else its attribute ``name``, else the first attribute that is one or holds one
    under ``name`` (a processor)."""
    if isinstance(obj, base):
        return obj
    attrs: Mapping[str, Any] = getattr(obj, "__dict__", {}) or {}
    for value in [getattr(obj, name, None)] + list(attrs.values()):
        if isinstance(value, base):
            return value
        inner = getattr(value, name, None)
        if isinstance(inner, base):
            return inner
    return None


def cache_argument(entries: Sequence[GraphEntry], name: str, module: Any) -> str:
    """The keyword the model's recorded calls passed the cache as (``cache``, ``past_key_values``)."""
    base = name.split("@", 1)[0]
    for e in entries:
        if e.ok and e.name.split("@", 1)[0] == base:
            caches = tree.cache_tensor_names(e.input_tree)
            for n in e.input_names:
                if n in caches:
                    return n.split(".", 1)[0]
    params = inspect.signature(module.forward).parameters
    for candidate in ("cache", "past_key_values"):
        if candidate in params:
            return candidate
    raise ValueError(f"{type(module).__name__}.forward takes no cache argument (neither 'cache' nor "
                     f"'past_key_values') and no recorded call passed one")


def recorded_modules(obj: Any, rec: Any, entries: Sequence[GraphEntry]) -> Iterator[tuple[str, Any]]:
    """``(graph, module)`` for each exported graph's live module, each module once (its first graph)."""
    seen: set[int] = set()
    for e in entries:
        if not e.ok:
            continue
        module = module_for(obj, rec.graphs[e.name])
        if id(module) not in seen:
            seen.add(id(module))
            yield e.name, module
