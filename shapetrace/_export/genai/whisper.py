"""The ``WhisperPipeline`` folder: a speech-recognition encoder-decoder's ``generate``.

GenAI's ``WhisperPipeline`` reads the layout optimum-intel writes (openvino.genai ``src/cpp/src/whisper/``):

* ``openvino_encoder_model.xml``: input ``input_features`` ``[batch, mel bins, frames]`` (GenAI feeds one 30-second
  chunk, or whatever ``nb_max_frames`` says), output ``last_hidden_state``;
* ``openvino_decoder_model.xml``, stateful (GenAI has no other decoder form): inputs ``input_ids``,
  ``encoder_hidden_states``, ``beam_idx`` (i32; ``cache_position`` is optional and not written: positions follow
  from the cache length), output ``logits``, the self-attention cache kept inside as variables, reset between
  audio chunks. GenAI feeds the whole start-of-transcript prompt in the first call, then one token a call;
* ``openvino_tokenizer.xml`` / ``openvino_detokenizer.xml`` (``openvino_tokenizers.convert_tokenizer``, as
  optimum-intel converts it), ``config.json`` (GenAI reads ``max_source_positions``), ``generation_config.json``
  (start, end, no-timestamps, language and task tokens) and ``preprocessor_config.json``, from which GenAI's own
  C++ log-mel feature extractor takes ``feature_size``, ``sampling_rate``, ``hop_length``, ``n_fft``,
  ``chunk_length``, ``n_samples`` and ``nb_max_frames``.

Both graphs are exported by the library made for the job, ``transformers.exporters.exporter_openvino.
OpenVINOExporter`` with ``OpenVINOConfig(dynamic=True)``: the encoder (``get_encoder()``) on a batch of two
feature chunks; the decoder through :class:`DecoderStep`, one forward call as GenAI makes it (two sequences, a
self-attention cache of three tokens, two new tokens), which the exporter folds into variables behind a
``beam_idx`` reorder. The cross-attention keys and values are computed from ``encoder_hidden_states`` at every
call (GenAI keeps that input set for the whole chunk); optimum-intel instead caches them in extra variables, which
saves two projections per layer and step but needs graph surgery the exporter does not do.

One thing is written differently from the model's own files: GenAI's generation config treats a missing
``is_multilingual`` as true and then asks for ``lang_to_id``, where Hugging Face's ``generate`` detects a language
only when ``lang_to_id`` is there. So a config without ``is_multilingual`` gets the value ``generate`` acts on.

Nothing here names an architecture: the model is the recorded module that is an encoder-decoder
``PreTrainedModel`` able to ``generate`` whose main input (and its encoder's) is ``input_features``; the feature
extractor is the object's whose settings GenAI's extractor reads; the cache keyword is the one its recorded calls
used.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import torch

from ..._core.optional import require
from ...manifest import GraphEntry
from .common import (NoGenaiPipeline, Target, cache_argument, feature_extractor_of, recorded_modules, tokenizer_of,
                     write_tokenizer)

__all__ = ["DECODER_INPUTS", "DecoderStep", "ENCODER_INPUTS", "FEATURE_SETTINGS", "PIPELINE", "find", "write"]

#: the GenAI class that opens the folder
PIPELINE = "WhisperPipeline"

#: what ``WhisperPipeline`` feeds the encoder and the decoder
ENCODER_INPUTS = ("input_features",)
DECODER_INPUTS = ("input_ids", "encoder_hidden_states", "beam_idx")

#: what GenAI's C++ feature extractor reads from ``preprocessor_config.json``
FEATURE_SETTINGS = ("feature_size", "sampling_rate", "hop_length", "n_fft", "chunk_length", "n_samples",
                    "nb_max_frames")


def find(obj: Any, rec: Any, entries: Sequence[GraphEntry]) -> Target:
    """The first recorded encoder-decoder that can ``generate`` from audio features."""
    name, module = _speech_model(obj, rec, entries)
    return Target(name, module, {"cache_arg": cache_argument(entries, name, module)})


def write(obj: Any, target: Target, folder: Path) -> dict[str, Any]:
    """Write the folder; returns the note's Whisper part (inputs, outputs, states, tokenizer, files)."""
    features = _feature_extractor(obj)
    tokenizer = tokenizer_of(obj)
    if tokenizer is None:
        raise ValueError(f"{PIPELINE} returns text through the converted tokenizer, and the object holds none: "
                         "record the pipeline (or an object holding the model's tokenizer), not the bare model")
    return _write_whisper(target.module, target.extra["cache_arg"], features, tokenizer, folder)


