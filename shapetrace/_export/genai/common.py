"""What every GenAI folder shares: the target a writer found, the tokenizer converted by ``openvino-tokenizers``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..._core.optional import require

__all__ = ["NoGenaiPipeline", "Target", "tokenizer_of", "write_tokenizer"]


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
    base = transformers.PreTrainedTokenizerBase
    if isinstance(obj, base):
        return obj
    attrs: Mapping[str, Any] = getattr(obj, "__dict__", {}) or {}
    candidates = [getattr(obj, "tokenizer", None)] + list(attrs.values())
    for value in candidates:
        if isinstance(value, base):
            return value
        inner = getattr(value, "tokenizer", None)  # a processor holding one
        if isinstance(inner, base):
            return inner
    return None
