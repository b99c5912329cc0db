"""SD3.5 backend on tiny models: models and their defaults, batches, progress, Stop, inpaint, info."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image, ImageChops

from backends.runtime.errors import Cancelled, InputError, StudioError, UnknownNameError
from backends.runtime.image_requests import SdTextToImageRequest
from backends.runtime.loading import LoadContext
from backends.runtime.memory import MemoryManager
from backends.runtime.probe import GB, FakeProbe
from backends.runtime.progress import no_progress
from backends.sd3.backend import DECODE, DENOISE, Sd3Backend
from backends.sd3.images import seam_mask, steps_run
from backends.sd3.requests import model_defaults
from backends.sd3.spec import TRANSFORMER_KEYS
from tests.backends.sd3.common import ALL_MODELS, image_job, pixels, text_job, tiny_settings


def recorder() -> tuple[list[tuple[str, int, int]], Callable[[str, int, int], None]]:
    reports: list[tuple[str, int, int]] = []
    return reports, lambda stage, step, total: reports.append((stage, step, total))


def test_init_registers_the_offered_models_and_loads_nothing(sd3_ctx: LoadContext) -> None:
    manager = MemoryManager(FakeProbe(device_total=16 * GB), device="cpu")
    backend = Sd3Backend(tiny_settings(offer=["sd3.5-large-turbo"]), manager, sd3_ctx)
    assert backend.component_names() == ["sd3.text_encoder", "sd3.text_encoder_2", "sd3.text_encoder_3",
                                         "sd3.large-turbo.transformer", "sd3.vae"]
    assert {s.name: s.placement for s in manager.statuses()} == {n: "disk" for n in backend.component_names()}
    with pytest.raises(InputError, match="model: must be one of sd3.5-large-turbo"):
        backend.run("sd3_text_to_image", text_job(), no_progress)


def test_a_bad_offer_or_default_size_fails_when_the_backend_is_built(sd3_ctx: LoadContext) -> None:
    manager = MemoryManager(FakeProbe(device_total=16 * GB), device="cpu")
    with pytest.raises(StudioError, match="sd3.offer"):
        Sd3Backend(tiny_settings(offer=["sdxl"]), manager, sd3_ctx)
    settings = tiny_settings()
    settings.defaults.medium = dataclasses.replace(settings.defaults.medium, width=300)
    with pytest.raises(StudioError, match="sd3.defaults.medium.width must be a multiple of 64"):
        Sd3Backend(settings, manager, sd3_ctx)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_every_model_runs_on_the_tiny_preset_with_its_own_defaults(backend: Sd3Backend, model: str) -> None:
    defaults = model_defaults(backend.settings, model)
    job = SdTextToImageRequest.build("a cat", "blurry", defaults.width, defaults.height, defaults.steps,
                                     defaults.guidance, 1, 3, model, offered=ALL_MODELS, default_model=ALL_MODELS[0])
    reports, progress = recorder()
    result = backend.run("sd3_text_to_image", job, progress)
    assert reports == [(DENOISE, step, defaults.steps) for step in range(1, defaults.steps + 1)] + [(DECODE, 1, 1)]
    info = result.info
    assert (info["model"], info["steps"], info["guidance"]) == (model, defaults.steps, defaults.guidance)
    assert info["options"] == {"max_sequence_length": 256, "t5": "device"}
    assert info["transformer"] == f"tiny:sd3/{TRANSFORMER_KEYS[model]}"  # each model its own weights
    assert info["guided"] is (defaults.guidance > 1)
    assert result.images[0].size == (256, 256)


def test_the_models_differ_and_turbo_runs_unguided(backend: Sd3Backend) -> None:
    turbo = model_defaults(backend.settings, "sd3.5-large-turbo")
    assert (turbo.steps, turbo.guidance) == (2, 0.0)  # the tiny preset's steps, the model card's guidance
    results = {model: backend.run("sd3_text_to_image", text_job(model=model), no_progress) for model in ALL_MODELS}
    latents = [results[model].latents for model in ALL_MODELS]
    assert not torch.equal(latents[0], latents[1]) and not torch.equal(latents[1], latents[2])
    # Without guidance the negative prompt is never encoded: it cannot change the image.
    plain = backend.run("sd3_text_to_image", text_job(model="sd3.5-large-turbo", guidance=0.0), no_progress)
    other = backend.run("sd3_text_to_image", text_job(model="sd3.5-large-turbo", guidance=0.0,
                                                      negative_prompt="a dog"), no_progress)
    assert torch.equal(plain.latents, other.latents) and plain.info["guided"] is False
    guided = backend.run("sd3_text_to_image", text_job(negative_prompt="a dog"), no_progress)
    assert not torch.equal(guided.latents, results["sd3.5-medium"].latents)


def test_each_image_of_a_batch_is_the_one_image_job_at_its_own_seed(backend: Sd3Backend) -> None:
    batch = backend.run("sd3_text_to_image", text_job(num_images=3, seed=2**32 - 2), no_progress)
    assert batch.info["seeds"] == [2**32 - 2, 2**32 - 1, 0]
    assert batch.latents is not None and batch.latents.shape == (3, 16, 32, 32)
    assert batch.info["latent_shape"] == [3, 16, 32, 32]
    for index, seed in enumerate(batch.info["seeds"]):
        alone = backend.run("sd3_text_to_image", text_job(seed=seed), no_progress)
        assert np.array_equal(np.asarray(batch.images[index]), np.asarray(alone.images[0]))
    assert not np.array_equal(*pixels(batch.images[:2]))


def test_a_batch_reports_every_step_of_each_image_in_turn(backend: Sd3Backend) -> None:
    reports, progress = recorder()
    backend.run("sd3_text_to_image", text_job(num_images=2, steps=3), progress)
    assert reports == [(f"Image {image}/2 · {stage}", step, total) for image in (1, 2)
                       for stage, total in ((DENOISE, 3), (DECODE, 1)) for step in range(1, total + 1)]


def test_img2img_reports_the_steps_its_strength_runs(backend: Sd3Backend) -> None:
    assert [steps_run(10, s) for s in (0.0, 0.05, 0.1, 0.5, 0.8, 1.0)] == [0, 1, 1, 5, 8, 10]
    reports, progress = recorder()
    result = backend.run("sd3_img2img", image_job(strength=0.5), progress)
    assert reports == [(DENOISE, 1, 2), (DENOISE, 2, 2), (DECODE, 1, 1)]
    assert (result.info["steps"], result.info["steps_run"], result.info["strength"]) == (4, 2, 0.5)
    # More strength moves the picture further from the input.
    def distance(strength: float) -> float:
        out = backend.run("sd3_img2img", image_job(strength=strength), no_progress).images[0]
        return float(np.abs(np.asarray(out, dtype=np.float32) - np.asarray(image_job().image, np.float32)).mean())

    assert distance(0.25) < distance(1.0)


@pytest.mark.parametrize("task", ["sd3_img2img", "sd3_inpaint"])
def test_strength_zero_returns_the_input_unchanged(backend: Sd3Backend, task: str) -> None:
    job = image_job(mask=task == "sd3_inpaint", strength=0.0, num_images=2)
    reports, progress = recorder()
    result = backend.run(task, job, progress)
    assert reports == [] and result.latents is None and result.info["steps_run"] == 0
    assert all(np.array_equal(np.asarray(image), np.asarray(job.image)) for image in result.images)
    assert "strength 0 runs no denoising step: the input is returned unchanged" in result.info["notices"]


def test_stop_keeps_the_images_already_finished(backend: Sd3Backend) -> None:
    """Stop during image 3 of 4 gives images 1 and 2, the same as the whole job's, and says so."""
    job = text_job(num_images=4, seed=5)

    def stop_in_image(number: int) -> Callable[[str, int, int], None]:
        def report(stage: str, step: int, total: int) -> None:
            if stage == f"Image {number}/4 · {DENOISE}" and step == 2:
                raise Cancelled("stopped")

        return report

    kept = backend.run("sd3_text_to_image", job, stop_in_image(3))
    whole = backend.run("sd3_text_to_image", dataclasses.replace(job, num_images=2), no_progress)
    assert len(kept.images) == 2 and kept.info["seeds"] == [5, 6] and kept.info["num_images"] == 4
    assert np.array_equal(pixels(kept.images), pixels(whole.images))
    assert kept.info["notices"] == ["stopped after 2 of 4 images: the finished ones are kept"]
    assert kept.latents is not None and torch.equal(kept.latents, whole.latents)
    with pytest.raises(Cancelled):  # nothing finished yet: nothing to keep
        backend.run("sd3_text_to_image", job, stop_in_image(1))
    assert all(backend.manager.component(name).in_use == 0 for name in backend.component_names())


