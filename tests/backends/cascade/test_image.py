"""Variation, img2img and live previews on the tiny Stable Cascade."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from backends.cascade.backend import CascadeBackend
from backends.cascade.image import EFFNET, IMAGE_ENCODER, PREVIEWER
from backends.cascade.requests import ImageVariationRequest, Img2ImgRequest, TextToImageRequest
from backends.cascade.spec import CascadeSettings
from backends.cascade.stages import PRIOR, STAGE_A, STAGE_B, STAGE_C, ImageResult
from backends.families import load_context, load_preset
from backends.runtime.memory import MemoryManager
from backends.runtime.previews import WithPreviews
from backends.runtime.probe import GB, FakeProbe
from backends.runtime.progress import no_progress

SAMPLING = dict(prior_steps=4, decoder_steps=2, prior_guidance=4.0, decoder_guidance=0.0)
PROMPT = "a photo of a cat"


def picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth random picture (blocks of colour, bilinearly enlarged)."""
    blocks = (np.random.default_rng(seed).random((3, 4, 3)) * 255).astype(np.uint8)
    return Image.fromarray(blocks).resize(size, Image.Resampling.BILINEAR)


def variation_request(image: Image.Image, **changes: Any) -> ImageVariationRequest:
    fields = dict(prompt="", negative_prompt="", width=384, height=256, num_images=1, seed=7)
    fields.update(changes)
    return ImageVariationRequest.build(image, fields["prompt"], fields["negative_prompt"], fields["width"],
                                       fields["height"], fields["num_images"], fields["seed"], sampling=SAMPLING)


def img2img_request(image: Image.Image, strength: float, **changes: Any) -> Img2ImgRequest:
    fields = dict(prompt=PROMPT, width=384, height=256, seed=7)
    fields.update(changes)
    return Img2ImgRequest.build(image, fields["prompt"], "", strength, fields["width"], fields["height"],
                                fields["seed"], sampling=SAMPLING)


def text_request(**changes: Any) -> TextToImageRequest:
    fields = dict(width=384, height=256, seed=7)
    fields.update(changes)
    return TextToImageRequest.build(PROMPT, "", fields["width"], fields["height"], SAMPLING["prior_steps"],
                                    SAMPLING["decoder_steps"], SAMPLING["prior_guidance"],
                                    SAMPLING["decoder_guidance"], 1, fields["seed"])


def pixels(result: ImageResult) -> np.ndarray:
    return np.stack([np.asarray(image) for image in result.images])


@pytest.fixture(scope="module")
def backend(tiny_cache: Path) -> CascadeBackend:

    settings: CascadeSettings = load_preset("tiny").settings.cascade
    manager = MemoryManager(FakeProbe(device_total=16 * GB), device="cpu")
    return CascadeBackend(settings, manager, load_context(cache_dir=tiny_cache, offline=True))


STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module")
def img2img_runs(backend: CascadeBackend) -> dict[float, tuple[ImageResult, list[tuple[str, int, int]]]]:
    """img2img of ``picture(1)`` at each of ``STRENGTHS`` (seed 7), with its progress reports."""
    runs = {}
    for strength in STRENGTHS:
        reports: list[tuple[str, int, int]] = []
        result = backend.run("img2img", img2img_request(picture(1), strength),
                             lambda stage, step, total: reports.append((stage, step, total)))
        runs[strength] = (result, reports)
    return runs


def test_image_components_register_only_when_first_used(tiny_cache: Path) -> None:

    manager = MemoryManager(FakeProbe(device_total=16 * GB), device="cpu")
    fresh = CascadeBackend(load_preset("tiny").settings.cascade, manager, load_context(tiny_cache, offline=True))
    # A text-only session's /status lists only the text-to-image components.
    assert {status.name for status in manager.statuses()} == set(fresh.component_names())
    fresh.images.encode(picture(1), 256, 256)
    assert {s.name: s.placement for s in manager.statuses()}[EFFNET] == "gpu"
    assert not {IMAGE_ENCODER, PREVIEWER} & {status.name for status in manager.statuses()}


