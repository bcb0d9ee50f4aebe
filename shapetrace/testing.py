"""The offline zoo: tiny, seeded Hugging Face pipelines for tests, examples and the demo.

Every builder here works without network access and without any downloaded
weights: each component is built from a small config and filled with random
weights drawn from a seeded torch RNG (the caller's global RNG state is left
untouched).  The architectures are the real ones (``UNet2DConditionModel``,
``ControlNetModel``, ``AutoencoderKL``, ``CLIPTextModel``, the CMU OpenPose
body network, BERT), only narrow, so that every build plus one short run takes
a few seconds on a couple of CPU cores.  Everything is float32, on the CPU and
in eval mode, and two builds with the same seed give bit-identical outputs.

The pipelines, by key of :data:`EXAMPLES`:

``"controlnet"``
    :func:`controlnet_pipeline`, a ``StableDiffusionControlNetPipeline``.
``"sd"``
    :func:`sd_pipeline`, a ``StableDiffusionPipeline``.
``"img2img"``
    :func:`img2img_pipeline`, a ``StableDiffusionImg2ImgPipeline``.
``"sdxl"``
    :func:`sdxl_pipeline`, a ``StableDiffusionXLPipeline``.
``"openpose"``
    :func:`openpose_detector`, a ``controlnet_aux.OpenposeDetector``.
``"text-classification"``
    :func:`text_classification_pipeline`, a transformers ``TextClassificationPipeline``.

Each :class:`Example` says how to build and run one of them and which module
paths (``expected_modules``) and graphs (``expected_graphs``) a recording of
one run must find.  A graph is named by the module path when the module's
``forward`` is called (``"unet"``) and by ``"path.method"`` when the pipeline
calls another method of the module directly (``"vae.decode"``).

diffusers, transformers, controlnet_aux and PIL are imported lazily, inside
the builders, so importing this module costs no more than importing torch.

Example::

    from shapetrace.testing import EXAMPLES

    ex = EXAMPLES["controlnet"]
    pipe = ex.build()
    out = ex.run(pipe)                       # 2 steps, 64x64, output_type="np"
    out = ex.run(pipe, height=128, batch=2)  # overrides
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    from controlnet_aux import OpenposeDetector
    from diffusers import (
        AutoencoderKL,
        StableDiffusionControlNetPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from PIL import Image
    from transformers import BertTokenizer, CLIPTextModel, CLIPTokenizer, TextClassificationPipeline

__all__ = [
    "CLIP_VOCAB_SIZE",
    "DEFAULT_PROMPT",
    "EXAMPLES",
    "OPENPOSE_DETECT_RESOLUTION",
    "OPENPOSE_IMAGE_RESOLUTION",
    "OPENPOSE_INPUT_SHAPE",
    "Example",
    "controlnet_pipeline",
    "img2img_pipeline",
    "openpose_detector",
    "pose_image",
    "run_openpose",
    "sd_pipeline",
    "sdxl_pipeline",
    "text_classification_pipeline",
    "tiny_bert_tokenizer",
    "tiny_clip_tokenizer",
]

#: The prompt every example runs with unless told otherwise.
DEFAULT_PROMPT = "chef in the kitchen"

#: ``vocab_size`` of every tiny CLIP text encoder; every tokenizer id is below it.
CLIP_VOCAB_SIZE = 1000

#: ``detect_resolution`` :func:`run_openpose` passes (the OpenposeDetector default).
OPENPOSE_DETECT_RESOLUTION = 512
#: ``image_resolution`` :func:`run_openpose` passes (the OpenposeDetector default).
OPENPOSE_IMAGE_RESOLUTION = 512
#: What ``body_estimation.model`` receives when :func:`run_openpose` runs on :func:`pose_image`.
OPENPOSE_INPUT_SHAPE = (1, 3, 184, 136)

_SD_SIZE = 64  # pixels; latents are 8x8 with the tiny VAE's scale factor of 8
_STEPS = 2
_RUN_SEED = 0

# Words the tiny tokenizers know whole; anything else falls back to pieces/characters.
_WORDS = (
    "a an the of in on at with and to by for from is "
    "chef kitchen cook cooking food photo portrait painting picture drawing "
    "man woman person people child girl boy dancer dancing standing sitting running walking "
    "cat dog horse bird astronaut riding city street beach forest mountain room house "
    "red green blue yellow white black bright dark light "
    "high quality best detailed realistic beautiful small big old young"
).split()


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for the block and restore the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte mapped to a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _learn_bpe(words: list[str]) -> list[tuple[str, str]]:
    """Classic BPE training on ``words`` (CLIP style, ``</w>`` on the last symbol) until each is one symbol.

    Applying the learned merges in rank order reproduces the training
    segmentation, so every word of ``words`` becomes a single token.  Ties
    between equally frequent pairs break lexicographically: deterministic.
    """
    corpus = [[*w[:-1], w[-1] + "</w>"] for w in dict.fromkeys(words)]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in corpus:
            for pair in itertools.pairwise(symbols):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for symbols in corpus:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
                i += 1


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary: 256 byte symbols (bare and ``</w>``), merged words, specials last."""
    alphabet = list(_bytes_to_unicode().values())
    tokens: list[str] = alphabet + [c + "</w>" for c in alphabet]
    merges = _learn_bpe(_WORDS)
    tokens += dict.fromkeys(a + b for a, b in merges if a + b not in tokens)
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # like real CLIP: specials have the highest ids
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) > CLIP_VOCAB_SIZE:  # pragma: no cover - guards edits to _WORDS
        raise AssertionError(f"tiny CLIP vocab has {len(vocab)} tokens, more than {CLIP_VOCAB_SIZE}")
    return vocab, [f"{a} {b}" for a, b in merges]


