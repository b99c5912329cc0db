"""The Studio every image/video scenario benchmarks, and the real-size random-weight models.

``--size tiny`` runs the app exactly as ``--preset tiny`` does. ``--size real`` keeps the tiny
preset's tokenizers, schedulers and feature extractor (their ids and configs are valid for the
real architectures) but registers builders of real-size, random-weight modules with the memory
manager *before* the backends are built. ``MemoryManager.register`` is idempotent, so the
backends then run on those modules through their normal path: nothing is downloaded and no
app code knows it is being benchmarked. Speed and memory do not depend on weight values.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from bench.common import BenchOptions

logger = logging.getLogger(__name__)

#: NOTES.md, "Real architecture configs" (from diffusers' conversion scripts).
_CTA = (("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),) * 2
PRIOR_FULL: dict[str, Any] = dict(
    in_channels=16, out_channels=16, timestep_ratio_embedding_dim=64, patch_size=1, conditioning_dim=2048,
    block_out_channels=(2048, 2048), num_attention_heads=(32, 32), down_num_layers_per_block=(8, 24),
    up_num_layers_per_block=(24, 8), down_blocks_repeat_mappers=(1, 1), up_blocks_repeat_mappers=(1, 1),
    block_types_per_layer=_CTA, clip_text_in_channels=1280, clip_text_pooled_in_channels=1280,
    clip_image_in_channels=768, clip_seq=4, kernel_size=3, dropout=(0.1, 0.1), self_attn=True,
    timestep_conditioning_type=("sca", "crp"), switch_level=(False,))
PRIOR_LITE = {**PRIOR_FULL, "conditioning_dim": 1536, "block_out_channels": (1536, 1536),
              "num_attention_heads": (24, 24), "down_num_layers_per_block": (4, 12),
              "up_num_layers_per_block": (12, 4)}
_DECODER_TYPES = (("SDCascadeResBlock", "SDCascadeTimestepBlock"),) * 2 + (
    ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),) * 2
DECODER_FULL: dict[str, Any] = dict(
    in_channels=4, out_channels=4, timestep_ratio_embedding_dim=64, patch_size=2, conditioning_dim=1280,
    block_out_channels=(320, 640, 1280, 1280), down_num_layers_per_block=(2, 6, 28, 6),
    up_num_layers_per_block=(6, 28, 6, 2), down_blocks_repeat_mappers=(1, 1, 1, 1),
    up_blocks_repeat_mappers=(3, 3, 2, 2), num_attention_heads=(0, 0, 20, 20),
    block_types_per_layer=_DECODER_TYPES, clip_text_pooled_in_channels=1280, clip_seq=4,
    effnet_in_channels=16, pixel_mapper_in_channels=3, kernel_size=3, dropout=(0, 0, 0.1, 0.1),
    self_attn=True, timestep_conditioning_type=("sca",))
DECODER_LITE = {**DECODER_FULL, "block_out_channels": (320, 576, 1152, 1152),
                "down_num_layers_per_block": (2, 4, 14, 4), "up_num_layers_per_block": (4, 14, 4, 2),
                "up_blocks_repeat_mappers": (2, 2, 2, 2), "num_attention_heads": (0, 9, 18, 18)}
#: CLIP ViT-bigG text tower (Stable Cascade's text encoder).
TEXT_BIGG: dict[str, Any] = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, projection_dim=1280,
                                 num_hidden_layers=32, num_attention_heads=20, max_position_embeddings=77,
                                 hidden_act="gelu")
#: CLIP ViT-H/14 vision tower (SVD's image encoder).
VISION_H: dict[str, Any] = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                                intermediate_size=5120, patch_size=14, image_size=224, projection_dim=1024,
                                hidden_act="gelu")
VARIANTS = {"lite": (PRIOR_LITE, DECODER_LITE), "full": (PRIOR_FULL, DECODER_FULL)}
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def _built(factory: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Build on the device (fast random init), then ``.to`` it: a device context misses some
    parameters (NOTES.md, AlphaBlender), and the manager wants its CPU home anyway."""
    with torch.device(device):
        module = factory()
    # Cast where it was built, then copy: half the bytes over the slow device-to-host path.
    return module.to(dtype).to("cpu").eval().requires_grad_(False)


def cascade_builders(variant: str, device: torch.device, dtype: torch.dtype,
                     eos_token_id: int) -> dict[str, Callable[[], torch.nn.Module]]:
    """Manager name -> builder of the real-size Stable Cascade ``variant`` (lite or full)."""
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    prior, decoder = VARIANTS[variant]
    # Pooling picks the first eos token; it must be the (tiny) tokenizer's (NOTES.md).
    text = CLIPTextConfig(**TEXT_BIGG, eos_token_id=eos_token_id)
    return {
        "cascade.text_encoder": lambda: _built(lambda: CLIPTextModelWithProjection(text), device, dtype),
        "cascade.prior": lambda: _built(lambda: StableCascadeUNet(**prior), device, dtype),
        "cascade.decoder": lambda: _built(lambda: StableCascadeUNet(**decoder), device, dtype),
        "cascade.vqgan": lambda: _built(PaellaVQModel, device, dtype),
    }


