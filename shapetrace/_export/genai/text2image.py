"""The ``Text2ImagePipeline`` folder: a diffusers text-to-image pipeline (a UNet denoiser, CLIP text encoders).

GenAI's C++ pipeline reads the layout optimum-intel writes: ``model_index.json`` (the pipeline's own config; GenAI
picks its pipeline by ``_class_name`` and each component by the class named beside it), ``scheduler/
scheduler_config.json``, and one folder per component, each with ``openvino_model.xml`` and the component's
``config.json``: ``text_encoder/`` (``text_encoder_2/``), ``unet/``, ``vae_decoder/`` (``vae_encoder/``), and
``tokenizer/`` (``tokenizer_2/``) holding ``openvino_tokenizer.xml``, which GenAI tokenizes the prompt with. What
GenAI feeds each model (``src/cpp/src/image_generation/`` of openvino.genai 2026.4):

- a text encoder: input 0 the token ids ``[batch, max_position_embeddings]`` (i32 or i64, padded with the tokenizer's
  pad id); reads output 0 (the last hidden state, or the projected embeds of a ``...WithProjection``) and, with
  two encoders, output ``num_hidden_layers + 1``: ``hidden_states[-2]`` when the outputs are ordered
  ``(out0, out1, hidden_states.0, ...)``, as the recorded ``output_hidden_states=True`` call orders them;
- the UNet: inputs by name, ``sample``, ``timestep`` (i64, shape ``[1]``), ``encoder_hidden_states`` and, as the
  config asks, ``text_embeds`` / ``time_ids`` / ``timestep_cond``; reads output 0;
- the VAE decoder: input 0 the raw latents (GenAI divides by ``scaling_factor`` itself), output 0 the image;
  the VAE encoder (image-to-image only): one output, ``latent_parameters`` (mean and log-variance).

shapetrace's recorded graphs have those forms but for names and the timestep: so each part is the recorded graph's
OpenVINO model (or its ONNX file, read by OpenVINO), its inputs renamed to their leaf names
(``added_cond_kwargs.text_embeds`` -> ``text_embeds``) and a scalar or float timestep given the i64 ``[1]`` input
GenAI feeds (a Convert and a Reshape in front). The VAE encoder is no recorded text-to-image call: it is exported
afresh (``openvino.convert_model`` on ``vae.encode(sample).latent_dist.parameters``) and left out, with the reason
in the note, if that fails.

Which object: one with diffusers' ``components`` and ``config`` (its ``model_index.json``) whose components are
only ones the pipeline takes (:data:`TAKES`; :data:`IGNORED` may be there and are dropped), each model component
recorded. Nothing here names an architecture.
"""

from __future__ import annotations

import inspect

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..._core.optional import require
from ...manifest import GraphEntry
from ..flat import module_for
from .common import NoGenaiPipeline, Target, write_tokenizer

__all__ = ["IGNORED", "NEEDS", "PIPELINE", "TAKES", "UNET_FEEDS", "find", "write"]

#: the GenAI class that opens the folder
PIPELINE = "Text2ImagePipeline"