def test_inpaint_keeps_the_input_outside_a_narrow_seam_and_repaints_the_mask(backend: Sd3Backend) -> None:
    job = image_job(mask=True, strength=1.0)
    result = backend.run("sd3_inpaint", job, no_progress)
    out, original = np.asarray(result.images[0]), np.asarray(job.image)
    seam = np.asarray(seam_mask(job.mask, backend.settings.mask_blur))
    assert np.array_equal(out[seam == 0], original[seam == 0])  # bit for bit wherever the seam is 0
    # The seam is narrow: everything more than 3 blur radii outside the mask's box is untouched.
    inside = np.zeros(seam.shape, bool)
    inside[96 - 12:160 + 12, 96 - 12:160 + 12] = True
    assert (seam[~inside] == 0).all() and (seam[96:160, 96:160] > 0).all()
    assert np.array_equal(out[~inside], original[~inside])
    # The masked area changed, well beyond rounding.
    changed = np.abs(out[100:156, 100:156].astype(int) - original[100:156, 100:156].astype(int))
    assert changed.mean() > 10
    assert result.info["mask_blur"] == 4 and result.info["mask_fraction"] == pytest.approx(64 * 64 / 256**2)


def test_inpaint_without_blur_keeps_everything_outside_the_mask(sd3_ctx: LoadContext) -> None:
    backend = Sd3Backend(tiny_settings(mask_blur=0), MemoryManager(FakeProbe(device_total=16 * GB)), sd3_ctx)
    job = image_job(mask=True, strength=1.0)
    out = backend.run("sd3_inpaint", job, no_progress).images[0]
    difference = ImageChops.difference(out, job.image).convert("L")
    assert difference.getbbox() is not None
    outside = Image.new("L", out.size, 255)
    outside.paste(0, (96, 96, 160, 160))
    assert ImageChops.multiply(difference, outside).getbbox() is None