class DecoderStep(torch.nn.Module):
    """One decoder call as ``WhisperPipeline`` makes it: ``(input_ids, encoder_hidden_states, cache)`` to
    ``{"logits", "cache"}``, ``cache`` being the self-attention cache only (a ``DynamicCache``). The
    cross-attention cache the model is handed is empty, so its keys and values come from ``encoder_hidden_states``
    in the graph instead of being inputs."""

    def __init__(self, model: Any, cache_arg: str) -> None:
        super().__init__()
        self.model, self.cache_arg = model, cache_arg

    def forward(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor, cache: Any) -> dict[str, Any]:
        cache_utils = require("transformers.cache_utils", "genai", "the GenAI folder")
        both = cache_utils.EncoderDecoderCache(cache, cache_utils.DynamicCache())
        out = self.model(decoder_input_ids=input_ids, encoder_outputs=(encoder_hidden_states,),
                         **{self.cache_arg: both}, use_cache=True, return_dict=True)
        return {"logits": out.logits, "cache": both.self_attention_cache}


# ------------------------------------------------------------------------------------------------ which model
def _speech_model(obj: Any, rec: Any, entries: Sequence[GraphEntry]) -> tuple[str, Any]:
    """The first recorded graph whose module is an encoder-decoder that generates from audio features."""
    transformers = require("transformers", "genai", "the GenAI folder")
    why: list[str] = []
    for graph, module in recorded_modules(obj, rec, entries):
        kind = type(module).__name__
        if not isinstance(module, transformers.PreTrainedModel) or not module.can_generate():
            why.append(f"{graph} ({kind}: no generate)")
        elif not getattr(module.config, "is_encoder_decoder", False):
            why.append(f"{graph} ({kind}: decoder-only)")
        elif getattr(module, "main_input_name", None) not in ENCODER_INPUTS:
            why.append(f"{graph} ({kind}: an encoder-decoder reading {module.main_input_name!r}, not audio "
                       f"features)")
        else:
            encoder = module.get_encoder()
            if encoder is module or getattr(encoder, "main_input_name", None) not in ENCODER_INPUTS:
                why.append(f"{graph} ({kind}: no separate encoder of input_features from get_encoder())")
            else:
                return graph, module
    raise NoGenaiPipeline(f"{PIPELINE} needs an encoder-decoder's generate from audio features (input_features), "
                          f"and the recorded graphs are {'; '.join(why) or 'none'}")


def _feature_extractor(obj: Any) -> Any:
    """The object's feature extractor, when GenAI's own extractor can read its settings."""
    features = feature_extractor_of(obj)
    if features is None:
        raise ValueError(f"{PIPELINE} computes the features itself from preprocessor_config.json, and the object "
                         "holds no feature extractor: record the pipeline (or an object holding the model's feature "
                         "extractor), not the bare model")
    missing = [k for k in FEATURE_SETTINGS if getattr(features, k, None) is None]
    if missing:
        raise ValueError(f"{PIPELINE}'s log-mel feature extractor reads {list(FEATURE_SETTINGS)} from "
                         f"preprocessor_config.json, and {type(features).__name__} has no {missing}: GenAI would "
                         f"compute other features than the model was trained on")
    return features


