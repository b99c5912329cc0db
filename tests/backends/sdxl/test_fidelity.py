"""Our staged SDXL path against diffusers' stock pipelines on the same tiny modules: same latents, same pixels.

Each test runs a job through ``SdxlBackend`` (the manager lends one stage's modules at a time; the
VAE runs outside the pipelines) and the same job through ``StableDiffusionXL{,Img2Img,Inpaint}Pipeline``
called directly, with a generator seeded alike, and asks for bit-identical latents and images:
in float32 at 256², and in bfloat16 at 64² (bfloat16 convolutions are slow on this CPU).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from backends.sdxl.backend import IMG2IMG, INPAINT, TEXT_TO_IMAGE, SdxlBackend
from tests.backends.sdxl.common import (
    NEGATIVE,
    PROMPT,
    assert_same,
    image_request,
    last_latents,
    picture,
    square_mask,
    stock,
    text_request,
)

REFINE = {"refiner": True, "high_noise_frac": 0.7}


def generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


@pytest.fixture(params=["float32", "bfloat16"])
def case(request: pytest.FixtureRequest, sdxl: SdxlBackend, sdxl_bf16: SdxlBackend) -> tuple[SdxlBackend, int]:
    """(backend, image size): float32 at the endpoints' smallest size, bfloat16 at 64²."""
    return (sdxl, 256) if request.param == "float32" else (sdxl_bf16, 64)


@pytest.mark.parametrize("refined", [False, True], ids=["base", "refiner"])
def test_text_to_image_matches_the_stock_pipelines(case: tuple[SdxlBackend, int], refined: bool) -> None:
    backend, size = case
    # Without a negative prompt the base zeroes its negative embeddings and the refiner encodes "" (their
    # model_index.json); the stock pipelines do that when given none.
    negative = "" if refined else NEGATIVE
    job = text_request(size, steps=4, negative_prompt=negative, options=REFINE if refined else {})
    ours = backend.run(TEXT_TO_IMAGE, job, lambda *_: None)
    seeded = generator(job.seed)
    call: dict[str, Any] = dict(prompt=PROMPT, negative_prompt=negative or None, num_inference_steps=4,
                                guidance_scale=5.0, generator=seeded)
    if not refined:
        images, latents = last_latents(stock("StableDiffusionXLPipeline", backend), width=size, height=size, **call)
    else:
        base = stock("StableDiffusionXLPipeline", backend)(width=size, height=size, denoising_end=0.7,
                                                            output_type="latent", **call).images
        images, latents = last_latents(stock("StableDiffusionXLImg2ImgPipeline", backend, refiner=True),
                                       image=base, denoising_start=0.7, **call)
        assert ours.info["base_steps"] == 2 and ours.info["refiner_steps"] == 2  # 751 501 | 251 1
    assert_same(ours, images, latents)


@pytest.mark.parametrize("refined", [False, True], ids=["base", "refiner"])
def test_img2img_matches_the_stock_pipelines(case: tuple[SdxlBackend, int], refined: bool) -> None:
    backend, size = case
    job = image_request(picture(size), strength=0.8 if refined else 0.6, options=REFINE if refined else {})
    ours = backend.run(IMG2IMG, job, lambda *_: None)
    seeded = generator(job.seed)
    call: dict[str, Any] = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=5.0,
                                generator=seeded)
    pipe = stock("StableDiffusionXLImg2ImgPipeline", backend)
    if not refined:
        images, latents = last_latents(pipe, image=job.image, strength=job.strength, **call)
    else:
        base = pipe(image=job.image, strength=job.strength, denoising_end=0.7, output_type="latent", **call).images
        images, latents = last_latents(stock("StableDiffusionXLImg2ImgPipeline", backend, refiner=True),
                                       image=base, denoising_start=0.7, **call)
    assert_same(ours, images, latents)


@pytest.mark.parametrize("refined", [False, True], ids=["base", "refiner"])
def test_inpaint_matches_the_stock_pipelines_then_keeps_the_input_outside(case: tuple[SdxlBackend, int],
                                                                         refined: bool) -> None:
    """The latents are the stock pipeline's; the pixels are its decode with the input laid back (A1111's overlay)."""
    from diffusers.image_processor import VaeImageProcessor

    backend, size = case
    mask = square_mask(size, (size // 4, size // 2))
    job = image_request(picture(size), mask, strength=0.8 if refined else 0.6, options=REFINE if refined else {})
    ours = backend.run(INPAINT, job, lambda *_: None)
    seeded = generator(job.seed)
    call: dict[str, Any] = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=5.0,
                                generator=seeded, mask_image=mask, width=size, height=size)
    pipe = stock("StableDiffusionXLInpaintPipeline", backend)
    if not refined:
        images, latents = last_latents(pipe, image=job.image, strength=job.strength, **call)
    else:
        base = pipe(image=job.image, strength=job.strength, denoising_end=0.7, output_type="latent", **call).images
        images, latents = last_latents(stock("StableDiffusionXLInpaintPipeline", backend, refiner=True),
                                       image=base, denoising_start=0.7, **call)
    laid = [pipe.image_processor.apply_overlay(VaeImageProcessor.blur(mask, 4), job.image, image) for image in images]
    assert_same(ours, laid, latents)
