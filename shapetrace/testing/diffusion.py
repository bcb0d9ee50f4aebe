"""The tiny Stable Diffusion pipelines: :func:`sd_pipeline`, :func:`img2img_pipeline`, :func:`controlnet_pipeline`
and :func:`sdxl_pipeline`.

Each is the real diffusers pipeline class around narrow components built from configs (UNet, VAE, CLIP text
encoders, ControlNet) with seeded random weights, the offline :func:`~shapetrace.testing.tiny_clip_tokenizer` and a
DDIM (Euler for SDXL) scheduler; float32, CPU, eval mode, progress bar off.  The VAE downsamples by 8 like the real
one, so a 64x64 image runs on an 8x8 latent.  diffusers and transformers are imported inside the builders
(:func:`~shapetrace.testing._support.require`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ._support import require, seeded
from .tokenizers import CLIP_VOCAB_SIZE, _clip_vocab_and_merges, tiny_clip_tokenizer

if TYPE_CHECKING:  # pragma: no cover - typing only
    from diffusers import (
        AutoencoderKL,
        StableDiffusionControlNetPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

__all__ = ["controlnet_pipeline", "img2img_pipeline", "sd_pipeline", "sdxl_pipeline"]

SD_SIZE = 64  # pixels; latents are 8x8 with the tiny VAE's scale factor of 8


# --------------------------------------------------------------------------- components


def _clip_text_config(*, projection_dim: int = 32) -> Any:
    transformers = require("transformers")

    vocab, _ = _clip_vocab_and_merges()
    eos = vocab["<|endoftext|>"]
    return transformers.CLIPTextConfig(
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
    return require("transformers").CLIPTextModel(_clip_text_config()).eval()


def _tiny_vae() -> AutoencoderKL:
    """Four blocks so that ``vae_scale_factor == 8`` like the real SD VAE; 4 latent channels."""
    return require("diffusers").AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=SD_SIZE,
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
    return require("diffusers").UNet2DConditionModel(
        sample_size=SD_SIZE // 8,
        out_channels=4,
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        **_UNET_KW,
    ).eval()


def _ddim_scheduler() -> Any:
    return require("diffusers").DDIMScheduler(
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


# --------------------------------------------------------------------------- pipelines


def sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny text-to-image ``StableDiffusionPipeline``: text_encoder, unet, vae (decode), DDIM."""
    diffusers = require("diffusers")

    with seeded(seed):
        return _finish(diffusers.StableDiffusionPipeline(**_sd_components()))


def img2img_pipeline(seed: int = 0) -> StableDiffusionImg2ImgPipeline:
    """A tiny ``StableDiffusionImg2ImgPipeline``; a run calls ``vae.encode`` then ``vae.decode``."""
    diffusers = require("diffusers")

    with seeded(seed):
        return _finish(diffusers.StableDiffusionImg2ImgPipeline(**_sd_components()))


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
    diffusers = require("diffusers")

    with seeded(seed):
        components = _sd_components()
        controlnet = diffusers.ControlNetModel(
            conditioning_embedding_out_channels=(8, 16, 16, 32),
            **_UNET_KW,
        ).eval()
        _wake_controlnet(controlnet)
        return _finish(diffusers.StableDiffusionControlNetPipeline(controlnet=controlnet, **components))


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
    diffusers, transformers = require("diffusers"), require("transformers")

    with seeded(seed):
        unet = diffusers.UNet2DConditionModel(
            sample_size=SD_SIZE // 8,
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
        text_encoder = transformers.CLIPTextModel(_clip_text_config()).eval()
        text_encoder_2 = transformers.CLIPTextModelWithProjection(_clip_text_config(projection_dim=32)).eval()
        scheduler = diffusers.EulerDiscreteScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
            prediction_type="epsilon",
        )
        pipe = diffusers.StableDiffusionXLPipeline(
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