def svd_builders(device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], torch.nn.Module]]:
    """Manager name -> builder of real-size SVD-XT (the diffusers defaults are its architecture)."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return {
        "svd.unet": lambda: _built(UNetSpatioTemporalConditionModel, device, dtype),
        "svd.vae": lambda: _built(AutoencoderKLTemporalDecoder, device, dtype),
        "svd.image_encoder": lambda: _built(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION_H)),
                                            device, dtype),
    }


def stablelm_builders(device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], torch.nn.Module]]:
    """Manager name -> builder of a StableLM-2-1.6B-shaped model (the only LM shape in NOTES.md)."""
    from bench.chat import build_real_model

    return {"stablelm.model": lambda: build_real_model(device, dtype).to("cpu")}


def make_studio(options: BenchOptions, budget_bytes: int | None = None, variant: str = "lite",
                dtype: torch.dtype = torch.bfloat16, outputs: Path | None = None) -> Any:
    """A Studio on the tiny preset; for ``--size real`` with real-size modules of ``variant``."""
    from transformers import CLIPTokenizer

    from backends.families import FAMILIES, load_context
    from backends.runtime.loading import load_pretrained
    from backends.runtime.studio import Studio, StudioConfig

    config = StudioConfig(preset="tiny", vram_budget_bytes=budget_bytes, cache_dir=options.cache_dir,
                          outputs_dir=outputs or options.cache_dir / "bench-outputs", offline=True)
    studio = Studio(config, FAMILIES)
    if studio.device.type != options.device.type:
        # The tiny preset runs on CUDA when there is one; the manager's probe follows that choice.
        raise SystemExit(f"--device {options.device.type}: the Studio picked {studio.device.type} on this machine")
    if options.size != "real":
        return studio
    name = _DTYPE_NAMES[dtype]
    settings = studio.registry.preset
    # The backends cast inputs to the preset dtype; it must be the built modules' dtype.
    for key in ("cascade", "svd", "stablelm"):
        setattr(settings, key, dataclasses.replace(getattr(settings, key), dtype=name))
    tokenizer = load_pretrained(CLIPTokenizer, settings.cascade.tokenizer, load_context(options.cache_dir, offline=True))
    builders = {**cascade_builders(variant, options.device, dtype, tokenizer.eos_token_id),
                **svd_builders(options.device, dtype), **stablelm_builders(options.device, dtype)}
    for component, build in builders.items():
        studio.manager.register(component, build)
    return studio


def image_request(options: BenchOptions, **overrides: Any) -> Any:
    """The Image tab's request: tiny preset defaults (256², 4 + 3 steps), or 1024², 20 + 10 for real."""
    from backends.cascade.requests import TextToImageRequest

    size, prior_steps, decoder_steps = (1024, 20, 10) if options.size == "real" else (256, 4, 3)
    values: dict[str, Any] = dict(prompt="a red lighthouse on a cliff at dusk", negative_prompt="", width=size,
                                  height=size, prior_steps=prior_steps, decoder_steps=decoder_steps,
                                  prior_guidance=4.0, decoder_guidance=0.0, num_images=1, seed=7)
    values.update(overrides)
    return TextToImageRequest.build(**values)


def video_request(options: BenchOptions) -> Any:
    """A short video request: enough to move the SVD family in, not a video benchmark. Real
    size uses 4 frames at 512x320 (the 576x1024 harness ran out of memory, anchor JSON)."""
    from backends.svd.requests import VideoRequest

    frames, steps, width, height = (4, 2, 512, 320) if options.size == "real" else (6, 3, 128, 64)
    picture = Image.new("RGB", (width, height), (200, 80, 40))
    return VideoRequest.build(picture, frames, 6, 127, 0.02, steps, 0, 3, width=width, height=height)


def no_progress(*_: Any) -> None:
    """Progress sink: the benchmarks time the work, not the UI."""


def cascade_modules(manager: Any) -> dict[str, torch.nn.Module]:
    """The four loaded Stable Cascade modules, by stage (after one run of ours)."""
    stages = ("text_encoder", "prior", "decoder", "vqgan")
    return {stage: manager.component(f"cascade.{stage}").home.module for stage in stages}


def component_loads(manager: Any) -> dict[str, int]:
    """How often each registered component was read from disk (or built)."""
    return {status.name: manager.component(status.name).loads for status in manager.statuses()}
