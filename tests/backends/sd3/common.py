"""What the SD3.5 tests share: the tiny settings, request builders, and the stock pipelines on our modules."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from PIL import Image

from backends.families import load_preset
from backends.runtime.image_requests import SdImageRequest, SdTextToImageRequest
from backends.sd3.backend import VAE, Sd3Backend, transformer_name
from backends.sd3.spec import MODELS, Sd3Settings
from backends.sd3.text import TEXT_ENCODER, TEXT_ENCODER_2, TEXT_ENCODER_3

#: Every model value: the tiny preset offers them all (DESIGN.md).
ALL_MODELS = list(MODELS)


def tiny_settings(**changes: Any) -> Sd3Settings:
    """The tiny preset's sd3 section, with ``changes``."""
    settings = load_preset("tiny").settings.sd3  # type: ignore[attr-defined]
    return dataclasses.replace(settings, **changes)


#: T5 tokens of the test jobs: CLIP's 77 rather than the default 256 halves the tiny transformer's work.
LENGTH = 77
#: bfloat16 convolutions have no fast path on a CPU without AVX512-BF16 (a 256² tiny VAE decode
#: takes 2.5 s), so the bfloat16 jobs are this size: under the API's 256 minimum, which only the
#: request parsers hold; the pipelines take any multiple of 16.
BF16_SIZE = 64


def text_job(**changes: Any) -> SdTextToImageRequest:
    """A guided Medium job at 256², 3 steps, T5 at 77 tokens."""
    base = SdTextToImageRequest.build("a photo of a red house", "blurry", 256, 256, 3, 4.5, 1, 7, "sd3.5-medium",
                                      offered=ALL_MODELS, default_model="sd3.5-medium",
                                      options={"max_sequence_length": LENGTH})
    return dataclasses.replace(base, **changes)


def picture(size: tuple[int, int] = (256, 256)) -> Image.Image:
    """A smooth colour picture with some structure (a gradient and a square)."""
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    array = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    array[height // 8: height // 4, width // 8: width // 4] = (250, 250, 20)
    return Image.fromarray(array)


def square_mask(size: tuple[int, int] = (256, 256), box: tuple[int, int, int, int] = (96, 96, 160, 160)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def image_job(mask: bool = False, **changes: Any) -> SdImageRequest:
    """An img2img (or, with ``mask``, inpaint) Medium job at 256², 4 steps, strength 0.6."""
    sampling = {"steps": 4, "guidance": 4.5}
    common = dict(offered=ALL_MODELS, default_model="sd3.5-medium", sampling=sampling,
                  options={"max_sequence_length": LENGTH})
    if mask:
        base = SdImageRequest.inpaint(picture(), square_mask(), "a photo of a cat", "blurry", 0.6, 5, "sd3.5-medium",
                                      **common)
    else:
        base = SdImageRequest.img2img(picture(), "a photo of a cat", "blurry", 0.6, 256, 256, 5, "sd3.5-medium",
                                      **common)
    return dataclasses.replace(base, **changes)


def small(job: Any, size: int = BF16_SIZE) -> Any:
    """``job`` at ``size``² (its picture and mask scaled alike)."""
    changes: dict[str, Any] = {"width": size, "height": size}
    if getattr(job, "image", None) is not None:
        changes["image"] = job.image.resize((size, size), Image.Resampling.BICUBIC)
    if getattr(job, "mask", None) is not None:
        changes["mask"] = job.mask.resize((size, size), Image.Resampling.NEAREST)
    return dataclasses.replace(job, **changes)


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def stock_pipeline(backend: Sd3Backend, cls: type, model: str, t5: bool = True) -> Any:
    """The stock diffusers pipeline of class ``cls`` built from the backend's own modules.

    On the CPU device ``use`` moves nothing, so the modules can be held outside the contexts.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    manager = backend.manager
    tokenizers, scheduler = backend._small_parts()
    names = [TEXT_ENCODER, TEXT_ENCODER_2, transformer_name(model), VAE] + ([TEXT_ENCODER_3] if t5 else [])
    modules = {}
    for name in names:
        with manager.use(name) as module:
            modules[name] = module
    pipe = cls(
        transformer=modules[transformer_name(model)], vae=modules[VAE],
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler.config),
        text_encoder=modules[TEXT_ENCODER], tokenizer=tokenizers.clip_l,
        text_encoder_2=modules[TEXT_ENCODER_2], tokenizer_2=tokenizers.clip_g,
        text_encoder_3=modules.get(TEXT_ENCODER_3), tokenizer_3=tokenizers.t5 if t5 else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def final_latents() -> tuple[dict[str, torch.Tensor], Any]:
    """A ``callback_on_step_end`` that keeps the latents after the last step, and where it keeps them."""
    kept: dict[str, torch.Tensor] = {}

    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        kept["latents"] = tensors["latents"].clone()
        return {}

    return kept, callback
