"""Stable Cascade backend on tiny models: sizes, seeding of both stages, progress, CFG, notices."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch

from backends.cascade.backend import CascadeBackend
from backends.cascade.requests import TextToImageRequest
from backends.cascade.spec import CascadeSettings
from backends.cascade.stages import (
    DECODER,
    PRIOR,
    STAGE_A,
    STAGE_B,
    STAGE_C,
    TEXT_ENCODER,
    VQGAN,
    ImageResult,
    working_bytes,
)
from backends.families import TINY, load_context
from backends.runtime.errors import Cancelled, UnknownNameError
from backends.runtime.loading import LoadContext, Source
from backends.runtime.memory import MemoryManager
from backends.runtime.probe import GB, FakeProbe
from backends.runtime.progress import no_progress


def tiny_settings(dtype: str = "float32") -> CascadeSettings:
    def src(subfolder: str) -> Source:
        return Source("tiny:cascade", subfolder)

    return CascadeSettings(
        prior=src("prior"), decoder=src("decoder"), text_encoder=src("text_encoder"),
        tokenizer=src("tokenizer"), vqgan=src("vqgan"), prior_scheduler=src("scheduler"),
        decoder_scheduler=src("scheduler"), dtype=dtype,
    )


def make_request(**changes: Any) -> TextToImageRequest:
    base = TextToImageRequest.build(
        prompt="a photo of a cat", negative_prompt="", width=256, height=256, prior_steps=4,
        decoder_steps=3, prior_guidance=4.0, decoder_guidance=0.0, num_images=1, seed=7,
    )
    return replace(base, **changes)


def stack(images: list[Any]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def pixels(result: ImageResult) -> np.ndarray:
    return stack(result.images)


@pytest.fixture(scope="module")
def ctx(tiny_cache: Path) -> LoadContext:
    return load_context(cache_dir=tiny_cache, offline=True)


@pytest.fixture(scope="module")
def manager() -> MemoryManager:
    return MemoryManager(FakeProbe(device_total=16 * GB), device="cpu")


@pytest.fixture(scope="module")
def backend(ctx: LoadContext, manager: MemoryManager) -> CascadeBackend:
    return CascadeBackend(tiny_settings(), manager, ctx)


@pytest.fixture(scope="module")
def bf16_backend(ctx: LoadContext) -> CascadeBackend:
    return CascadeBackend(tiny_settings("bfloat16"), MemoryManager(FakeProbe(device_total=16 * GB)), ctx)


@pytest.fixture(scope="module")
def baseline(backend: CascadeBackend) -> ImageResult:
    return backend.run("text_to_image", make_request(), no_progress)


def test_init_registers_components_and_loads_nothing(ctx: LoadContext) -> None:
    manager = MemoryManager(FakeProbe(device_total=16 * GB), device="cpu")
    backend = CascadeBackend(tiny_settings(), manager, ctx)
    assert backend.component_names() == [TEXT_ENCODER, PRIOR, DECODER, VQGAN]
    statuses = {status.name: status.placement for status in manager.statuses()}
    assert statuses == {name: "disk" for name in backend.component_names()}


def test_images_have_requested_size_and_count(backend: CascadeBackend) -> None:
    result = backend.run("text_to_image", make_request(width=384, height=256, num_images=2), no_progress)
    assert [image.size for image in result.images] == [(384, 256), (384, 256)]
    assert all(image.mode == "RGB" for image in result.images)
    assert result.stage_c_latents.shape == (2, 16, 6, 9)
    assert result.stage_c_latents.device.type == "cpu"
    info = result.info
    assert (info["width"], info["height"], info["num_images"], info["seed"]) == (384, 256, 2, 7)
    assert (info["prior_steps"], info["decoder_steps"]) == (4, 3)
    assert (info["prior_guidance"], info["decoder_guidance"]) == (4.0, 0.0)
    assert info["dtype"] == "float32"
    assert info["prior"] == "tiny:cascade/prior" and info["decoder"] == "tiny:cascade/decoder"
    assert set(info["timings"]) == {"text_encoder", "prior", "decoder", "vqgan", "total"}
    assert info["notices"] == []
    # The two images of one batch differ: each gets its own noise.
    assert not np.array_equal(*pixels(result))


def test_same_seed_gives_identical_pixels(backend: CascadeBackend, baseline: ImageResult) -> None:
    again = backend.run("text_to_image", make_request(), no_progress)
    assert np.array_equal(pixels(again), pixels(baseline))
    assert torch.equal(again.stage_c_latents, baseline.stage_c_latents)


def test_another_seed_changes_both_stages(backend: CascadeBackend, baseline: ImageResult) -> None:
    other = backend.run("text_to_image", make_request(seed=8), no_progress)
    assert other.info["seed"] == 8
    assert not torch.equal(other.stage_c_latents, baseline.stage_c_latents)
    assert not np.array_equal(pixels(other), pixels(baseline))


def test_decoder_is_seeded_too(backend: CascadeBackend, baseline: ImageResult) -> None:
    """Stage B alone, on the same stage C latents: its noise follows the seed."""
    latents = baseline.stage_c_latents
    same = backend.decode_latents(latents, make_request(), no_progress)
    same_again = backend.decode_latents(latents, make_request(), no_progress)
    other = backend.decode_latents(latents, make_request(seed=8), no_progress)
    assert np.array_equal(stack(same), pixels(baseline))  # the second half of run()
    assert np.array_equal(stack(same), stack(same_again))
    assert not np.array_equal(stack(same), stack(other))


def test_progress_reports_every_step_in_order(backend: CascadeBackend) -> None:
    reports: list[tuple[str, int, int]] = []
    backend.run("text_to_image", make_request(prior_steps=5, decoder_steps=2),
                lambda stage, step, total: reports.append((stage, step, total)))
    expected = [(STAGE_C, step, 5) for step in range(1, 6)] + [(STAGE_B, step, 2) for step in (1, 2)]
    assert reports == expected + [(STAGE_A, 1, 1)]


def test_cancel_from_progress_propagates(backend: CascadeBackend, manager: MemoryManager,
                                         baseline: ImageResult) -> None:
    def stop_in_stage_b(stage: str, step: int, total: int) -> None:
        if stage == STAGE_B:
            raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        backend.run("text_to_image", make_request(), stop_in_stage_b)
    assert all(manager.component(name).in_use == 0 for name in backend.component_names())
    # The backend keeps working, with the same result as before.
    assert np.array_equal(pixels(backend.run("text_to_image", make_request(), no_progress)), pixels(baseline))


def test_each_image_of_a_batch_is_the_one_image_job_at_its_own_seed(backend: CascadeBackend) -> None:
    """Images are made one after another at seed, seed + 1, …: any of them can be made again alone."""
    batch = backend.run("text_to_image", make_request(num_images=3, seed=41), no_progress)
    assert batch.info["seeds"] == [41, 42, 43]
    for index, seed in enumerate((41, 42, 43)):
        alone = backend.run("text_to_image", make_request(seed=seed), no_progress)
        assert np.array_equal(np.asarray(batch.images[index]), np.asarray(alone.images[0]))
        assert torch.equal(batch.stage_c_latents[index:index + 1], alone.stage_c_latents)
    top = backend.run("text_to_image", make_request(num_images=2, seed=2**32 - 1), no_progress)
    assert top.info["seeds"] == [2**32 - 1, 0]  # wraps, so every seed stays one that can be typed


def test_a_batch_reports_each_image_s_stages_in_turn(backend: CascadeBackend) -> None:
    reports: list[tuple[str, int, int]] = []
    backend.run("text_to_image", make_request(prior_steps=2, decoder_steps=1, num_images=2),
                lambda stage, step, total: reports.append((stage, step, total)))
    expected = [(f"Image {image}/2 · {stage}", step, total) for image in (1, 2)
                for stage, total in ((STAGE_C, 2), (STAGE_B, 1), (STAGE_A, 1)) for step in range(1, total + 1)]
    assert reports == expected


def test_stop_keeps_the_images_already_finished(backend: CascadeBackend, manager: MemoryManager) -> None:
    """As AUTOMATIC1111's Interrupt: Stop during image 3 of 4 gives images 1 and 2, and says so."""
    job = make_request(num_images=4, seed=5)

    def stop_in_image(number: int) -> Callable[[str, int, int], None]:
        def report(stage: str, step: int, total: int) -> None:
            if stage.startswith(f"Image {number}/4 · {STAGE_B}"):
                raise Cancelled("stopped")

        return report

    kept = backend.run("text_to_image", job, stop_in_image(3))
    whole = backend.run("text_to_image", job, no_progress)
    assert len(kept.images) == 2 and kept.info["seeds"] == [5, 6]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(kept.images, whole.images))
    assert kept.info["num_images"] == 4 and kept.info["stage_c_shape"][0] == 2
    assert kept.info["notices"] == ["stopped after 2 of 4 images: the finished ones are kept"]
    assert torch.equal(kept.stage_c_latents, whole.stage_c_latents[:2])
    with pytest.raises(Cancelled):  # nothing finished yet: nothing to keep
        backend.run("text_to_image", job, stop_in_image(1))
    assert all(manager.component(name).in_use == 0 for name in backend.component_names())


