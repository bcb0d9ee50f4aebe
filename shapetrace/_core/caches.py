"""Cache objects (``DynamicCache``, ``EncoderDecoderCache`` and every other ``transformers`` cache class) as pytree
nodes, so that a decoder's KV cache is flattened into named tensors like any other argument or output.

We do not write the flattening ourselves: ``transformers.exporters`` registers its cache classes with torch's pytree
(``register_pytree_node``: the tensors as leaves, everything else as a JSON-native context), and we ask it to, the
first time :mod:`shapetrace._core.tree` meets a cache class it does not know. What we add: leaf names read off that
context (``cache.layers.0.keys``, ``cache.self_attention_cache.layers.1.values``) instead of positions, and the
context kept in the spec (it is JSON), so that ``load`` rebuilds the real cache class around runtime outputs.

Nothing is imported from transformers until a value of one of its classes is flattened.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Any, ContextManager

__all__ = ["knows", "leaf_names", "is_cache_node", "export_patches", "onnx_translations"]

_TRANSFORMERS_EXPORT = "transformers.exporters.exporter_dynamo"


def _exporter() -> Any:
    if "transformers" not in sys.modules:
        return None
    try:
        return importlib.import_module(_TRANSFORMERS_EXPORT)
    except ImportError:  # a transformers without exporters: caches stay opaque, as before
        return None


def export_patches(stage: str = "dynamo") -> ContextManager[Any]:
    """``transformers.exporters``' own reversible patches for ``stage`` (``"dynamo"``: what ``torch.export`` of any
    transformers model needs -- a sliding-window cache layer traced as a plain one instead of baking its Python
    token counter into the graph, attention through SDPA's math path on CPU, chunked vision attention as one batched
    call, optional kernels off; ``"openvino"``: ops OpenVINO's frontend has no rule for swapped for convertible
    ones), installed for the block; a no-op when transformers (or its exporters) is not loaded. The patches are the
    library's: shapetrace names no model here."""
    exporter = _exporter()
    if exporter is None:
        return contextlib.nullcontext()
    try:
        if stage != "dynamo":  # each stage's patches are registered when its exporter module is imported
            importlib.import_module(f"transformers.exporters.exporter_{stage}")
        utils = importlib.import_module("transformers.exporters.utils")
    except ImportError:
        return contextlib.nullcontext()
    return utils.apply_patches(stage)


def onnx_translations() -> dict:
    """``transformers.exporters``' ONNX lowerings of the aten ops torchlib lowers wrongly or not at all (a
    mixture-of-experts grouped matmul, ``index_put``, ``bincount``, ...), for ``torch.onnx.export``'s
    ``custom_translation_table``; empty when transformers' exporters are not loaded."""
    if _exporter() is None:
        return {}
    try:
        module = importlib.import_module("transformers.exporters.exporter_onnx")
    except ImportError:
        return {}
    return dict(getattr(module, "_ONNX_TRANSLATION_TABLE", None) or {})


def knows(cls: type) -> bool:
    """Register ``cls`` with torch's pytree if it is a transformers cache class; True when it now is one."""
    if not cls.__module__.startswith("transformers"):
        return False
    exporter = _exporter()
    if exporter is None or not exporter.is_cache_class(cls):
        return False
    exporter.register_pytree_node(cls)
    return True


def is_cache_node(cls: type) -> bool:
    """Is ``cls`` a cache class (its tensors are past keys / values: the sequence dim is ``past_sequence``)?"""
    exporter = _exporter() if cls.__module__.startswith("transformers") else None
    return bool(exporter is not None and exporter.is_cache_class(cls))


def leaf_names(context: Any, count: int) -> list[str] | None:
    """Names for the ``count`` tensor leaves of a transformers pytree context, by where each tensor sits in it
    (``layers.0.keys``); None when the context is not of that form."""
    names: dict[int, str] = {}

    def walk(node: Any, path: list[str]) -> None:
        if isinstance(node, dict):
            tag = node.get("_t")
            if tag in ("tensor", "sym") and isinstance(node.get("i"), int):
                names[node["i"]] = ".".join(path)
                return
            if tag in ("obj", "map"):
                walk(node.get("s", node.get("v")), path)
                return
            if tag in ("seq", "items"):
                walk(node.get("v"), path)
                return
            for k, v in node.items():
                if k != "_t":
                    walk(v, path + [str(k)])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str):  # "items" pairs
                    walk(v[1], path + [v[0]])
                else:
                    walk(v, path + [str(i)])

    walk(context, [])
    if sorted(names) != list(range(count)) or len(set(names.values())) != count or "" in names.values():
        return None
    return [names[i] for i in range(count)]
