"""Stable Video Diffusion backend on tiny models: frames, seeds, progress, memory, decode retries."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from backends.families import FAMILIES, load_context, load_preset
from backends.runtime.errors import Cancelled, ModelUnavailable, OutOfMemory, UnknownNameError
from backends.runtime.loading import LoadContext, Source
from backends.runtime.memory import RESERVE_FRACTION, MemoryManager
from backends.runtime.offload import module_bytes
from backends.runtime.outputs import OutputWriter
from backends.runtime.probe import GB, FakeProbe
from backends.runtime.progress import no_progress
from backends.runtime.registry import Registry
from backends.svd.backend import DECODE, DECODE_SITE, DENOISE, IMAGE_ENCODER, UNET, VAE, SvdBackend, VideoResult
from backends.svd.memory import unet_working_bytes
from backends.svd.requests import VideoRequest
from backends.svd.spec import SvdSettings

STEPS, FRAMES = 3, 6


@pytest.fixture(scope="module")
def settings() -> SvdSettings:
    return load_preset("tiny").settings.svd


@pytest.fixture(scope="module")
def ctx(tiny_cache: Path) -> LoadContext:
    return load_context(cache_dir=tiny_cache, offline=True)


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((90, 160, 3)) * 255).astype(np.uint8))


def make_request(settings: SvdSettings, picture: Image.Image, **changes: Any) -> VideoRequest:
    d = settings.defaults
    request = VideoRequest.build(picture, FRAMES, 6, 127, 0.02, STEPS, 0, 7, width=d.width, height=d.height)
    return replace(request, **changes)


def frames_of(result: VideoResult) -> np.ndarray:
    return np.stack([np.asarray(frame) for frame in result.frames])


def new_backend(settings: SvdSettings, ctx: LoadContext, total: int = 16 * GB, free: int | None = None,
                budget: int | None = None) -> SvdBackend:
    manager = MemoryManager(FakeProbe(device_total=total, device_free=free), device="cpu", budget_bytes=budget)
    return SvdBackend(settings, manager, ctx)


@pytest.fixture(scope="module")
def registry(ctx: LoadContext) -> Registry:
    return Registry(load_preset("tiny").settings, MemoryManager(FakeProbe(device_total=16 * GB)), ctx, FAMILIES)


@pytest.fixture(scope="module")
def backend(registry: Registry) -> SvdBackend:
    backend = registry.backend("svd")
    assert isinstance(backend, SvdBackend)
    return backend


@pytest.fixture(scope="module")
def baseline(registry: Registry, settings: SvdSettings, picture: Image.Image) -> VideoResult:
    return registry.run("image_to_video", make_request(settings, picture), no_progress)


def test_init_registers_components_and_loads_nothing(settings: SvdSettings, ctx: LoadContext) -> None:
    backend = new_backend(settings, ctx)
    assert backend.component_names() == [IMAGE_ENCODER, VAE, UNET]
    assert {s.name: s.placement for s in backend.manager.statuses()} == {n: "disk" for n in backend.component_names()}
    with pytest.raises(UnknownNameError, match="known tasks: image_to_video"):
        backend.run("text_to_image", None, no_progress)  # type: ignore[arg-type]


def test_frames_count_size_and_info(registry: Registry, baseline: VideoResult, tmp_path: Path) -> None:
    assert len(baseline.frames) == FRAMES and baseline.fps == 6
    placed = {s.name: s.placement for s in registry.manager.statuses()}
    assert placed == {IMAGE_ENCODER: "gpu", VAE: "gpu", UNET: "gpu"}  # three components, placed separately
    assert all(frame.size == (128, 64) and frame.mode == "RGB" for frame in baseline.frames)
    info = baseline.info
    assert (info["seed"], info["num_frames"], info["steps"], info["decode_chunk_size"]) == (7, FRAMES, STEPS, FRAMES)
    assert info["forward_chunking"] is False and info["unet"] == "tiny:svd/unet"
    assert set(info["timings"]) == {"image_encoder", "vae_encode", "unet", "vae_decode", "total"}
    stack = frames_of(baseline)
    assert not np.array_equal(stack[0], stack[-1])  # the frames move
    saved = OutputWriter(tmp_path).save_video(baseline.frames, baseline.fps, baseline.info)
    reader = imageio_ffmpeg.read_frames(str(saved["video"]))
    meta = next(reader)
    assert (meta["codec"], meta["fps"], meta["size"]) == ("h264", 6, (128, 64))
    assert sum(1 for _ in reader) == FRAMES


def test_requested_frames_and_fps(registry: Registry, settings: SvdSettings, picture: Image.Image) -> None:
    result = registry.run("image_to_video", make_request(settings, picture, num_frames=4, fps=12), no_progress)
    assert len(result.frames) == 4 and result.fps == 12 and result.info["fps"] == 12


def test_same_seed_same_frames_other_seed_different(registry: Registry, settings: SvdSettings,
                                                     picture: Image.Image, baseline: VideoResult) -> None:
    again = registry.run("image_to_video", make_request(settings, picture), no_progress)
    other = registry.run("image_to_video", make_request(settings, picture, seed=8), no_progress)
    assert np.array_equal(frames_of(again), frames_of(baseline))
    assert not np.array_equal(frames_of(other), frames_of(baseline))


def test_matches_the_stock_pipeline(settings: SvdSettings, ctx: LoadContext, picture: Image.Image,
                                    baseline: VideoResult) -> None:
    """Our loop against diffusers' StableVideoDiffusionPipeline: same seed, same pixels."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from backends.runtime.loading import load_pretrained

    def load(cls: type, source: Source) -> Any:
        # Frozen like the backend's own modules: on the CPU, weights that require grad make some
        # kernels take another path even under no_grad (13 of 147,456 values then differ by 1).
        loaded = load_pretrained(cls, source, ctx)
        return loaded.requires_grad_(False) if isinstance(loaded, torch.nn.Module) else loaded

    pipe = StableVideoDiffusionPipeline(
        vae=load(AutoencoderKLTemporalDecoder, settings.vae),
        unet=load(UNetSpatioTemporalConditionModel, settings.unet),
        image_encoder=load(CLIPVisionModelWithProjection, settings.image_encoder),
        feature_extractor=load(CLIPImageProcessor, settings.feature_extractor),
        scheduler=load(EulerDiscreteScheduler, settings.scheduler))
    pipe.set_progress_bar_config(disable=True)
    request = make_request(settings, picture)
    for chunk, ours in ((FRAMES, baseline), (4, None)):
        if ours is None:
            ours = new_backend(settings, ctx).run("image_to_video", replace(request, decode_chunk_size=chunk),
                                                  no_progress)
        stock = pipe(request.image, height=request.height, width=request.width, num_frames=FRAMES,
                     num_inference_steps=STEPS, fps=request.fps, motion_bucket_id=request.motion_bucket_id,
                     noise_aug_strength=request.noise_aug_strength, decode_chunk_size=chunk,
                     min_guidance_scale=settings.defaults.min_guidance,
                     max_guidance_scale=settings.defaults.max_guidance,
                     generator=torch.Generator("cpu").manual_seed(request.seed), output_type="pil").frames[0]
        assert np.array_equal(frames_of(ours), np.stack([np.asarray(frame) for frame in stock]))