#: the components ``Text2ImagePipeline`` reads for a UNet pipeline, and those it must have
TAKES = ("scheduler", "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "unet", "vae")
NEEDS = ("scheduler", "tokenizer", "text_encoder", "unet", "vae")
#: components a diffusers pipeline may hold that GenAI does not run (no safety check, no IP-Adapter image)
IGNORED = ("safety_checker", "feature_extractor", "image_encoder")
#: the UNet inputs GenAI sets, by name
UNET_FEEDS = ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids", "timestep_cond")


@dataclass(frozen=True)
class Part:
    """One model folder of the layout: the component and the recorded graph (its method) it is written from."""

    folder: str
    component: str
    graph: str
    file: str  # the graph's OpenVINO (else ONNX) file, relative to the export


def find(obj: Any, rec: Any, entries: Sequence[GraphEntry]) -> Target:
    """The pipeline's model components and their recorded graphs; :class:`NoGenaiPipeline` saying what is missing
    or what the pipeline holds that ``Text2ImagePipeline`` does not take."""
    components = getattr(obj, "components", None)
    config = getattr(obj, "config", None)
    if not isinstance(components, Mapping) or not isinstance(config, Mapping) or not hasattr(obj, "save_config"):
        raise NoGenaiPipeline(f"{PIPELINE} needs a diffusers pipeline (components and a model_index.json config); "
                              f"this {type(obj).__name__} has none")
    held = {k: v for k, v in components.items() if v is not None}
    extra = sorted(k for k in held if k not in TAKES and k not in IGNORED)
    if extra:
        kinds = ", ".join(f"{k!r} ({type(held[k]).__name__})" for k in extra)
        raise NoGenaiPipeline(f"{PIPELINE} takes the components {', '.join(TAKES)}; this pipeline also has {kinds}, "
                              f"which GenAI's pipeline would not run")
    missing = [k for k in NEEDS if k not in held]
    if missing:
        raise NoGenaiPipeline(f"{PIPELINE} needs the components {', '.join(NEEDS)}; this pipeline has no "
                              f"{', '.join(missing)}")
    takes = _call_parameters(obj)
    if "image" in takes:  # GenAI dispatches a folder by model_index.json's class: this one is not text-to-image
        raise NoGenaiPipeline(f"{PIPELINE} draws from a prompt alone; this {type(obj).__name__}'s call takes an "
                              f"image{' and a mask' if 'mask_image' in takes else ''} (GenAI's "
                              f"{'InpaintingPipeline' if 'mask_image' in takes else 'Image2ImagePipeline'}, whose "
                              f"folders are not written yet)")
    graphs = _graphs_by_module(obj, rec, entries)
    parts = []
    for name in (k for k in TAKES if isinstance(held.get(k), torch.nn.Module)):
        method = "decode" if name == "vae" else "forward"
        entry = graphs.get((id(held[name]), method))
        if entry is None:
            raise NoGenaiPipeline(f"{PIPELINE} needs {name}.{method} exported, and no successful recorded graph is "
                                  f"of it; record a run of the pipeline that calls it")
        file = entry.files.get("openvino") or entry.files.get("onnx")
        if not file:
            raise NoGenaiPipeline(f"graph {entry.name!r} has neither an OpenVINO nor an ONNX file; export with "
                                  f"formats including 'openvino'")
        parts.append(Part("vae_decoder" if name == "vae" else name, name, entry.name, file))
    unet = next(p for p in parts if p.component == "unet")
    return Target(unet.graph, held["unet"], {"parts": tuple(parts), "dropped": tuple(k for k in IGNORED if k in held)})


def write(obj: Any, target: Target, folder: Path) -> dict[str, Any]:
    """Write the folder (the export's files are in ``folder.parent``); returns the note's text-to-image part."""
    ov = require("openvino", "genai", "the GenAI folder")
    components = obj.components
    stage = folder.parent
    obj.save_config(folder)  # model_index.json
    components["scheduler"].save_pretrained(folder / "scheduler")
    inputs: list[str] = []
    parts: dict[str, Any] = {}
    text_encoders = [p for p in target.extra["parts"] if p.component.startswith("text_encoder")]
    for part in target.extra["parts"]:
        module = components[part.component]
        model = ov.Core().read_model(str(stage / part.file))
        changes = _leaf_names(model)
        if part.component == "unet":
            changes += _unet_form(ov, model)
        if part.component.startswith("text_encoder") and len(text_encoders) > 1:
            _check_hidden_state_output(model, module.config, part)
        _save(ov, model, module, folder / part.folder)
        inputs += [f"{part.folder}/{n}" for p in model.inputs for n in sorted(p.get_names())[:1]]
        parts[part.folder] = {"graph": part.graph, "changed": changes}
    parts["vae_encoder"] = _write_vae_encoder(ov, components["vae"], folder / "vae_encoder")
    tokenizers = {}
    for name in ("tokenizer", "tokenizer_2"):
        if components.get(name) is not None:
            tokenizers[name] = write_tokenizer(components[name], folder / name, PIPELINE)
    return {"class_name": type(obj).__name__, "inputs": inputs, "parts": parts, "tokenizers": tokenizers,
            "dropped": list(target.extra["dropped"])}


# ------------------------------------------------------------------------------------------------ which graphs
def _graphs_by_module(obj: Any, rec: Any, entries: Sequence[GraphEntry]) -> dict[tuple[int, str], GraphEntry]:
    """``(id(module), method) -> entry``: each module method's first successful graph (not a variant)."""
    out: dict[tuple[int, str], GraphEntry] = {}
    for e in entries:
        if e.ok and e.variant_of is None:
            out.setdefault((id(module_for(obj, rec.graphs[e.name])), e.method), e)
    return out


# ------------------------------------------------------------------------------------------------ the IR forms
def _leaf_names(model: Any) -> list[str]:
    """Each input named by its leaf (``added_cond_kwargs.text_embeds`` -> ``text_embeds``), as GenAI sets them."""
    changed = []
    names = [p.get_any_name() for p in model.inputs]
    leaves = [n.rsplit(".", 1)[-1] for n in names]
    for port, name, leaf in zip(model.inputs, names, leaves):
        if leaf != name and leaves.count(leaf) == 1 and leaf not in names:
            port.get_tensor().set_names({leaf})
            changed.append(f"{name} -> {leaf}")
    return changed


def _unet_form(ov: Any, model: Any) -> list[str]:
    """The UNet's inputs as GenAI sets them: by name (:data:`UNET_FEEDS`), the timestep i64 ``[1]``."""
    names = {p.get_any_name() for p in model.inputs}
    unknown = sorted(names - set(UNET_FEEDS))
    missing = [n for n in UNET_FEEDS[:3] if n not in names]
    if unknown or missing:
        raise ValueError(f"the UNet graph's inputs are {sorted(names)}; {PIPELINE} sets {list(UNET_FEEDS)} by name "
                         f"(needs {list(UNET_FEEDS[:3])}; missing {missing}, not set {unknown}): record a call "
                         f"that passes only those")
    port = model.input("timestep")
    shape, kind = port.get_partial_shape(), port.get_element_type()
    if kind == ov.Type.i64 and shape.rank.is_static and shape.rank.get_length() == 1:
        return []
    if shape.rank.is_dynamic or shape.rank.get_length() > 1:
        raise ValueError(f"the UNet graph's timestep has shape {shape}; {PIPELINE} feeds one i64 value [1]")
    ops = ov.opset13 if hasattr(ov, "opset13") else require("openvino.runtime.opset13", "genai")
    old = port.get_node()
    new = ops.parameter([1], ov.Type.i64, name="timestep")
    value = new.output(0) if kind == ov.Type.i64 else ops.convert(new, kind).output(0)
    target_shape = np.array([d.get_length() if d.is_static else -1 for d in shape], dtype=np.int64)
    value = ops.reshape(value, ops.constant(target_shape), special_zero=False).output(0)
    for consumer in list(old.output(0).get_target_inputs()):
        consumer.replace_source_output(value)
    model.replace_parameter(model.get_parameter_index(old), new)
    new.output(0).get_tensor().set_names({"timestep"})
    model.validate_nodes_and_infer_types()
    return [f"timestep {kind.get_type_name()} {shape} -> i64 [1]"]


def _check_hidden_state_output(model: Any, config: Any, part: Part) -> None:
    """With two text encoders GenAI reads ``hidden_states[-2]`` at output ``num_hidden_layers + 1``."""
    layers = int(config.num_hidden_layers)
    names = [p.get_any_name() for p in model.outputs]
    want = f"hidden_states.{layers - 1}"
    if len(names) <= layers + 1 or names[layers + 1] != want:
        raise ValueError(f"{part.component} (graph {part.graph!r}) has outputs {names}; {PIPELINE} reads "
                         f"{want!r} (hidden_states[-2]) at output {layers + 1}: record the pipeline's own call, "
                         f"which passes output_hidden_states=True")


def _save(ov: Any, model: Any, module: Any, folder: Path) -> None:
    folder.mkdir(parents=True)
    ov.save_model(model, str(folder / "openvino_model.xml"), compress_to_fp16=False)
    if hasattr(module, "save_config"):
        module.save_config(folder)
    else:
        module.config.save_pretrained(folder)


# ------------------------------------------------------------------------------------------------ the VAE encoder
class _LatentParameters(torch.nn.Module):
    """``vae.encode(sample)``'s latent distribution parameters (mean, log-variance), as GenAI samples from them."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(sample).latent_dist.parameters


def _write_vae_encoder(ov: Any, vae: Any, folder: Path) -> dict[str, Any]:
    """``vae_encoder/``, exported afresh (no text-to-image call records ``vae.encode``); the note's part, with
    ``error`` when it could not be written (``Text2ImagePipeline`` does not read it)."""
    channels = int(getattr(vae.config, "in_channels", 3))
    size = 8 * 2 ** (len(getattr(vae.config, "block_out_channels", (0,))) - 1)
    try:
        with torch.no_grad():
            model = ov.convert_model(_LatentParameters(vae).eval(), example_input=torch.zeros(1, channels, size, size),
                                     input=[("sample", ov.PartialShape([-1, channels, -1, -1]))])
        model.outputs[0].get_tensor().set_names({"latent_parameters"})
        _save(ov, model, vae, folder)
    except Exception as e:  # noqa: BLE001 -- Text2ImagePipeline runs without it; the note says why
        return {"error": f"vae.encode not exported: {type(e).__name__}: {str(e)[:300]}"}
    return {"graph": None, "changed": ["exported afresh: vae.encode(sample).latent_dist.parameters -> "
                                       "latent_parameters"]}


def _call_parameters(obj: Any) -> set[str]:
    """The names the object's call takes (none when it has no inspectable ``__call__``)."""
    try:
        return set(inspect.signature(type(obj).__call__).parameters)
    except (TypeError, ValueError):
        return set()