def test_negative_prompt_matters_only_with_guidance(backend: CascadeBackend, baseline: ImageResult) -> None:
    negative = backend.run("text_to_image", make_request(negative_prompt="blurry dark"), no_progress)
    assert not torch.equal(negative.stage_c_latents, baseline.stage_c_latents)
    # guidance <= 1 switches classifier-free guidance off, and the negative prompt with it.
    plain = backend.run("text_to_image", make_request(prior_guidance=1.0), no_progress)
    plain_negative = backend.run("text_to_image", make_request(prior_guidance=1.0, negative_prompt="blurry"),
                                 no_progress)
    assert torch.equal(plain.stage_c_latents, plain_negative.stage_c_latents)
    assert not torch.equal(plain.stage_c_latents, baseline.stage_c_latents)


def test_guidance_scales_act_on_their_own_stage(backend: CascadeBackend, baseline: ImageResult) -> None:
    prior_2 = backend.run("text_to_image", make_request(prior_guidance=2.0), no_progress)
    assert not torch.equal(prior_2.stage_c_latents, baseline.stage_c_latents)
    decoder_3 = backend.run("text_to_image", make_request(decoder_guidance=3.0), no_progress)
    assert torch.equal(decoder_3.stage_c_latents, baseline.stage_c_latents)  # stage C unchanged
    assert not np.array_equal(pixels(decoder_3), pixels(baseline))