def test_img2img_at_strength_0_hands_the_encoded_input_to_stage_b(backend: CascadeBackend,
                                                                   img2img_runs: dict) -> None:
    result, reports = img2img_runs[0.0]
    encoded = backend.images.encode(picture(1), 384, 256)
    assert encoded.shape == (1, 16, 6, 9)  # the stage C size of a 384x256 output
    assert torch.equal(result.stage_c_latents, encoded)
    assert [r[0] for r in reports] == [STAGE_B, STAGE_B, STAGE_A]  # stage C did not run at all
    assert result.info["prior_steps_run"] == 0 and result.info["strength"] == 0.0
    assert result.images[0].size == (384, 256)


def test_img2img_moves_further_from_the_input_as_strength_grows(backend: CascadeBackend,
                                                                 img2img_runs: dict) -> None:
    encoded = backend.images.encode(picture(1), 384, 256)
    distances = [float((img2img_runs[s][0].stage_c_latents - encoded).norm()) for s in STRENGTHS]
    assert distances == sorted(distances) and len(set(distances)) == len(distances), distances
    # round(4 x strength) steps from t = strength, as the official schedule; each one reported.
    assert [img2img_runs[s][0].info["prior_steps_run"] for s in STRENGTHS] == [0, 1, 2, 3, 4]
    assert [r for r in img2img_runs[0.5][1] if r[0] == STAGE_C] == [(STAGE_C, 1, 2), (STAGE_C, 2, 2)]


def test_img2img_at_strength_1_is_text_to_image(backend: CascadeBackend, img2img_runs: dict) -> None:
    result = img2img_runs[1.0][0]
    text_to_image = backend.run("text_to_image", text_request(), no_progress)
    assert torch.equal(result.stage_c_latents, text_to_image.stage_c_latents)
    assert np.array_equal(pixels(result), pixels(text_to_image))
    assert "effnet" not in result.info["timings"]  # the input is ignored: not even encoded


def test_img2img_is_seeded_and_follows_the_input(backend: CascadeBackend, img2img_runs: dict) -> None:
    first = img2img_runs[0.5][0]
    again = backend.run("img2img", img2img_request(picture(1), 0.5), no_progress)
    reseeded = backend.run("img2img", img2img_request(picture(1), 0.5, seed=8), no_progress)
    other_input = backend.run("img2img", img2img_request(picture(2), 0.5), no_progress)
    assert np.array_equal(pixels(first), pixels(again))
    assert not torch.equal(first.stage_c_latents, reseeded.stage_c_latents)
    assert not torch.equal(first.stage_c_latents, other_input.stage_c_latents)
    assert first.info["task"] == "img2img" and first.info["effnet"] == "tiny:cascade"


def test_variation_follows_the_input_image_at_a_fixed_seed(backend: CascadeBackend) -> None:
    first = backend.run("image_variation", variation_request(picture(1), num_images=2), no_progress)
    again = backend.run("image_variation", variation_request(picture(1), num_images=2), no_progress)
    other = backend.run("image_variation", variation_request(picture(2), num_images=2), no_progress)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))
    assert not torch.equal(first.stage_c_latents, other.stage_c_latents)
    assert [image.size for image in first.images] == [(384, 256)] * 2
    assert not np.array_equal(*pixels(first))  # each image of the batch gets its own noise
    assert first.info["task"] == "image_variation" and first.info["input_size"] == [320, 240]
    assert "image_encoder" in first.info["timings"]