def test_info_carries_what_the_tab_saves(backend: Sd3Backend) -> None:
    job = text_job(truncated=("prompt",))
    info = backend.run("sd3_text_to_image", job, no_progress).info
    assert {"backend", "task", "prompt", "negative_prompt", "seed", "seeds", "model", "width", "height", "steps",
            "guidance", "num_images", "options", "dtype", "device", "transformer", "vae", "text_encoder",
            "text_encoder_2", "text_encoder_3", "timings", "notices"} <= set(info)
    assert (info["backend"], info["task"], info["seed"], info["seeds"]) == ("sd3", "sd3_text_to_image", 7, [7])
    assert set(info["timings"]) == {"text_encoders", "t5", "transformer", "vae_decode", "total"}
    assert info["notices"] == ["prompt cut to 4000 characters"]
    import json

    json.dumps(info)  # JSON-able as it is


def test_long_prompts_say_what_each_encoder_cut(backend: Sd3Backend) -> None:
    prompt = " ".join(["a red house"] * 40)
    result = backend.run("sd3_text_to_image", text_job(prompt=prompt), no_progress)
    tokenizers, _ = backend._small_parts()
    clip, t5 = len(tokenizers.clip_l(prompt).input_ids), len(tokenizers.t5(prompt).input_ids)
    assert f"prompt truncated to 77 CLIP tokens ({clip} given)" in result.info["notices"]
    assert any(n.startswith(f"prompt truncated to 77 T5 tokens ({t5} given)") for n in result.info["notices"])
    longer = backend.run("sd3_text_to_image", text_job(prompt=prompt, options={"max_sequence_length": 200}),
                         no_progress)
    assert not any("T5 tokens" in notice for notice in longer.info["notices"])
    assert not torch.equal(longer.latents, result.latents)  # T5 read further


def test_wrong_task_request_or_option_fails_loudly(backend: Sd3Backend) -> None:
    with pytest.raises(UnknownNameError, match="sd3_text_to_image"):
        backend.run("text_to_image", text_job(), no_progress)
    with pytest.raises(TypeError, match="sd3_img2img needs SdImageRequest"):
        backend.run("sd3_img2img", text_job(), no_progress)
    with pytest.raises(TypeError, match="with a mask"):
        backend.run("sd3_inpaint", image_job(), no_progress)
    with pytest.raises(InputError, match="max_sequence_length: must be between 77 and 512, got 600"):
        backend.run("sd3_text_to_image", text_job(options={"max_sequence_length": 600}), no_progress)


def test_the_registry_serves_every_model_of_the_tiny_preset(tiny_cache: object, tmp_path: object) -> None:
    """The app's path: Studio -> registry -> Sd3Backend built from the spec's factory, under the manager."""
    from pathlib import Path

    from backends.families import FAMILIES
    from backends.runtime.studio import Studio, StudioConfig

    studio = Studio(StudioConfig(preset="tiny", cache_dir=Path(str(tiny_cache)),
                                 outputs_dir=Path(str(tmp_path)) / "out", offline=True), FAMILIES)
    registry = studio.registry
    assert {model: registry.models()[model] for model in ALL_MODELS} == {model: "sd3" for model in ALL_MODELS}
    assert [registry.model_task(model, "inpaint") for model in ALL_MODELS] == ["sd3_inpaint"] * 3
    job = text_job(model="sd3.5-large-turbo", guidance=0.0, steps=2)
    reports, progress = recorder()
    result = registry.run(registry.model_task(job.model, "text_to_image"), job, progress)
    assert len(reports) == 3 and result.images[0].size == (256, 256)
    assert result.info["transformer"] == "tiny:sd3/transformer_large_turbo"
    placed = {s.name: s.placement for s in studio.manager.statuses() if s.name.startswith("sd3.")}
    assert placed["sd3.large-turbo.transformer"] == "gpu" and placed["sd3.large.transformer"] == "disk"
