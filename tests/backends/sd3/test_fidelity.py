"""Our staged path against the stock diffusers SD3 pipelines, on the same tiny modules and seeds.

Image ``i`` of one of our jobs is the stock pipeline's one image at ``seed + i``: same latents
bit for bit, same pixels, in float32 and bfloat16, with T5 and without.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from backends.runtime.progress import no_progress
from backends.sd3.backend import VAE, Sd3Backend
from backends.sd3.images import overlay
from backends.sd3.text import encode
from tests.backends.sd3.common import LENGTH, final_latents, image_job, pixels, small, stock_pipeline, text_job


def pick(request: pytest.FixtureRequest, dtype: str) -> Sd3Backend:
    return request.getfixturevalue("backend" if dtype == "float32" else "bf16_backend")


def sized(job: object, dtype: str) -> object:
    """float32 jobs at their own size, bfloat16 ones small (see ``common.BF16_SIZE``)."""
    return job if dtype == "float32" else small(job)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_text_to_image_matches_the_stock_pipeline(dtype: str, request: pytest.FixtureRequest) -> None:
    from diffusers import StableDiffusion3Pipeline

    backend = pick(request, dtype)
    job = text_job(num_images=2, seed=11, width=320) if dtype == "float32" else small(text_job(num_images=2, seed=11))
    ours = backend.run("sd3_text_to_image", job, no_progress)
    pipe = stock_pipeline(backend, StableDiffusion3Pipeline, job.model)
    assert ours.info["seeds"] == [11, 12]
    assert ours.latents is not None and ours.latents.dtype == backend.dtype
    for index, seed in enumerate((11, 12)):
        kept, callback = final_latents()
        image = pipe(prompt=job.prompt, negative_prompt=job.negative_prompt, height=job.height, width=job.width,
                     num_inference_steps=job.steps, guidance_scale=job.guidance, max_sequence_length=LENGTH,
                     generator=torch.Generator("cpu").manual_seed(seed), callback_on_step_end=callback).images[0]
        assert torch.equal(ours.latents[index:index + 1], kept["latents"])
        assert np.array_equal(np.asarray(ours.images[index]), np.asarray(image))
    assert ours.images[0].size == (job.width, job.height)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_img2img_matches_the_stock_pipeline(dtype: str, request: pytest.FixtureRequest) -> None:
    from diffusers import StableDiffusion3Img2ImgPipeline

    backend = pick(request, dtype)
    job = sized(image_job(seed=21, strength=0.6), dtype)
    ours = backend.run("sd3_img2img", job, no_progress)
    pipe = stock_pipeline(backend, StableDiffusion3Img2ImgPipeline, job.model)
    kept, callback = final_latents()
    image = pipe(prompt=job.prompt, negative_prompt=job.negative_prompt, image=job.image, strength=job.strength,
                 height=job.height, width=job.width, num_inference_steps=job.steps, guidance_scale=job.guidance,
                 max_sequence_length=LENGTH, generator=torch.Generator("cpu").manual_seed(21),
                 callback_on_step_end=callback).images[0]
    assert ours.info["steps_run"] == 3  # strength 0.6 of 4 steps skips the first int(4 - 2.4) = 1
    assert ours.latents is not None and torch.equal(ours.latents, kept["latents"])
    assert np.array_equal(np.asarray(ours.images[0]), np.asarray(image))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_inpaint_matches_the_stock_pipeline_up_to_its_decode(dtype: str, request: pytest.FixtureRequest) -> None:
    """Same latents as the stock inpaint pipeline; the pixels are those latents decoded with the VAE's
    shift (which diffusers 0.42.1's inpaint decode leaves out) with the input laid back outside the mask."""
    from diffusers import StableDiffusion3InpaintPipeline

    backend = pick(request, dtype)
    job = sized(image_job(mask=True, seed=31, strength=0.9), dtype)
    ours = backend.run("sd3_inpaint", job, no_progress)
    pipe = stock_pipeline(backend, StableDiffusion3InpaintPipeline, job.model)
    arguments = dict(prompt=job.prompt, negative_prompt=job.negative_prompt, image=job.image, mask_image=job.mask,
                     strength=job.strength, height=job.height, width=job.width, num_inference_steps=job.steps,
                     guidance_scale=job.guidance, max_sequence_length=LENGTH)
    latents = pipe(**arguments, generator=torch.Generator("cpu").manual_seed(31), output_type="latent").images
    assert ours.latents is not None and torch.equal(ours.latents, latents)
    with torch.no_grad():
        vae = pipe.vae
        decoded = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    expected = overlay(pipe.image_processor, job.mask, job.image,
                       pipe.image_processor.postprocess(decoded, output_type="pil")[0], backend.settings.mask_blur)
    assert np.array_equal(np.asarray(ours.images[0]), np.asarray(expected))


@pytest.mark.parametrize("task", ["sd3_text_to_image", "sd3_img2img"])
def test_t5_off_matches_the_stock_pipeline_without_text_encoder_3(task: str, backend: Sd3Backend) -> None:
    from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline

    job = text_job(seed=41) if task == "sd3_text_to_image" else image_job(seed=41)
    job = dataclasses.replace(job, options={"t5": "off", "max_sequence_length": LENGTH})
    ours = backend.run(task, job, no_progress)
    assert ours.info["options"]["t5"] == "off"
    assert any(notice.startswith("T5 text encoder off") for notice in ours.info["notices"])
    cls = StableDiffusion3Pipeline if task == "sd3_text_to_image" else StableDiffusion3Img2ImgPipeline
    pipe = stock_pipeline(backend, cls, job.model, t5=False)
    extra = {} if task == "sd3_text_to_image" else {"image": job.image, "strength": job.strength}
    kept, callback = final_latents()
    image = pipe(prompt=job.prompt, negative_prompt=job.negative_prompt, height=job.height, width=job.width,
                 num_inference_steps=job.steps, guidance_scale=job.guidance, callback_on_step_end=callback,
                 max_sequence_length=LENGTH, generator=torch.Generator("cpu").manual_seed(41), **extra).images[0]
    assert ours.latents is not None and torch.equal(ours.latents, kept["latents"])
    assert np.array_equal(np.asarray(ours.images[0]), np.asarray(image))
    with_t5 = backend.run(task, dataclasses.replace(job, options={"max_sequence_length": LENGTH}), no_progress)
    assert not torch.equal(with_t5.latents, ours.latents)  # T5 conditions the image when it is on


@pytest.mark.parametrize("t5", ["device", "off"])
@pytest.mark.parametrize("length", [77, 120])
def test_staged_encoding_equals_encode_prompt(backend: Sd3Backend, t5: str, length: int) -> None:
    from diffusers import StableDiffusion3Pipeline

    job = text_job()
    tokenizers, _ = backend._small_parts()
    ours = encode(backend.manager, tokenizers, job.prompt, job.negative_prompt, max_sequence_length=length, t5=t5,
                  t5_width=lambda: backend._t5_width(job.model), dtype=backend.dtype,
                  timings={})
    pipe = stock_pipeline(backend, StableDiffusion3Pipeline, job.model, t5=t5 == "device")
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            job.prompt, None, None, device=backend.manager.device, negative_prompt=job.negative_prompt,
            max_sequence_length=length)
    assert ours.negative is not None
    assert ours.positive.embeds.shape == (1, 77 + length, 96)
    for mine, theirs in ((ours.positive.embeds, embeds), (ours.positive.pooled, pooled),
                         (ours.negative.embeds, negative), (ours.negative.pooled, negative_pooled)):
        assert torch.equal(mine, theirs)


def test_t5_on_the_cpu_gives_the_same_images(sd3_ctx: object, backend: Sd3Backend) -> None:
    from backends.runtime.memory import MemoryManager
    from backends.runtime.probe import GB, FakeProbe
    from tests.backends.sd3.common import tiny_settings

    manager = MemoryManager(FakeProbe(device_total=16 * GB), device="cpu")
    on_cpu = Sd3Backend(tiny_settings(t5="cpu"), manager, sd3_ctx)  # type: ignore[arg-type]
    job = text_job(seed=51)
    ours = on_cpu.run("sd3_text_to_image", job, no_progress)
    assert ours.info["options"]["t5"] == "cpu"
    assert np.array_equal(pixels(ours.images), pixels(backend.run("sd3_text_to_image", job, no_progress).images))
    assert {s.name: s.placement for s in manager.statuses()}["sd3.text_encoder_3"] == "cpu"  # lent from RAM
    assert VAE in [s.name for s in manager.statuses()]
