"""Helpers of the SDXL backend tests: tiny settings, requests, pictures, and the stock pipelines."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from backends.families import load_preset
from backends.runtime.image_requests import SdImageRequest, SdTextToImageRequest
from backends.sdxl.backend import REFINER_UNET, TEXT_ENCODER, TEXT_ENCODER_2, UNET, VAE, SdxlBackend, SdxlResult
from backends.sdxl.spec import SdxlSettings

PROMPT = "a photo of a cat in the forest"
NEGATIVE = "blurry"


def tiny_settings(dtype: str = "float32", **changes: Any) -> SdxlSettings:
    """The tiny preset's section (every source ``tiny:sdxl``) in ``dtype``."""
    return replace(load_preset("tiny").settings.sdxl, dtype=dtype, **changes)


def text_request(size: int = 256, **changes: Any) -> SdTextToImageRequest:
    """A validated text-to-image request; sizes below the endpoints' 256 skip validation (bf16 tests)."""
    values: dict[str, Any] = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=3,
                                  guidance=5.0, num_images=1, seed=7, model="sdxl")
    values.update(changes)
    options = values.pop("options", {})
    if min(values["width"], values["height"]) >= 256:
        return SdTextToImageRequest.build(*values.values(), offered=["sdxl"], default_model="sdxl", options=options)
    return SdTextToImageRequest(**values, options=options)


def image_request(picture: Image.Image, mask: Image.Image | None = None, **changes: Any) -> SdImageRequest:
    """img2img (no mask) or inpaint at the picture's size, 4 steps at strength 0.6 unless changed."""
    values: dict[str, Any] = dict(image=picture, prompt=PROMPT, negative_prompt=NEGATIVE, strength=0.6,
                                  width=picture.width, height=picture.height, seed=11, model="sdxl", steps=4,
                                  guidance=5.0, mask=mask, input_size=picture.size)
    values.update(changes)
    return SdImageRequest(**values)


def picture(size: int, seed: int = 3) -> Image.Image:
    """A smooth colour field with some texture: something for the VAE to keep."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, 1 - x * y], axis=-1) * 200 + rng.random((size, size, 3)) * 55
    return Image.fromarray(base.astype(np.uint8))


def square_mask(size: int, inner: tuple[int, int]) -> Image.Image:
    """White (repaint) from ``inner[0]`` to ``inner[1]`` in both directions, black elsewhere."""
    marks = np.zeros((size, size), np.uint8)
    marks[inner[0]:inner[1], inner[0]:inner[1]] = 255
    return Image.fromarray(marks, mode="L")


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


# ----- the stock pipelines on the backend's own modules -------------------------------------------

def modules(backend: SdxlBackend) -> dict[str, Any]:
    """The backend's loaded modules by manager name (loading any not loaded yet)."""
    found = {}
    for name in (TEXT_ENCODER, TEXT_ENCODER_2, UNET, REFINER_UNET, VAE):
        with backend.manager.use(name) as module:
            found[name] = module
    return found


def stock(cls_name: str, backend: SdxlBackend, refiner: bool = False) -> Any:
    """diffusers' own pipeline ``cls_name`` (``StableDiffusionXL...Pipeline``), as the repos' model_index.json
    configure it, holding the backend's modules."""
    import diffusers

    parts, found = backend.parts(), modules(backend)
    cls = getattr(diffusers, cls_name)
    scheduler = type(parts.scheduler).from_config(parts.scheduler.config)
    if refiner:
        pipe = cls(vae=found[VAE], text_encoder=None, text_encoder_2=found[TEXT_ENCODER_2], tokenizer=None,
                   tokenizer_2=parts.tokenizer_2, unet=found[REFINER_UNET], scheduler=scheduler,
                   requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False)
    else:
        pipe = cls(vae=found[VAE], text_encoder=found[TEXT_ENCODER], text_encoder_2=found[TEXT_ENCODER_2],
                   tokenizer=parts.tokenizer, tokenizer_2=parts.tokenizer_2, unet=found[UNET], scheduler=scheduler,
                   add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def last_latents(pipe: Any, **call: Any) -> tuple[Any, torch.Tensor]:
    """Run ``pipe``; its output and the latents after its last step (what its VAE then decoded)."""
    seen: list[torch.Tensor] = []

    def keep(_: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(tensors["latents"].clone())
        return {}

    output = pipe(callback_on_step_end=keep, **call).images
    return output, seen[-1]


def assert_same(ours: SdxlResult, images: list[Image.Image], latents: torch.Tensor) -> None:
    assert torch.equal(ours.latents, latents.cpu()), float((ours.latents - latents.cpu()).abs().max())
    assert np.array_equal(pixels(ours.images), pixels(images))