def test_variation_matches_the_stock_prior_pipeline_with_images(backend: CascadeBackend) -> None:
    """Same components and noise as ``StableCascadePriorPipeline(images=[...])``: same stage C latents
    (image i of ours is the pipeline's one image at seed + i)."""
    from diffusers import DDPMWuerstchenScheduler, StableCascadePriorPipeline

    job = variation_request(picture(3), prompt="a red house", negative_prompt="blurry", num_images=2, seed=11)
    ours = backend.run("image_variation", job, no_progress)
    tokenizer, scheduler, _ = backend._aux()
    manager = backend.manager
    with manager.use("cascade.text_encoder") as text_encoder, manager.use(PRIOR) as prior, \
            manager.use(IMAGE_ENCODER) as image_encoder:
        pipe = StableCascadePriorPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, prior=prior,
            scheduler=DDPMWuerstchenScheduler.from_config(scheduler.config),
            image_encoder=image_encoder, feature_extractor=backend.images._processor())
        pipe.set_progress_bar_config(disable=True)
        embeddings = [pipe(images=[job.image], prompt=job.prompt, negative_prompt=job.negative_prompt,
                           height=job.height, width=job.width, num_inference_steps=job.prior_steps,
                           guidance_scale=job.prior_guidance, num_images_per_prompt=1,
                           generator=torch.Generator("cpu").manual_seed(seed)).image_embeddings
                      for seed in (job.seed, job.seed + 1)]
    assert torch.equal(ours.stage_c_latents, torch.cat(embeddings))


@pytest.mark.parametrize("task", ["text_to_image", "image_variation", "img2img"])
def test_previews_arrive_during_stage_c_and_change_nothing(backend: CascadeBackend, task: str) -> None:
    job = {"text_to_image": text_request(), "image_variation": variation_request(picture(1), num_images=2),
           "img2img": img2img_request(picture(1), 0.75)}[task]

    def previewer_last_used() -> float | None:
        return {s.name: s.last_used for s in backend.manager.statuses()}.get(PREVIEWER)

    before = previewer_last_used()
    plain = backend.run(task, job, no_progress)
    assert previewer_last_used() == before  # without a preview channel the previewer is not touched
    events: list[tuple[str, Any]] = []

    def progress(stage: str, step: int, total: int) -> None:
        events.append(("step", (stage, step)))

    def preview(images: list[Image.Image], step: int, total: int) -> None:
        events.append(("preview", (len(images), images[0].size, step, total)))

    previewed = backend.run(task, job, WithPreviews(progress, preview, every=2))
    assert previewer_last_used() not in (None, before)
    assert np.array_equal(pixels(previewed), pixels(plain))  # previews draw no random numbers
    total = 4 if task != "img2img" else 3  # img2img at 0.75 runs round(4 x 0.75) steps
    previews = [value for kind, value in events if kind == "preview"]
    batch = job.num_images
    # Each image in turn (one picture a preview), every 2 steps and after the last; 8x the 6x9 latent.
    steps = sorted({*range(2, total + 1, 2), total})
    assert previews == [(1, (72, 48), step, total) for _ in range(batch) for step in steps]
    # Each preview follows its step's report, and all of an image's come before its stage B.
    stage_c = [STAGE_C] if batch == 1 else [f"Image {i + 1}/{batch} · {STAGE_C}" for i in range(batch)]
    stage_b = [STAGE_B] if batch == 1 else [f"Image {i + 1}/{batch} · {STAGE_B}" for i in range(batch)]
    for image in range(batch):
        mine = events[events.index(("step", (stage_c[image], 1))):events.index(("step", (stage_b[image], 1)))]
        shown = [value for kind, value in mine if kind == "preview"]
        assert [value[2] for value in shown] == steps
        for at, (kind, value) in enumerate(mine):
            if kind == "preview":
                assert mine[at - 1] == ("step", (stage_c[image], value[2]))


def test_a_request_of_the_wrong_type_is_refused(backend: CascadeBackend) -> None:
    with pytest.raises(TypeError, match="img2img needs Img2ImgRequest, got TextToImageRequest"):
        backend.run("img2img", text_request(), no_progress)