# --------------------------------------------------------------------------- tokenizers


def tiny_clip_tokenizer(directory: str | os.PathLike[str] | None = None) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with a tiny vocabulary (< ``CLIP_VOCAB_SIZE`` ids), built offline.

    ``vocab.json`` and ``merges.txt`` are written to ``directory`` (a fresh
    ``tempfile.mkdtemp()`` when ``None``).  The vocabulary holds the 256
    byte-level symbols (bare and with ``</w>``) so any text tokenizes without
    unknown tokens, the pieces of BPE merges learned on a small list of
    prompt words, each of which is one token (``"chef in the kitchen"`` is
    ``[bos, chef, in, the, kitchen, eos]``), and ``<|startoftext|>`` /
    ``<|endoftext|>`` with the two highest ids (703 ids in all).  ``pad_token`` is
    ``<|endoftext|>`` as in Stable Diffusion 1.x; ``model_max_length`` is 77.
    """
    from transformers import CLIPTokenizer

    directory = os.fspath(directory) if directory is not None else tempfile.mkdtemp(prefix="shapetrace-clip-")
    os.makedirs(directory, exist_ok=True)
    vocab, merges = _clip_vocab_and_merges()
    vocab_file = os.path.join(directory, "vocab.json")
    merges_file = os.path.join(directory, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(vocab_file, merges_file, model_max_length=77)


def tiny_bert_tokenizer(directory: str | os.PathLike[str] | None = None) -> BertTokenizer:
    """A lower-casing WordPiece ``BertTokenizer`` built from a tiny ``vocab.txt``.

    The file is written to ``directory`` (a fresh ``tempfile.mkdtemp()`` when
    ``None``).  It holds the five specials, ``a``-``z`` and ``##a``-``##z``,
    digits, punctuation and the same whole words as :func:`tiny_clip_tokenizer`.
    """
    from transformers import BertTokenizer

    directory = os.fspath(directory) if directory is not None else tempfile.mkdtemp(prefix="shapetrace-bert-")
    os.makedirs(directory, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += letters + ["##" + c for c in letters] + list("0123456789") + list(".,!?'\"-:;()")
    tokens += [w for w in dict.fromkeys(_WORDS) if len(w) > 1]
    vocab_file = os.path.join(directory, "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return BertTokenizer(vocab_file, model_max_length=64)


# --------------------------------------------------------------------------- SD components


def _clip_text_config(*, projection_dim: int = 32) -> Any:
    from transformers import CLIPTextConfig

    vocab, _ = _clip_vocab_and_merges()
    eos = vocab["<|endoftext|>"]
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=37,
        projection_dim=projection_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=vocab["<|startoftext|>"],
        # Not 2: with eos_token_id == 2 CLIP pools at argmax(input_ids) (legacy path).
        eos_token_id=eos,
        pad_token_id=eos,
    )


def _tiny_text_encoder() -> CLIPTextModel:
    from transformers import CLIPTextModel

    return CLIPTextModel(_clip_text_config()).eval()


def _tiny_vae() -> AutoencoderKL:
    """Four blocks so that ``vae_scale_factor == 8`` like the real SD VAE; 4 latent channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=_SD_SIZE,
    ).eval()