def test_progress_reports_each_step_and_decode_chunk(backend: SvdBackend, settings: SvdSettings,
                                                     picture: Image.Image) -> None:
    reports: list[tuple[str, int, int]] = []
    backend.run("image_to_video", make_request(settings, picture, decode_chunk_size=4),
                lambda stage, step, total: reports.append((stage, step, total)))
    assert reports == [(DENOISE, s, STEPS) for s in (1, 2, 3)] + [(DECODE, 4, FRAMES), (DECODE, 6, FRAMES)]


def test_cancel_from_progress_propagates(backend: SvdBackend, settings: SvdSettings, picture: Image.Image) -> None:
    def stop_at_step_two(stage: str, step: int, total: int) -> None:
        if step == 2:
            raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        backend.run("image_to_video", make_request(settings, picture), stop_at_step_two)


def test_decode_oom_retries_with_half_the_chunk(settings: SvdSettings, ctx: LoadContext, picture: Image.Image) -> None:
    backend = new_backend(settings, ctx)
    reference = backend.run("image_to_video", make_request(settings, picture, decode_chunk_size=3), no_progress)
    backend.manager.faults.arm(DECODE_SITE, times=1)
    retried = backend.manager.run(lambda: backend.run("image_to_video", make_request(settings, picture),
                                                      no_progress))
    assert retried.info["decode_chunk_size"] == 3 and retried.info["decode_chunk_requested"] == 0
    assert any("retried with 3" in notice for notice in retried.info["notices"])
    assert np.array_equal(frames_of(retried), frames_of(reference))  # chunks 0-2 and 3-5, as asked directly


