"""OpenVINO's stateful form of a decoder step: the KV cache kept inside the compiled model as variables.

:func:`make_stateful` turns the IR of a graph variant that takes a cache and returns it updated (``model@2``:
``cache.layers.0.keys`` in, ``output.cache.layers.0.keys`` out) into a model whose cache lives in OpenVINO
variables, with a ``beam_idx`` input that reorders them (beam search). The transformation itself is transformers'
(``transformers.exporters.exporter_openvino``: state reorder, ``apply_make_stateful_transformation``, zero-length
state initializers); we give it the pairs and dims from the manifest. ``verify`` runs the file with
:class:`shapetrace.backends.openvino_stateful.StatefulRunner`, ``load`` serves it with
:class:`shapetrace._serve.stateful.StatefulMethod`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._core.optional import require
from ..backends.openvino_stateful import STATEFUL_FILE, cache_pairs
from ..manifest import GraphEntry

__all__ = ["STATEFUL_FILE", "cache_pairs", "make_stateful"]


def make_stateful(xml: Path, out_xml: Path, entry: GraphEntry) -> dict[str, Any]:
    """Write the stateful form of ``entry``'s IR (``xml``) to ``out_xml``; returns what the manifest's tools note."""
    ov = require("openvino", "openvino")
    hf = require("transformers.exporters.exporter_openvino", "diffusers")
    transforms = require("openvino._offline_transformations", "openvino")
    pairs = cache_pairs(entry)
    if not pairs:
        raise ValueError(f"graph {entry.name!r} passes no cache through; nothing to make stateful")
    model = ov.Core().read_model(str(xml))
    init_dims = {}
    for name, out in pairs.items():
        shape = entry.input(name).shape
        init_dims[f"{name}{out}"] = ["batch" if axis == 0 else "grow" if isinstance(d, str) else int(d)
                                     for axis, d in enumerate(shape)]
    hf._fuse_state_reorder(model, list(pairs))
    transforms.apply_make_stateful_transformation(model, dict(pairs))
    hf._build_state_initializers(model, init_dims)
    hf._pin_state_update_shapes(model)
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return {"stateful_states": len(pairs), "stateful_from": entry.name}