_UNET_KW: dict[str, Any] = dict(
    in_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
)


def _tiny_unet() -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=_SD_SIZE // 8,
        out_channels=4,
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        **_UNET_KW,
    ).eval()


def _ddim_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def _sd_components() -> dict[str, Any]:
    """Built in a fixed order so that a given seed always gives the same weights."""
    unet = _tiny_unet()
    vae = _tiny_vae()
    text_encoder = _tiny_text_encoder()
    return dict(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=_ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _finish(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------- SD pipelines


def sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny text-to-image ``StableDiffusionPipeline``: text_encoder, unet, vae (decode), DDIM."""
    from diffusers import StableDiffusionPipeline

    with _seeded(seed):
        return _finish(StableDiffusionPipeline(**_sd_components()))


def img2img_pipeline(seed: int = 0) -> StableDiffusionImg2ImgPipeline:
    """A tiny ``StableDiffusionImg2ImgPipeline``; a run calls ``vae.encode`` then ``vae.decode``."""
    from diffusers import StableDiffusionImg2ImgPipeline

    with _seeded(seed):
        return _finish(StableDiffusionImg2ImgPipeline(**_sd_components()))


def _init_conv(conv: torch.nn.Conv2d, gain: float) -> None:
    fan_in = conv.weight[0].numel()
    with torch.no_grad():
        torch.nn.init.normal_(conv.weight, std=gain / fan_in**0.5)
        if conv.bias is not None:
            torch.nn.init.zeros_(conv.bias)


def _wake_controlnet(controlnet: Any) -> None:
    """Give a fresh ``ControlNetModel`` non-zero outputs that really depend on the control image.

    Its zero convs (``controlnet_down_blocks``, ``controlnet_mid_block``,
    ``controlnet_cond_embedding.conv_out``) start at exactly zero, and PyTorch's
    default conv init would shrink the control image ~6x per layer through the
    eight SiLU-activated convs of the conditioning embedding (the control image
    would then move the UNet's output by ~1e-5).  So every conv of the
    conditioning embedding gets N(0, (1.7 / sqrt(fan_in))^2) (roughly
    variance-preserving through SiLU for pixel-range inputs: the embedding
    ends up O(1)) and the zero convs N(0, 1 / fan_in); biases are zero.
    """
    cond = controlnet.controlnet_cond_embedding
    for conv in (cond.conv_in, *cond.blocks, cond.conv_out):
        _init_conv(conv, 1.7)
    for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
        _init_conv(conv, 1.0)


def controlnet_pipeline(seed: int = 0) -> StableDiffusionControlNetPipeline:
    """A tiny ``StableDiffusionControlNetPipeline`` whose ControlNet outputs are non-zero.

    The ControlNet mirrors the UNet's down path (own random weights) and its
    conditioning embedding has four stages, i.e. three stride-2 convs, so a
    ``HxW`` control image lands on the ``H/8 x W/8`` latent grid.  A fresh
    ``ControlNetModel`` has zero-initialised output convs
    (``controlnet_down_blocks``, ``controlnet_mid_block`` and
    ``controlnet_cond_embedding.conv_out``); they, and the conditioning
    embedding, are re-initialised (see :func:`_wake_controlnet`) so that the
    ControlNet residuals are non-zero and the control image really changes
    the UNet's noise prediction (by a large fraction of its magnitude).
    """
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    with _seeded(seed):
        components = _sd_components()
        controlnet = ControlNetModel(
            conditioning_embedding_out_channels=(8, 16, 16, 32),
            **_UNET_KW,
        ).eval()
        _wake_controlnet(controlnet)
        return _finish(StableDiffusionControlNetPipeline(controlnet=controlnet, **components))


def sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny ``StableDiffusionXLPipeline`` (two text encoders, ``text_time`` added conditioning).

    ``text_encoder`` is a ``CLIPTextModel`` and ``text_encoder_2`` a
    ``CLIPTextModelWithProjection`` (hidden 32, projection 32); the UNet's
    ``cross_attention_dim`` is 32 + 32 and its
    ``projection_class_embeddings_input_dim`` is ``6 * addition_time_embed_dim
    + projection_dim`` = 6 * 8 + 32, so ``added_cond_kwargs`` carries
    ``text_embeds`` (B, 32) and ``time_ids`` (B, 6).  Euler scheduler, no
    watermarker, ``force_zeros_for_empty_prompt`` (so no negative-prompt encode).
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=_SD_SIZE // 8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
            norm_num_groups=8,
        ).eval()
        vae = _tiny_vae()
        vae.register_to_config(scaling_factor=0.13025)  # the SDXL VAE's
        text_encoder = CLIPTextModel(_clip_text_config()).eval()
        text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(projection_dim=32)).eval()
        scheduler = EulerDiscreteScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
            prediction_type="epsilon",
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tiny_clip_tokenizer(),
            tokenizer_2=tiny_clip_tokenizer(),
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
        return _finish(pipe)


# --------------------------------------------------------------------------- OpenPose


def _import_controlnet_aux_openpose() -> Any:
    """``controlnet_aux.open_pose`` with the package's import-time noise (timm, mediapipe) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux import open_pose

    return open_pose


def _random_estimator(estimator_cls: Any, model: torch.nn.Module, *, strip_prefix: bool) -> Any:
    """Save ``model``'s random weights to a temporary ``.pth`` and load them the way controlnet_aux does.

    ``Body`` and ``Hand`` read their checkpoint through ``util.transfer``, which
    looks up every state-dict key with its first dotted part removed
    (``model0.conv1_1.weight`` -> ``conv1_1.weight``, the layout of the original
    CMU checkpoints); ``Face`` loads the state dict as it is.
    """
    state = model.state_dict()
    if strip_prefix:
        state = {key.split(".", 1)[1]: value for key, value in state.items()}
    with tempfile.TemporaryDirectory(prefix="shapetrace-openpose-") as tmp:
        path = os.path.join(tmp, "model.pth")
        torch.save(state, path)
        return estimator_cls(path)


def openpose_detector(seed: int = 0) -> OpenposeDetector:
    """A ``controlnet_aux.OpenposeDetector`` with the real networks and random weights.

    Like ``OpenposeDetector.from_pretrained`` it holds three estimators, whose
    torch modules are ``body_estimation.model`` (``bodypose_model``, ~52M
    parameters), ``hand_estimation.model`` (``handpose_model``) and
    ``face_estimation.model`` (``FaceNet``).  Each is seeded, saved to a
    temporary checkpoint and loaded back through ``Body`` / ``Hand`` /
    ``Face``, exactly the code path of a downloaded checkpoint.  Only the body
    network runs unless ``include_hand`` / ``include_face`` are passed.
    """
    open_pose = _import_controlnet_aux_openpose()
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    with _seeded(seed):
        body = _random_estimator(open_pose.Body, bodypose_model(), strip_prefix=True)
        hand = _random_estimator(open_pose.Hand, handpose_model(), strip_prefix=True)
        face = _random_estimator(open_pose.Face, FaceNet(), strip_prefix=False)
    return open_pose.OpenposeDetector(body, hand, face)


def run_openpose(det: OpenposeDetector, image: Image.Image | np.ndarray | None = None, **overrides: Any) -> Any:
    """Run ``det`` once with the settings the tests rely on; returns the pose map (a uint8 HxWx3 array).

    Defaults: ``image=pose_image()`` (192 wide, 256 high), ``detect_resolution=512``,
    ``image_resolution=512``, ``include_body=True``, ``include_hand=False``,
    ``include_face=False``, ``output_type="np"``; ``overrides`` replace them.

    Why ``body_estimation.model`` then sees ``(1, 3, 184, 136)``: the detector
    first resizes the image so its short side is ``detect_resolution`` and
    rounds both sides to multiples of 64, 192x256 (WxH) -> 512x704.  ``Body``
    then scales it by ``0.5 * 368 / H`` = 184/704 -> 133x184 and pads right and
    bottom to a multiple of the stride 8 -> 136x184, i.e. NCHW (1, 3, 184, 136).
    A landscape 256x192 image can never give that shape (its width stays the
    longer side: it gives (1, 3, 184, 256)).
    """
    kwargs: dict[str, Any] = dict(
        detect_resolution=OPENPOSE_DETECT_RESOLUTION,
        image_resolution=OPENPOSE_IMAGE_RESOLUTION,
        include_body=True,
        include_hand=False,
        include_face=False,
        output_type="np",
    )
    kwargs.update(overrides)
    return det(pose_image() if image is None else image, **kwargs)


# --------------------------------------------------------------------------- text classification


def text_classification_pipeline(seed: int = 0) -> TextClassificationPipeline:
    """A transformers ``text-classification`` pipeline around a tiny random ``BertForSequenceClassification``.

    2 layers, hidden 32, 4 heads, 2 labels (``NEGATIVE`` / ``POSITIVE``), CPU.
    """
    from transformers import BertConfig, BertForSequenceClassification, pipeline

    tokenizer = tiny_bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    with _seeded(seed):
        model = BertForSequenceClassification(config).eval()
    return pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")


# --------------------------------------------------------------------------- images


def pose_image(width: int = 192, height: int = 256) -> Image.Image:
    """A deterministic RGB picture of a stick figure standing in a room; no files needed.

    The default is portrait, 192 wide and 256 high (numpy shape ``(256, 192, 3)``):
    the "256x192 image" that :func:`run_openpose` turns into a
    ``(1, 3, 184, 136)`` body-network input.
    """
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (214, 226, 238))
    draw = ImageDraw.Draw(img)

    def p(x: float, y: float) -> tuple[int, int]:
        return round(x * (width - 1)), round(y * (height - 1))

    draw.rectangle([p(0.0, 0.78), p(1.0, 1.0)], fill=(150, 118, 86))  # floor
    draw.rectangle([p(0.08, 0.12), p(0.34, 0.40)], fill=(250, 250, 235), outline=(90, 90, 90))  # window
    lw = max(2, round(min(width, height) / 28))
    skin, shirt, trousers = (236, 188, 150), (200, 40, 40), (40, 50, 110)
    neck, hip = p(0.5, 0.30), p(0.5, 0.56)
    draw.line([neck, hip], fill=shirt, width=lw + 2)  # torso
    draw.line([neck, p(0.33, 0.40), p(0.28, 0.52)], fill=shirt, width=lw, joint="curve")  # right arm
    draw.line([neck, p(0.67, 0.38), p(0.76, 0.28)], fill=shirt, width=lw, joint="curve")  # left arm, raised
    draw.line([hip, p(0.40, 0.70), p(0.38, 0.86)], fill=trousers, width=lw, joint="curve")  # right leg
    draw.line([hip, p(0.60, 0.70), p(0.63, 0.86)], fill=trousers, width=lw, joint="curve")  # left leg
    head_r = 0.075 * min(width, height * 0.75)
    cx, cy = p(0.5, 0.21)
    draw.ellipse([cx - head_r, cy - head_r, cx + head_r, cy + head_r], fill=skin, outline=(60, 40, 30))
    for hx, hy in (p(0.28, 0.52), p(0.76, 0.28)):  # hands
        draw.ellipse([hx - lw, hy - lw, hx + lw, hy + lw], fill=skin)
    return img


# --------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Example:
    """One offline pipeline: how to build it, run it once, and what a recording of that run must hold.

    Attributes:
        name: the key in :data:`EXAMPLES`.
        build: builds the object (seed 0).
        run: ``run(obj, **overrides)`` calls the object once with small defaults and
            returns its output (deterministic: fixed generator seed).
        expected_modules: dotted paths of every ``torch.nn.Module`` reachable from the
            object without passing through another module, sorted.
        expected_graphs: the graphs one default run calls, sorted: a module path for a
            ``forward`` call, ``"path.method"`` for another method called directly.
        description: one line for humans.
    """

    name: str
    build: Callable[[], object]
    run: Callable[..., object]
    expected_modules: tuple[str, ...]
    expected_graphs: tuple[str, ...]
    description: str = ""


def _prompts(batch: int | None, prompt: str | list[str]) -> str | list[str]:
    if batch is None:
        return prompt
    if isinstance(prompt, list):
        raise ValueError("pass either batch= or a list of prompts, not both")
    return [prompt] * batch


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _run_diffusion(
    pipe: Any,
    *,
    batch: int | None = None,
    seed: int = _RUN_SEED,
    prompt: str | list[str] = DEFAULT_PROMPT,
    **overrides: Any,
) -> Any:
    """Text-to-image run: 2 steps, 64x64, ``output_type="np"``.

    ``batch=n`` repeats the prompt n times (every graph then sees batch n, or 2n
    under classifier-free guidance); ``seed`` seeds the generator; any other
    keyword (``height``, ``width``, ``num_images_per_prompt``, ``guidance_scale``,
    ...) goes to the pipeline as is.
    """
    kwargs: dict[str, Any] = dict(
        num_inference_steps=_STEPS, height=_SD_SIZE, width=_SD_SIZE, output_type="np", generator=_generator(seed)
    )
    kwargs.update(overrides)
    return pipe(_prompts(batch, prompt), **kwargs)


def _run_controlnet(pipe: Any, *, image: Any = None, **overrides: Any) -> Any:
    """:func:`_run_diffusion` with ``image=pose_image()`` as the control image."""
    return _run_diffusion(pipe, image=pose_image() if image is None else image, **overrides)


def _run_img2img(
    pipe: Any,
    *,
    image: Any = None,
    height: int = _SD_SIZE,
    width: int = _SD_SIZE,
    batch: int | None = None,
    seed: int = _RUN_SEED,
    prompt: str | list[str] = DEFAULT_PROMPT,
    **overrides: Any,
) -> Any:
    """Image-to-image run on ``pose_image(width, height)``: 2 steps, ``strength=0.75``, ``output_type="np"``.

    The img2img pipeline has no ``height`` / ``width`` arguments: they size the
    init image instead.  With 2 steps and strength 0.75 the UNet runs once.
    """
    kwargs: dict[str, Any] = dict(
        num_inference_steps=_STEPS, strength=0.75, output_type="np", generator=_generator(seed)
    )
    kwargs.update(overrides)
    init = pose_image(width, height) if image is None else image
    return pipe(_prompts(batch, prompt), image=init, **kwargs)


def _run_openpose(
    det: Any, *, image: Any = None, width: int | None = None, height: int | None = None, **overrides: Any
) -> Any:
    """:func:`run_openpose`; ``width`` / ``height`` size the default :func:`pose_image`."""
    if "batch" in overrides:  # the detector would silently swallow it through its **kwargs
        raise ValueError("OpenposeDetector takes one image per call: batch= is not supported")
    if image is None and (width is not None or height is not None):
        image = pose_image(width or 192, height or 256)
    return run_openpose(det, image, **overrides)


def _run_text_classification(
    pipe: Any, *, batch: int | None = None, text: str | list[str] = DEFAULT_PROMPT, **overrides: Any
) -> Any:
    """Classify ``text`` (``batch=n`` repeats it n times); ``overrides`` go to the pipeline call."""
    return pipe(_prompts(batch, text), **overrides)


EXAMPLES: dict[str, Example] = {
    ex.name: ex
    for ex in (
        Example(
            name="controlnet",
            build=controlnet_pipeline,
            run=_run_controlnet,
            expected_modules=("controlnet", "text_encoder", "unet", "vae"),
            expected_graphs=("controlnet", "text_encoder", "unet", "vae.decode"),
            description="StableDiffusionControlNetPipeline, tiny UNet/ControlNet/VAE/CLIP, pose_image() control",
        ),
        Example(
            name="sd",
            build=sd_pipeline,
            run=_run_diffusion,
            expected_modules=("text_encoder", "unet", "vae"),
            expected_graphs=("text_encoder", "unet", "vae.decode"),
            description="StableDiffusionPipeline, tiny UNet/VAE/CLIP",
        ),
        Example(
            name="img2img",
            build=img2img_pipeline,
            run=_run_img2img,
            expected_modules=("text_encoder", "unet", "vae"),
            expected_graphs=("text_encoder", "unet", "vae.decode", "vae.encode"),
            description="StableDiffusionImg2ImgPipeline on pose_image(64, 64), strength 0.75",
        ),
        Example(
            name="sdxl",
            build=sdxl_pipeline,
            run=_run_diffusion,
            expected_modules=("text_encoder", "text_encoder_2", "unet", "vae"),
            expected_graphs=("text_encoder", "text_encoder_2", "unet", "vae.decode"),
            description="StableDiffusionXLPipeline, two tiny CLIP encoders, text_time added conditioning",
        ),
        Example(
            name="openpose",
            build=openpose_detector,
            run=_run_openpose,
            expected_modules=("body_estimation.model", "face_estimation.model", "hand_estimation.model"),
            expected_graphs=("body_estimation.model",),
            description="controlnet_aux OpenposeDetector, real networks, random weights, body only",
        ),
        Example(
            name="text-classification",
            build=text_classification_pipeline,
            run=_run_text_classification,
            expected_modules=("model",),
            expected_graphs=("model",),
            description="transformers text-classification pipeline, tiny BertForSequenceClassification",
        ),
    )
}