def test_decode_oom_that_persists_gives_a_clear_error(settings: SvdSettings, ctx: LoadContext,
                                                      picture: Image.Image) -> None:
    backend = new_backend(settings, ctx)
    request = make_request(settings, picture, decode_chunk_size=2)
    # Chunks of 2 then 1 fail; the manager retries the job once in offload mode, where both fail again.
    backend.manager.faults.arm(DECODE_SITE, times=4)
    with pytest.raises(OutOfMemory, match="Out of device memory running the video .*tried auto then offload"):
        backend.manager.run(lambda: backend.run("image_to_video", request, no_progress), what="the video")
    assert {s.placement for s in backend.manager.statuses()} <= {"cpu", "disk"}
    assert len(backend.manager.run(lambda: backend.run("image_to_video", request, no_progress)).frames) == FRAMES


def test_forward_chunking_when_memory_is_short(settings: SvdSettings, ctx: LoadContext, picture: Image.Image,
                                               baseline: VideoResult) -> None:
    """A budget that holds the UNet with its chunked working memory but not the unchunked one."""
    from diffusers import UNetSpatioTemporalConditionModel

    from backends.runtime.loading import load_pretrained

    request = make_request(settings, picture)
    unet = load_pretrained(UNetSpatioTemporalConditionModel, settings.unet, ctx)
    chunked, full = (unet_working_bytes(request, unet.config, 4, True, flag) for flag in (True, False))
    assert chunked < full
    budget = int((module_bytes(unet) + (chunked + full) / 2) / (1 - RESERVE_FRACTION))
    backend = new_backend(settings, ctx, budget=budget)
    result = backend.run("image_to_video", request, no_progress)
    assert result.info["forward_chunking"] is True
    assert result.info["decode_chunk_size"] < FRAMES  # the auto chunk followed the small budget too
    assert len(result.frames) == FRAMES


def test_gated_repo_message_names_the_page_and_hf_token(settings: SvdSettings, ctx: LoadContext) -> None:
    from httpx2 import Request, Response
    from huggingface_hub.errors import GatedRepoError

    repo = "stabilityai/stable-video-diffusion-img2vid-xt"

    class Refused:
        """Stands in for a hub class whose download gets a 403 (diffusers wraps it in OSError)."""

        @classmethod
        def from_pretrained(cls, *args: Any, **kwargs: Any) -> None:
            response = Response(403, request=Request("GET", f"https://huggingface.co/{repo}/resolve/main/x"))
            try:
                raise GatedRepoError("403 Client Error: access to this repo is restricted", response=response)
            except GatedRepoError as error:
                raise OSError(f"{repo} is not a valid model identifier") from error

    backend = new_backend(settings, replace(ctx, offline=False))
    with pytest.raises(ModelUnavailable) as caught:
        backend._load(Refused, Source(repo, "unet", "fp16"))
    message = str(caught.value)
    assert f"https://huggingface.co/{repo}" in message and "HF_TOKEN" in message and "accept" in message