# ------------------------------------------------------------------------------------------------ the folder
def _write_whisper(module: Any, cache_arg: str, features: Any, tokenizer: Any, folder: Path) -> dict[str, Any]:
    ov = require("openvino", "genai", "the GenAI folder")
    exporter = require("transformers.exporters.exporter_openvino", "genai", "the GenAI folder")
    config = exporter.OpenVINOConfig(dynamic=True)
    device = next(module.parameters()).device
    chunks = torch.randn(2, features.feature_size, features.nb_max_frames,
                         generator=torch.Generator().manual_seed(0)).to(device)
    encoder = exporter.OpenVINOExporter().export(module.get_encoder(), {"input_features": chunks}, config).program
    decoder = exporter.OpenVINOExporter().export(DecoderStep(module, cache_arg),
                                                 _decoder_inputs(module, cache_arg, chunks), config).program
    enc_in, enc_out = _names(encoder.inputs), _names(encoder.outputs)
    dec_in, dec_out = _names(decoder.inputs), _names(decoder.outputs)
    states = sum(op.get_type_name() == "ReadValue" for op in decoder.get_ops())
    missing = ([n for n in ENCODER_INPUTS if n not in enc_in] + [n for n in ("last_hidden_state",) if n not in enc_out]
               + [n for n in DECODER_INPUTS if n not in dec_in] + [n for n in ("logits",) if n not in dec_out])
    if missing or not states:
        raise ValueError(f"the graphs exported for GenAI are encoder {enc_in} -> {enc_out} and decoder {dec_in} -> "
                         f"{dec_out} with {states} cache variables; {PIPELINE} needs encoder {list(ENCODER_INPUTS)} "
                         f"-> ['last_hidden_state'] and decoder {list(DECODER_INPUTS)} -> ['logits'] with the cache "
                         f"as variables (missing: {missing or 'the variables'})")
    ov.save_model(encoder, str(folder / "openvino_encoder_model.xml"), compress_to_fp16=False)
    ov.save_model(decoder, str(folder / "openvino_decoder_model.xml"), compress_to_fp16=False)
    module.config.save_pretrained(folder)
    generation = copy.deepcopy(module.generation_config)
    if not hasattr(generation, "is_multilingual"):  # what generate does: detect a language only with lang_to_id
        generation.is_multilingual = hasattr(generation, "lang_to_id")
    generation.save_pretrained(folder)
    features.save_pretrained(folder)
    return {"inputs": dec_in, "outputs": dec_out, "states": states, "encoder_inputs": enc_in,
            "encoder_outputs": enc_out, "is_multilingual": bool(generation.is_multilingual),
            "feature_extractor": type(features).__name__,
            "converted_with": "transformers.exporters.exporter_openvino.OpenVINOExporter",
            "tokenizer": write_tokenizer(tokenizer, folder, PIPELINE),
            "files": sorted(p.name for p in folder.iterdir())}


def _names(ports: Any) -> list[str]:
    return sorted(n for p in ports for n in p.get_names())


def _decoder_inputs(module: Any, cache_arg: str, chunks: torch.Tensor) -> dict[str, Any]:
    """One decoder call as GenAI makes it after the prompt: two sequences, a self-attention cache of three tokens
    from a first call, two new tokens (every size above one, so batch, sequence and past stay dynamic)."""
    batch, past, new = chunks.shape[0], 3, 2
    vocab = module.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch, past + new), generator=torch.Generator().manual_seed(0)).to(chunks.device)
    with torch.no_grad():
        hidden = module.get_encoder()(input_features=chunks).last_hidden_state
        first = module(decoder_input_ids=ids[:, :past], encoder_outputs=(hidden,), use_cache=True, return_dict=True)
    cache = next((c for c in (getattr(first, k, None) for k in (cache_arg, "cache", "past_key_values"))
                  if c is not None), None)
    self_attention = getattr(cache, "self_attention_cache", None)
    if self_attention is None:
        raise ValueError(f"{type(module).__name__} returned no encoder-decoder cache (with a self_attention_cache) "
                         f"from a first call with use_cache=True, got {type(cache).__name__}")
    return {"input_ids": ids[:, past:], "encoder_hidden_states": hidden, "cache": self_attention}