def test_long_prompt_gives_truncation_notice(backend: CascadeBackend) -> None:
    prompt = " ".join(["a red house"] * 40)
    tokenizer = backend._aux()[0]
    given = len(tokenizer(prompt).input_ids)
    assert given > 77
    result = backend.run("text_to_image", make_request(prompt=prompt, truncated=("prompt",)), no_progress)
    assert f"prompt truncated to 77 tokens ({given} given)" in result.info["notices"]
    assert any(notice.startswith("prompt cut to") for notice in result.info["notices"])
    # Only the first 77 tokens count: a different tail gives the same image.
    other_tail = backend.run("text_to_image", make_request(prompt=prompt + " green dog"), no_progress)
    assert np.array_equal(pixels(other_tail), pixels(result))


def test_unknown_task_lists_known_tasks(backend: CascadeBackend) -> None:
    with pytest.raises(UnknownNameError, match="text_to_image"):
        backend.run("image_to_video", make_request(), no_progress)


class RecordingManager:
    """Wraps the real manager and records when each component is held and with what estimate."""

    def __init__(self, inner: MemoryManager) -> None:
        self.inner = inner
        self.device = inner.device
        self.events: list[tuple[str, str]] = []
        self.needs: dict[str, int] = {}

    def register(self, name: str, loader: Callable[[], torch.nn.Module], *, size_hint: int = 0) -> None:
        self.inner.register(name, loader, size_hint=size_hint)

    def room_beside(self, size: int) -> int:
        return self.inner.room_beside(size)

    def usable_free(self) -> int:
        return self.inner.usable_free()

    @contextlib.contextmanager
    def use(self, name: str, working_bytes: int | Callable[[torch.nn.Module], int] = 0
            ) -> Iterator[torch.nn.Module]:
        with self.inner.use(name, working_bytes) as module:
            self.needs[name] = working_bytes(module) if callable(working_bytes) else working_bytes
            self.events.append(("enter", name))
            yield module
            self.events.append(("exit", name))


def test_each_component_is_held_only_during_its_stage(ctx: LoadContext) -> None:
    recorder = RecordingManager(MemoryManager(FakeProbe(device_total=16 * GB), device="cpu"))
    backend = CascadeBackend(tiny_settings(), recorder, ctx)
    backend.run("text_to_image", make_request(), no_progress)
    names = backend.component_names()
    assert recorder.events == [(event, name) for name in names for event in ("enter", "exit")]
    assert all(recorder.needs[name] > 0 for name in names)