def test_float16_encodes_the_picture_in_float32_like_the_pipeline(settings: SvdSettings, ctx: LoadContext,
                                                                  picture: Image.Image) -> None:
    """float16 VAEs with ``force_upcast`` encode in float32; ours copies the encoder's weights instead of
    casting the managed module, and must still give the pipeline's frames."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from backends.runtime.loading import load_pretrained

    half = replace(settings, dtype="float16")
    request = make_request(half, picture, num_frames=2, steps=2)

    def load(cls: type, source: Source) -> Any:
        return load_pretrained(cls, source, ctx, dtype=torch.float16).requires_grad_(False)

    pipe = StableVideoDiffusionPipeline(
        vae=load(AutoencoderKLTemporalDecoder, half.vae), unet=load(UNetSpatioTemporalConditionModel, half.unet),
        image_encoder=load(CLIPVisionModelWithProjection, half.image_encoder),
        feature_extractor=load_pretrained(CLIPImageProcessor, half.feature_extractor, ctx),
        scheduler=load_pretrained(EulerDiscreteScheduler, half.scheduler, ctx))
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(request.image, height=request.height, width=request.width, num_frames=2, num_inference_steps=2,
                 fps=request.fps, generator=torch.Generator("cpu").manual_seed(request.seed)).frames[0]
    ours = new_backend(half, ctx).run("image_to_video", request, no_progress)
    assert ours.info["dtype"] == "float16"
    assert np.array_equal(frames_of(ours), np.stack([np.asarray(frame) for frame in stock]))


def test_tiny_build_is_deterministic(ctx: LoadContext, tmp_path: Path) -> None:
    from backends.runtime.loading import resolve_repo
    from backends.svd import tiny as tiny_svd

    cached = Path(resolve_repo(Source("tiny:svd"), ctx))
    tiny_svd.build(tmp_path)
    files = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file())
    assert {str(name.parent) for name in files} == {"unet", "vae", "image_encoder", "feature_extractor", "scheduler"}
    for name in files:
        assert (tmp_path / name).read_bytes() == (cached / name).read_bytes(), name


def test_a_budget_below_one_frame_s_decode_names_the_chunk_floor(settings: SvdSettings, ctx: LoadContext,
                                                                  picture: Image.Image) -> None:
    """One frame is the smallest decode chunk (the temporal VAE cannot be tiled): the refusal says so.

    A one-frame video under a budget that holds the UNet streamed block by block and the VAE's
    encode, but not one frame's decode. In offload mode, where each component leaves the device
    after its stage, so the decode places the VAE afresh (in auto mode the VAE may still be on
    the device from the encode; a real out-of-memory error then brings the job to offload mode).
    """
    from diffusers import AutoencoderKLTemporalDecoder

    from backends.runtime.loading import load_pretrained
    from backends.runtime.offload import TensorHome
    from backends.runtime.probe import format_bytes
    from backends.svd.memory import decode_frame_bytes, encode_working_bytes

    request = make_request(settings, picture, num_frames=1)
    vae = load_pretrained(AutoencoderKLTemporalDecoder, settings.vae, ctx)
    block = TensorHome(vae, pin=False).largest_block_bytes()
    frame = decode_frame_bytes(request, vae.config, 4)
    encode = encode_working_bytes(request, vae, upcast=False)
    assert module_bytes(vae) + encode < block + frame
    budget = int((module_bytes(vae) + encode + block + frame) / 2 / (1 - RESERVE_FRACTION))
    backend = new_backend(settings, ctx, budget=budget)
    with pytest.raises(OutOfMemory) as refused:
        backend.manager.run(lambda: backend.run("image_to_video", request, no_progress), mode="offload")
    message = str(refused.value)
    assert f"needs {format_bytes(frame)} of working memory for one 128x64 frame" in message
    assert "decode chunk 1" in message and "cannot split a frame" in message
    assert "svd.vae needs" in message and "--vram-budget" in message  # the manager's figures follow
