"""The ``LLMPipeline`` folder: a decoder-only language model's ``generate``.

GenAI's C++ pipelines read one layout, the one optimum-intel writes. For ``LLMPipeline`` (and the
``ContinuousBatchingPipeline`` under OpenVINO Model Server): a stateful ``openvino_model.xml`` whose inputs are
``input_ids``, ``attention_mask`` ``[batch, past + sequence]``, ``position_ids`` and ``beam_idx`` (i32), output
``logits``, the KV cache kept inside as variables and attention kept as one ``ScaledDotProductAttention`` op (which
GenAI's paged-attention transformation replaces); ``openvino_tokenizer.xml`` / ``openvino_detokenizer.xml``
(``openvino_tokenizers.convert_tokenizer``); the model's ``config.json``, ``generation_config.json`` and tokenizer
files.

shapetrace's own decoder-step graphs do not have that form: ``generate`` drops an all-ones attention mask, so the
recorded step takes none, and the prompt and the step are two variants. So the recorded module is exported once
more, for GenAI, by the library made for the job: ``transformers.exporters.exporter_openvino.OpenVINOExporter``
(``OpenVINOConfig(dynamic=True)``, stateful by default) on one forward call with the inputs GenAI feeds -- a
batch of two, a cache of three tokens from a first call, two new tokens, the mask over all five -- so batch,
sequence and past length are all dynamic and one model serves the prompt and every step. Nothing here names an
architecture: the model is whichever recorded module is a decoder-only ``PreTrainedModel`` that can ``generate``;
the cache argument's name is the one its recorded calls used.

:func:`find` names the graph (or raises :class:`NoGenaiPipeline` saying what the object holds instead);
:func:`write` writes the folder and returns the manifest note's pipeline-specific part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..._core.optional import require
from ...manifest import GraphEntry
from .common import NoGenaiPipeline, Target, cache_argument, recorded_modules, tokenizer_of, write_tokenizer

__all__ = ["LLM_INPUTS", "PIPELINE", "find", "write"]

#: the GenAI class that opens the folder
PIPELINE = "LLMPipeline"

#: what ``LLMPipeline`` feeds the model
LLM_INPUTS = ("input_ids", "attention_mask", "position_ids", "beam_idx")


def find(obj: Any, rec: Any, entries: Sequence[GraphEntry]) -> Target:
    """The first recorded decoder-only language model that can ``generate``."""
    name, module = _language_model(obj, rec, entries)
    return Target(name, module, {"cache_arg": cache_argument(entries, name, module)})


def write(obj: Any, target: Target, folder: Path) -> dict[str, Any]:
    """Write the folder; returns the note's LLM part (inputs, outputs, states, tokenizer, files)."""
    return _write_llm(obj, target.module, target.extra["cache_arg"], folder)


# ------------------------------------------------------------------------------------------------ which model
def _language_model(obj: Any, rec: Any, entries: Sequence[GraphEntry]) -> tuple[str, Any]:
    """The first recorded graph whose module is a decoder-only language model GenAI's ``LLMPipeline`` runs."""
    transformers = require("transformers", "genai", "the GenAI folder")
    is_multimodal = require("transformers.exporters.utils", "genai", "the GenAI folder").is_multimodal
    why: list[str] = []
    for graph, module in recorded_modules(obj, rec, entries):
        kind = type(module).__name__
        if not isinstance(module, transformers.PreTrainedModel) or not module.can_generate():
            why.append(f"{graph} ({kind}: no generate)")
        elif getattr(module.config, "is_encoder_decoder", False):
            why.append(f"{graph} ({kind}: an encoder-decoder)")
        elif is_multimodal(module):
            why.append(f"{graph} ({kind}: multimodal; VLMPipeline folders are not written)")
        else:
            return graph, module
    raise NoGenaiPipeline("LLMPipeline needs a decoder-only language model's generate, and the recorded graphs "
                          f"are {'; '.join(why) or 'none'}")


# ------------------------------------------------------------------------------------------------ the folder
def _write_llm(obj: Any, module: Any, cache_arg: str, folder: Path) -> dict[str, Any]:
    ov = require("openvino", "genai", "the GenAI folder")
    exporter = require("transformers.exporters.exporter_openvino", "genai", "the GenAI folder")
    program = exporter.OpenVINOExporter().export(module, _sample_inputs(module, cache_arg),
                                                 exporter.OpenVINOConfig(dynamic=True)).program
    inputs = sorted(n for p in program.inputs for n in p.get_names())
    outputs = sorted(n for p in program.outputs for n in p.get_names())
    states = sum(op.get_type_name() == "ReadValue" for op in program.get_ops())
    missing = [n for n in LLM_INPUTS if n not in inputs] + [n for n in ("logits",) if n not in outputs]
    if missing or not states:
        raise ValueError(f"the model exported for GenAI has inputs {inputs}, outputs {outputs} and {states} cache "
                         f"variables; LLMPipeline needs inputs {list(LLM_INPUTS)}, output 'logits' and the cache as "
                         f"variables (missing: {missing or 'the variables'})")
    ov.save_model(program, str(folder / "openvino_model.xml"), compress_to_fp16=False)
    module.config.save_pretrained(folder)
    if getattr(module, "generation_config", None) is not None:
        module.generation_config.save_pretrained(folder)
    note: dict[str, Any] = {"inputs": inputs, "outputs": outputs, "states": states,
                            "converted_with": "transformers.exporters.exporter_openvino.OpenVINOExporter"}
    note["tokenizer"] = write_tokenizer(tokenizer_of(obj), folder, PIPELINE)
    note["files"] = sorted(p.name for p in folder.iterdir())
    return note


def _sample_inputs(module: Any, cache_arg: str) -> dict[str, Any]:
    """One forward call as GenAI makes it: two sequences, a cache of three tokens from a first call, two new tokens,
    the mask over all five (every size above one, so torch.export keeps batch, sequence and past dynamic)."""
    batch, past, new = 2, 3, 2
    vocab = module.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, past + new), generator=generator)
    device = next(module.parameters()).device
    ids = ids.to(device)
    mask = torch.ones(batch, past + new, dtype=torch.long, device=device)
    with torch.no_grad():
        first = module(input_ids=ids[:, :past], attention_mask=mask[:, :past], use_cache=True)
    cache = next((c for c in (getattr(first, k, None) for k in (cache_arg, "cache", "past_key_values"))
                  if c is not None), None)
    if cache is None:
        raise ValueError(f"{type(module).__name__} returned no cache from a first call with use_cache=True")
    positions = torch.arange(past, past + new, device=device)[None].expand(batch, -1)
    return {"input_ids": ids[:, past:], "attention_mask": mask, "position_ids": positions, cache_arg: cache,
            "use_cache": True}
