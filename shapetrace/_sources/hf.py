"""Folders saved with ``save_pretrained`` as export sources: :func:`open_folder` loads a diffusers pipeline
(``model_index.json``) or a transformers model as a pipeline (``config.json``) from local files only, and builds the
call it runs once -- from :class:`CallOptions`, or a default call for the pipeline's class.

Default calls (any option given replaces its default; ``--call-json`` keywords go last and win):

- diffusers: ``prompt`` "chef in the kitchen"; ``image`` / ``control_image`` (img2img, ControlNet, inpainting) a
  built-in drawing of a standing figure (:func:`shapetrace._sources.defaults.pose_image`) at the pipeline's size, and a
  centred white ``mask_image``; ``height`` / ``width`` the UNet's ``sample_size`` x the VAE's scale factor (512
  for SD 1.5); 2 steps; ``output_type="np"``; a ``torch.Generator`` seeded with ``--seed``.
- transformers, by task: text tasks get the prompt (``fill-mask`` with the mask token appended,
  ``question-answering`` a question and a context, ``zero-shot-classification`` two labels), generation tasks
  ``max_new_tokens=2``, image tasks the built-in drawing.

Nothing is downloaded: ``HF_HUB_OFFLINE=1`` is set before diffusers / transformers are imported, every load passes
``local_files_only=True``, and a folder that lacks a component or the weights its index names is refused first.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .._core.optional import require
from ..errors import SourceError
from .defaults import DEFAULT_PROMPT, pose_image

__all__ = ["CallOptions", "open_folder", "call_for", "TASK_BY_ARCHITECTURE", "DIFFUSERS_TASKS"]

_STEPS = 2
_MAX_NEW_TOKENS = 2
_WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt", "*.pth", "*.ckpt")
#: diffusers components that are not modules (they need their folder, not weights)
_NO_WEIGHTS = ("tokenizer", "scheduler", "feature_extractor", "image_processor", "processor")

#: architecture suffix (``config.architectures[0]``) -> transformers pipeline task
TASK_BY_ARCHITECTURE = {
    "ForSequenceClassification": "text-classification", "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering", "ForMaskedLM": "fill-mask", "ForCausalLM": "text-generation",
    "LMHeadModel": "text-generation", "ForConditionalGeneration": "text2text-generation",
    "ForImageClassification": "image-classification", "ForObjectDetection": "object-detection",
    "ForDepthEstimation": "depth-estimation", "ForSemanticSegmentation": "image-segmentation", "Model":
    "feature-extraction",
}
#: ``--task`` for a diffusers folder -> the AutoPipeline class that loads it (optimum-cli's task names)
DIFFUSERS_TASKS = {"text-to-image": "AutoPipelineForText2Image", "image-to-image": "AutoPipelineForImage2Image",
                   "inpainting": "AutoPipelineForInpainting"}
_IMAGE_TASKS = {"image-classification", "object-detection", "depth-estimation", "image-segmentation",
                "image-feature-extraction", "image-to-text"}
_GENERATION_TASKS = {"text-generation", "text2text-generation", "summarization", "translation"}


@dataclass(frozen=True)
class CallOptions:
    """The call options of ``shapetrace export`` (None = the default for the pipeline's class)."""

    prompt: str | None = None
    image: str | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    max_new_tokens: int | None = None
    call_json: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    task: str | None = None
    library: str | None = None  # "diffusers" / "transformers": force the loader
    trust_remote_code: bool = False


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _quiet(library: Any) -> None:
    logging = getattr(getattr(library, "utils", None), "logging", None)
    for name in ("disable_progress_bar", "set_verbosity_error"):
        if logging is not None and hasattr(logging, name):
            getattr(logging, name)()


def _has_weights(folder: Path) -> bool:
    return any(next(folder.glob(p), None) is not None for p in _WEIGHTS)


def _hub_name(config: Path) -> str:
    try:
        name = json.loads(config.read_text()).get("_name_or_path") or ""
    except (OSError, ValueError):
        return ""
    return f" (its config names {name!r})" if name and not Path(name).exists() else ""


def _read_index(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SourceError(f"{path} is not readable JSON ({e}); save the model again with save_pretrained") from e
    if not isinstance(data, dict):
        raise SourceError(f"{path} is not a JSON object; save the model again with save_pretrained")
    return data


def _check_diffusers_folder(folder: Path, index: Mapping[str, Any]) -> None:
    """Every component the index names must be in the folder, modules with their weights: never download."""
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[1] is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            raise SourceError(f"{folder}/model_index.json names component {name!r} ({value[1]}) but {sub} is "
                              f"missing; shapetrace never downloads: save the whole pipeline with save_pretrained")
        if not name.startswith(_NO_WEIGHTS) and (sub / "config.json").exists() and not _has_weights(sub):
            raise SourceError(f"{sub} holds config.json but no weights{_hub_name(sub / 'config.json')}; shapetrace "
                              f"never downloads: save the pipeline with save_pretrained into a local folder")


def open_folder(folder: Path, options: CallOptions) -> tuple[Any, Callable[[], Any], str, dict[str, str]]:
    """``(obj, run, label, call)`` for a save_pretrained folder (see the module docstring)."""
    library = options.library
    if library not in (None, "diffusers", "transformers"):
        raise SourceError(f"--library {library}: choose diffusers or transformers")
    if library != "transformers" and (folder / "model_index.json").is_file():
        return _open_diffusers(folder, options)
    if library != "diffusers" and (folder / "config.json").is_file():
        return _open_transformers(folder, options)
    raise SourceError(f"{folder} holds neither model_index.json (a diffusers pipeline) nor config.json (a "
                      f"transformers model); pass a folder written by save_pretrained")


# --------------------------------------------------------------------------------------------------- diffusers
def _open_diffusers(folder: Path, options: CallOptions) -> tuple[Any, Callable[[], Any], str, dict[str, str]]:
    index = _read_index(folder / "model_index.json")
    _check_diffusers_folder(folder, index)
    if options.task is not None and options.task not in DIFFUSERS_TASKS:
        raise SourceError(f"--task {options.task} for a diffusers pipeline: choose from {', '.join(DIFFUSERS_TASKS)}")
    _offline()
    diffusers = require("diffusers", "diffusers", "a diffusers folder")
    _quiet(diffusers)
    _quiet(require("transformers", "diffusers", "a diffusers folder"))
    loader = getattr(diffusers, DIFFUSERS_TASKS[options.task]) if options.task else diffusers.DiffusionPipeline
    try:
        pipe = loader.from_pretrained(str(folder), local_files_only=True,
                                      trust_remote_code=options.trust_remote_code)
    except Exception as e:
        raise SourceError(f"cannot load {folder} as a diffusers pipeline: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:300]}") from e
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    kwargs, shown = _diffusers_call(pipe, options)
    return pipe, lambda: pipe(**kwargs, **_generator(pipe, options.seed)), \
        f"{type(pipe).__name__} from {folder}", shown


def _size(pipe: Any) -> int:
    unet = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(getattr(unet, "config", None), "sample_size", None)
    scale = getattr(pipe, "vae_scale_factor", 8)
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    return int(sample * scale) if isinstance(sample, int) else 512


def _picture(options: CallOptions, width: int, height: int) -> Any:
    if options.image:
        image = Path(options.image)
        if not image.is_file():
            raise SourceError(f"--image {options.image}: no such file")
        pil = require("PIL.Image", "diffusers", "--image")
        try:
            return pil.open(image).convert("RGB").resize((width, height))
        except Exception as e:
            raise SourceError(f"--image {options.image}: not a readable image ({type(e).__name__}: {e})") from e
    return pose_image(width, height)


def _mask(width: int, height: int) -> Any:
    pil = require("PIL.Image", "diffusers", "the default mask")
    mask = pil.new("L", (width, height), 0)
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return mask


def _diffusers_call(pipe: Any, options: CallOptions) -> tuple[dict[str, Any], dict[str, str]]:
    params = inspect.signature(pipe.__call__).parameters
    size = _size(pipe)
    height, width = options.height or size, options.width or size
    kwargs: dict[str, Any] = {}
    if "prompt" in params:
        kwargs["prompt"] = options.prompt if options.prompt is not None else DEFAULT_PROMPT
    for name in ("image", "control_image"):
        if name in params:
            kwargs[name] = _picture(options, width, height)
    if "mask_image" in params:
        kwargs["mask_image"] = _mask(width, height)
    if "height" in params:
        kwargs.update(height=height, width=width)
    if "num_inference_steps" in params:
        kwargs["num_inference_steps"] = options.steps or _STEPS
    if "output_type" in params:
        kwargs["output_type"] = "np"
    kwargs.update(options.call_json)
    unknown = [k for k in options.call_json if k not in params]  # its **kwargs would swallow them silently
    if unknown:
        raise SourceError(f"--call-json: {type(pipe).__name__}.__call__ takes no {', '.join(map(repr, unknown))}; "
                          f"its arguments: {', '.join(n for n, p in params.items() if p.kind != p.VAR_KEYWORD)}")
    shown = {k: _show(v) for k, v in kwargs.items()}
    if "generator" in params and "generator" not in kwargs:
        shown["generator"] = f"seed {options.seed}"
    return kwargs, shown


def _generator(pipe: Any, seed: int) -> dict[str, Any]:
    """A fresh seeded generator per call, so that every run (torch, each runtime) draws the same noise."""
    if "generator" in inspect.signature(pipe.__call__).parameters:
        return {"generator": torch.Generator("cpu").manual_seed(seed)}
    return {}


def _show(value: Any) -> str:
    if hasattr(value, "size") and hasattr(value, "mode"):  # a PIL image
        return f"<image {value.size[0]}x{value.size[1]}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------------------ transformers
def task_of(config: Mapping[str, Any]) -> str | None:
    """The pipeline task for a transformers config: from its ``architectures`` (see TASK_BY_ARCHITECTURE)."""
    for arch in config.get("architectures") or ():
        for suffix, task in TASK_BY_ARCHITECTURE.items():
            if arch.endswith(suffix):
                return task
    return None


def _open_transformers(folder: Path, options: CallOptions) -> tuple[Any, Callable[[], Any], str, dict[str, str]]:
    config = _read_index(folder / "config.json")
    if not _has_weights(folder):
        raise SourceError(f"{folder} holds config.json but no weights (model.safetensors, pytorch_model.bin)"
                          f"{_hub_name(folder / 'config.json')}; shapetrace never downloads: save the model with "
                          f"save_pretrained into a local folder")
    task = options.task or task_of(config)
    if task is None:
        raise SourceError(f"cannot tell the task of {folder} from config.json (architectures="
                          f"{config.get('architectures')}); pass --task, e.g. --task text-classification")
    _offline()
    transformers = require("transformers", "diffusers", "a transformers folder")
    _quiet(transformers)
    try:
        # no local_files_only keyword: transformers 5 keeps a pipeline keyword for the call too, and a
        # text-generation pipeline hands it to generate(), which refuses it; HF_HUB_OFFLINE (above) keeps every
        # load local
        pipe = transformers.pipeline(task, model=str(folder), device="cpu",
                                     trust_remote_code=options.trust_remote_code)
    except Exception as e:
        raise SourceError(f"cannot load {folder} as a transformers {task!r} pipeline: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:300]}") from e
    args, kwargs = _transformers_call(pipe, task, options)
    shown = {"task": task, **({"inputs": _show(args[0])} if args else {}), **{k: _show(v) for k, v in kwargs.items()}}
    return pipe, lambda: pipe(*args, **kwargs), f"{type(pipe).__name__} ({task}) from {folder}", shown


def _transformers_call(pipe: Any, task: str, options: CallOptions) -> tuple[list[Any], dict[str, Any]]:
    prompt = options.prompt if options.prompt is not None else DEFAULT_PROMPT
    kwargs: dict[str, Any] = {}
    if task in _IMAGE_TASKS:
        args: list[Any] = [_picture(options, options.width or 224, options.height or 224)]
    elif task == "fill-mask":
        mask = getattr(getattr(pipe, "tokenizer", None), "mask_token", None) or "[MASK]"
        args = [prompt if mask in prompt else f"{prompt} {mask}"]
    elif task == "question-answering":
        args, kwargs = [], {"question": prompt, "context": "the chef is cooking in the kitchen"}
    elif task == "zero-shot-classification":
        args, kwargs = [prompt], {"candidate_labels": ["food", "city"]}
    else:
        args = [prompt]
    if task in _GENERATION_TASKS or options.max_new_tokens is not None:
        kwargs["max_new_tokens"] = options.max_new_tokens or _MAX_NEW_TOKENS
    kwargs.update(options.call_json)
    return args, kwargs


# ------------------------------------------------------------------------------------------------ any object
def call_for(obj: Any, options: CallOptions) -> tuple[Callable[[], Any], dict[str, str]]:
    """``(run, call shown)`` for an object already built (``shapetrace run``): a transformers pipeline by its
    ``task``, anything else callable by its ``__call__``'s parameters (prompt, image, size, steps), as ``export``
    builds them; ``--call-json`` on top."""
    task = getattr(obj, "task", None)
    if isinstance(task, str) and hasattr(obj, "model") and callable(obj):
        args, kwargs = _transformers_call(obj, options.task or task, options)
        shown = {"task": task, **({"inputs": _show(args[0])} if args else {}),
                 **{k: _show(v) for k, v in kwargs.items()}}
        return lambda: obj(*args, **kwargs), shown
    if not callable(obj):
        raise SourceError(f"the exported {type(obj).__name__} is not callable; rebuild it with "
                          f"shapetrace.load_pipeline(OUT) and call its methods from Python")
    kwargs, shown = _diffusers_call(obj, options)
    return lambda: obj(**kwargs, **_generator(obj, options.seed)), shown