def test_working_memory_grows_with_batch_guidance_and_size() -> None:
    small = working_bytes(make_request(prior_guidance=1.0, decoder_guidance=0.0), 2)
    guided = working_bytes(make_request(prior_guidance=4.0, decoder_guidance=2.0), 2)
    batch = working_bytes(make_request(prior_guidance=1.0, num_images=4), 2)
    large = working_bytes(make_request(prior_guidance=1.0, width=1024, height=1024), 2)
    assert set(small) == {"text_encoder", "prior", "decoder", "vqgan"}
    for stage in ("prior", "decoder"):
        assert guided[stage] > small[stage] and batch[stage] > small[stage] and large[stage] > small[stage]
    assert batch["vqgan"] > small["vqgan"] and large["vqgan"] > small["vqgan"]
    assert guided["text_encoder"] == 2 * small["text_encoder"]
    assert working_bytes(make_request(), 4)["prior"] == 2 * working_bytes(make_request(), 2)["prior"]


def test_working_memory_reads_the_model_configs(tiny_cache: Path) -> None:
    """Tiny models get tiny estimates; config dicts (load_config) and config objects both work."""
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
    from transformers import CLIPTextConfig

    root = TINY.ensure("cascade", tiny_cache)
    configs = {
        "text_encoder": CLIPTextConfig.from_pretrained(root / "text_encoder"),
        "prior": StableCascadeUNet.load_config(root / "prior"),
        "decoder": StableCascadeUNet.load_config(root / "decoder"),
        "vqgan": PaellaVQModel.load_config(root / "vqgan"),
    }
    job = make_request()
    full, tiny = working_bytes(job, 4), working_bytes(job, 4, configs)
    assert all(0 < tiny[stage] < full[stage] for stage in full)
    model = StableCascadeUNet.from_config(configs["decoder"])
    assert working_bytes(job, 4, {"decoder": model.config})["decoder"] == tiny["decoder"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matches_the_stock_diffusers_pipelines(dtype: str, request: pytest.FixtureRequest) -> None:
    """Same components, same noise: same pixels. Image i of ours is the stock pipelines' one image
    at seed + i (prior seeded with it, decoder with it + 1)."""
    from diffusers import DDPMWuerstchenScheduler, StableCascadeDecoderPipeline, StableCascadePriorPipeline

    backend: CascadeBackend = request.getfixturevalue("backend" if dtype == "float32" else "bf16_backend")

    job = make_request(negative_prompt="blurry", num_images=2, width=384, decoder_guidance=2.0, seed=11)
    ours = backend.run("text_to_image", job, no_progress)
    manager = backend.manager
    tokenizer, scheduler, _ = backend._aux()
    scheduler = DDPMWuerstchenScheduler.from_config(scheduler.config)
    with manager.use(TEXT_ENCODER) as text_encoder, manager.use(PRIOR) as prior, \
            manager.use(DECODER) as decoder, manager.use(VQGAN) as vqgan:
        prior_pipe = StableCascadePriorPipeline(tokenizer=tokenizer, text_encoder=text_encoder, prior=prior,
                                                scheduler=scheduler)
        decoder_pipe = StableCascadeDecoderPipeline(
            decoder=decoder, tokenizer=tokenizer, text_encoder=text_encoder, scheduler=scheduler, vqgan=vqgan
        )
        for pipe in (prior_pipe, decoder_pipe):
            pipe.set_progress_bar_config(disable=True)
        embeddings, images = [], []
        for seed in (job.seed, job.seed + 1):
            embeddings.append(prior_pipe(
                prompt=job.prompt, negative_prompt=job.negative_prompt, height=job.height,
                width=job.width, num_inference_steps=job.prior_steps,
                guidance_scale=job.prior_guidance, num_images_per_prompt=1,
                generator=torch.Generator("cpu").manual_seed(seed),
            ).image_embeddings)
            images += decoder_pipe(
                image_embeddings=embeddings[-1], prompt=job.prompt, negative_prompt=job.negative_prompt,
                num_inference_steps=job.decoder_steps, guidance_scale=job.decoder_guidance,
                generator=torch.Generator("cpu").manual_seed(seed + 1), output_type="pil",
            ).images
    assert ours.info["seeds"] == [11, 12] and ours.info["decoder_seeds"] == [12, 13]
    assert torch.equal(ours.stage_c_latents, torch.cat(embeddings))
    assert np.array_equal(pixels(ours), stack(images))


def test_bfloat16_runs(bf16_backend: CascadeBackend) -> None:
    result = bf16_backend.run("text_to_image", make_request(), no_progress)
    assert result.images[0].size == (256, 256)
    assert result.stage_c_latents.dtype == torch.bfloat16
    assert result.info["dtype"] == "bfloat16"
