"""Stable Video Diffusion (SVD and SVD-XT) image-to-video, with our own sampling loop.

Why not ``StableVideoDiffusionPipeline``: a pipeline wants all its components on the device at
once and decodes with a fixed chunk size. Here each component is borrowed from the memory manager
only while its stage runs (CLIP image encoder, VAE encoder, UNet, VAE decoder), the decode chunk
follows the live free memory and halves after an out-of-memory error, and every step is reported.

The math follows ``StableVideoDiffusionPipeline`` of diffusers 0.42.1 step for step: CLIP
embedding of the 224 px image, VAE latents (mode) of the noise-augmented image, added time ids
(fps - 1, motion bucket, noise strength), guidance rising linearly over the frames, Euler steps,
chunked temporal decoding. With the same seed and decode chunk it gives the same frames (a test
compares both on the tiny model).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from PIL import Image

from backends.runtime.errors import ModelUnavailable, OutOfMemory, StudioError, UnknownNameError
from backends.runtime.loading import (
    LoadContext,
    Source,
    describe_source,
    element_size,
    load_pretrained,
    torch_dtype,
    weights_dtype,
)
from backends.runtime.offload import module_bytes
from backends.runtime.progress import ProgressFn
from backends.svd.memory import (
    clip_working_bytes,
    decode_floor_message,
    decode_frame_bytes,
    encode_working_bytes,
    unet_working_bytes,
)
from backends.svd.ops import clip_resize, float32_call, image_tensor, set_forward_chunking, to_pil_frames
from backends.svd.requests import VideoRequest
from backends.svd.spec import SvdSettings

if TYPE_CHECKING:
    from backends.runtime.memory import MemoryManager

logger = logging.getLogger(__name__)

IMAGE_ENCODER = "svd.image_encoder"
VAE = "svd.vae"
UNET = "svd.unet"
DENOISE = "Video denoising"
DECODE = "Video decoding"
#: Fault-injection site fired before each decode chunk (tests arm an OOM there).
DECODE_SITE = "svd.decode"
#: The UNet downsamples the latents three times and the VAE eight-fold: sizes must divide by 64.
SIZE_MULTIPLE = 64

_COMPONENTS = ("image_encoder", "vae", "unet")


@dataclass
class VideoResult:
    """What one image-to-video run gives back."""

    #: The decoded frames, ``num_frames`` of them, at the request's fitted size.
    frames: list[Image.Image]
    #: Frames per second for the video file (the request's fps; also a model input).
    fps: int
    #: JSON-able metadata: parameters, seed, chunk sizes used, sources, timings, notices.
    info: dict[str, Any]


def access_denied(error: BaseException) -> bool:
    """Whether a loading error comes from a 401/403 of the hub (a gated repo without access).

    diffusers and transformers re-raise hub errors as ``OSError`` (sometimes without ``from``),
    so the whole cause/context chain is searched.
    """
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, GatedRepoError):
            return True
        if isinstance(current, HfHubHTTPError):
            status = getattr(getattr(current, "response", None), "status_code", None)
            if status in (401, 403):
                return True
        current = current.__cause__ or current.__context__
    return False


def gated_message(repo: str) -> str:
    """What to do when the hub refuses a gated SVD repo."""
    page = f"https://huggingface.co/{repo}"
    return (f"{repo} is gated: the hub refused access (401/403). Open {page} while logged in and accept "
            "the Stable Video Diffusion license, create a read token at https://huggingface.co/settings/tokens, "
            "then start the app with it in HF_TOKEN (Linux/macOS: HF_TOKEN=hf_... ./launch.sh; Windows: "
            "set HF_TOKEN=hf_... before launch.bat) or run `hf auth login` once.")


class SvdBackend:
    """Stable Video Diffusion on top of the memory manager; one instance serves every request."""

    name = "svd"
    tasks = ("image_to_video",)

    def __init__(self, settings: SvdSettings, manager: MemoryManager, ctx: LoadContext) -> None:
        """Register the three model components with ``manager``; nothing is loaded yet.

        Raises:
            StudioError: the preset's model size is not a multiple of 64.
        """
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
        from transformers import CLIPVisionModelWithProjection

        for key in ("width", "height"):
            value = getattr(settings.defaults, key)
            if value % SIZE_MULTIPLE:
                raise StudioError(f"preset key svd.defaults.{key} must be a multiple of {SIZE_MULTIPLE}, got {value}")
        self.settings = settings
        self.manager = manager
        self.ctx = ctx
        self.dtype = torch_dtype(settings.dtype)
        self._aux_lock = threading.Lock()
        self._feature_extractor: Any = None
        self._scheduler: Any = None
        for name, cls, source in ((IMAGE_ENCODER, CLIPVisionModelWithProjection, settings.image_encoder),
                                  (VAE, AutoencoderKLTemporalDecoder, settings.vae),
                                  (UNET, UNetSpatioTemporalConditionModel, settings.unet)):
            manager.register(name, self._loader(cls, source))

    def component_names(self) -> list[str]:
        """The manager names of this backend's modules, in the order a run first uses them."""
        return [IMAGE_ENCODER, VAE, UNET]

    def _load(self, cls: type, source: Source, **kwargs: Any) -> Any:
        """``load_pretrained`` with a gated-repo message that says how to get access."""
        try:
            return load_pretrained(cls, source, self.ctx, **kwargs)
        except ModelUnavailable as error:
            if access_denied(error):
                raise ModelUnavailable(gated_message(source.repo)) from error
            raise

    def _loader(self, cls: type, source: Source) -> Callable[[], torch.nn.Module]:
        def load() -> torch.nn.Module:
            return self._load(cls, source, dtype=self.dtype).eval().requires_grad_(False)

        return load

    def _aux(self) -> tuple[Any, Any]:
        """CLIP preprocessing config and the scheduler; small, loaded once (runs use copies)."""
        with self._aux_lock:
            if self._scheduler is None:
                from diffusers import EulerDiscreteScheduler
                from transformers import CLIPImageProcessor

                self._feature_extractor = self._load(CLIPImageProcessor, self.settings.feature_extractor)
                self._scheduler = self._load(EulerDiscreteScheduler, self.settings.scheduler)
            return self._feature_extractor, self._scheduler

    # ----- the run -------------------------------------------------------------------------
    def run(self, task: str, request: VideoRequest, progress: ProgressFn) -> VideoResult:
        """Make ``request.num_frames`` frames from the request's picture.

        Raises:
            UnknownNameError: ``task`` is not ``image_to_video``.
            Cancelled: raised by ``progress`` when the user pressed Stop.
            torch.OutOfMemoryError: decoding failed even one frame at a time; the manager then
                retries the job one memory mode lower.
            OutOfMemory: the budget cannot hold one frame's decode, the smallest decode chunk.
        """
        if task not in self.tasks:
            raise UnknownNameError(f"Unknown task {task!r} for {self.name}; known tasks: {', '.join(self.tasks)}")
        started = time.perf_counter()
        timings: dict[str, float] = {}
        feature_extractor, scheduler_config = self._aux()
        # One CPU generator for the whole run, drawn in the pipeline's order (augmentation noise,
        # then the initial latents), so every device gives the same numbers.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        embedding = self._encode_clip(request, feature_extractor, timings)
        image_latents = self._encode_vae(request, generator, timings)
        latents, chunked = self._denoise(request, embedding, image_latents, generator, scheduler_config,
                                         progress, timings)
        frames, chunk, notices = self._decode(request, latents, progress, timings)
        timings["total"] = time.perf_counter() - started
        s, d = self.settings, self.settings.defaults
        info: dict[str, Any] = {
            "backend": self.name,
            "task": "image_to_video",
            **request.as_dict(),
            "decode_chunk_size": chunk,
            "decode_chunk_requested": request.decode_chunk_size,
            "forward_chunking": chunked,
            "min_guidance": d.min_guidance,
            "max_guidance": d.max_guidance,
            "dtype": s.dtype,
            "device": str(self.manager.device),
            **{key: describe_source(getattr(s, key)) for key in _COMPONENTS},
            "timings": {stage: round(seconds, 3) for stage, seconds in timings.items()},
            "notices": list(request.notices) + notices,
        }
        logger.info("svd %dx%d, %d frames, %d steps, seed %d in %.2f s (%s)", request.width, request.height,
                    request.num_frames, request.steps, request.seed, timings["total"], info["timings"])
        return VideoResult(frames=frames, fps=request.fps, info=info)

    def _guided(self) -> bool:
        return self.settings.defaults.max_guidance > 1

    def _encode_clip(self, request: VideoRequest, feature_extractor: Any, timings: dict[str, float]) -> torch.Tensor:
        """CLIP image embedding (1, 1, D); with guidance, zeros first for the unconditional half."""
        started = time.perf_counter()
        pixels = image_tensor(request.image)
        # The pipeline resizes in [-1, 1] "to match the original implementation", then maps back.
        small = (clip_resize(pixels * 2.0 - 1.0) + 1.0) / 2.0
        clip_input = feature_extractor(images=small, do_normalize=True, do_center_crop=False, do_resize=False,
                                       do_rescale=False, return_tensors="pt").pixel_values

        def need(module: torch.nn.Module) -> int:
            return clip_working_bytes(module.config, element_size(module))

        with self.manager.use(IMAGE_ENCODER, need) as encoder, torch.inference_mode():
            embedding = encoder(clip_input.to(self.manager.device, encoder.dtype)).image_embeds.unsqueeze(1)
        if self._guided():
            embedding = torch.cat([torch.zeros_like(embedding), embedding])
        timings["image_encoder"] = time.perf_counter() - started
        return embedding

    def _encode_vae(self, request: VideoRequest, generator: torch.Generator,
                    timings: dict[str, float]) -> torch.Tensor:
        """VAE latents (mode) of the noise-augmented picture, (batch, 4, h, w), in the model dtype."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        started = time.perf_counter()
        device = self.manager.device
        pixels = 2.0 * image_tensor(request.image) - 1.0
        noise = torch.randn(pixels.shape, generator=generator, dtype=pixels.dtype)
        pixels = (pixels + request.noise_aug_strength * noise).to(device)

        def need(module: torch.nn.Module) -> int:
            return encode_working_bytes(request, module, self._upcast(module))

        with self.manager.use(VAE, need) as vae, torch.inference_mode():
            if self._upcast(vae):
                # The pipeline casts the whole VAE to float32 for this encode (float16 overflows
                # here). Our modules keep their dtype (their CPU copies are shared), so the encoder
                # runs on float32 copies of its weights instead: same math, 4 bytes per weight
                # for the moment.
                moments = float32_call(vae.quant_conv, float32_call(vae.encoder, pixels, device), device)
                latents = DiagonalGaussianDistribution(moments).mode()
            else:
                latents = vae.encode(pixels.to(weights_dtype(vae))).latent_dist.mode()
        latents = latents.to(self.dtype)
        if self._guided():
            latents = torch.cat([torch.zeros_like(latents), latents])
        timings["vae_encode"] = time.perf_counter() - started
        return latents

    @staticmethod
    def _upcast(vae: torch.nn.Module) -> bool:
        return weights_dtype(vae) == torch.float16 and bool(vae.config.force_upcast)

    def _denoise(self, request: VideoRequest, embedding: torch.Tensor, image_latents: torch.Tensor,
                 generator: torch.Generator, scheduler_config: Any, progress: ProgressFn,
                 timings: dict[str, float]) -> tuple[torch.Tensor, bool]:
        """The Euler loop; returns the latents (1, frames, 4, h, w) and whether FF chunking was on."""
        from diffusers import EulerDiscreteScheduler

        started = time.perf_counter()
        device, frames, guided = self.manager.device, request.num_frames, self._guided()
        d = self.settings.defaults

        def estimate(module: torch.nn.Module, chunked: bool) -> int:
            return unet_working_bytes(request, module.config, element_size(module), guided, chunked)

        def need(module: torch.nn.Module) -> int:
            # Ask for room for the unchunked run when the budget can hold it; otherwise for the
            # chunked one, which is all the UNet strictly needs.
            full = estimate(module, chunked=False)
            room = self.manager.room_beside(module_bytes(module))
            return full if full <= room else estimate(module, chunked=True)

        with self.manager.use(UNET, need) as unet:
            # Forward chunking only when short of memory: on when the live free memory after
            # placing the UNet, less the manager's reserve, is below the unchunked working
            # estimate. It divides the feed-forward peak by the batch (2 x frames; about 15 % of
            # the step's memory) but made a CPU step 3x slower (svd_memory).
            chunked = self.manager.usable_free() < estimate(unet, chunked=False)
            set_forward_chunking(unet, chunked)
            with torch.inference_mode():
                dtype = weights_dtype(unet)
                scheduler = EulerDiscreteScheduler.from_config(scheduler_config.config)
                scheduler.set_timesteps(request.steps, device=device)
                height, width = image_latents.shape[-2:]
                shape = (1, frames, unet.config.in_channels // 2, height, width)
                latents = torch.randn(shape, generator=generator, dtype=dtype).to(device)
                latents = latents * scheduler.init_noise_sigma
                conditioning = image_latents.to(device, dtype).unsqueeze(1).repeat(1, frames, 1, 1, 1)
                embedding = embedding.to(device, dtype)
                # SVD was trained on fps - 1 (the pipeline's note on the original sampling script).
                time_ids = torch.tensor([[request.fps - 1, request.motion_bucket_id, request.noise_aug_strength]],
                                        dtype=dtype)
                time_ids = torch.cat([time_ids, time_ids]) if guided else time_ids
                expected = unet.add_embedding.linear_1.in_features
                if unet.config.addition_time_embed_dim * 3 != expected:
                    raise StudioError(f"{describe_source(self.settings.unet)}: the UNet expects {expected} "
                                      "added-time-id features, not 3 x addition_time_embed_dim; check its config")
                time_ids = time_ids.to(device)
                # Guidance rises linearly from the first frame to the last, one scale per frame.
                scale = torch.linspace(d.min_guidance, d.max_guidance, frames).unsqueeze(0)
                scale = scale.to(device, latents.dtype).reshape(1, frames, 1, 1, 1)
                for index, t in enumerate(scheduler.timesteps):
                    model_input = torch.cat([latents] * 2) if guided else latents
                    model_input = scheduler.scale_model_input(model_input, t)
                    model_input = torch.cat([model_input, conditioning], dim=2)
                    prediction = unet(model_input, t, encoder_hidden_states=embedding, added_time_ids=time_ids,
                                      return_dict=False)[0]
                    if guided:
                        unconditional, conditional = prediction.chunk(2)
                        prediction = unconditional + scale * (conditional - unconditional)
                    latents = scheduler.step(prediction, t, latents).prev_sample
                    progress(DENOISE, index + 1, request.steps)
        timings["unet"] = time.perf_counter() - started
        return latents, chunked

    def _decode(self, request: VideoRequest, latents: torch.Tensor, progress: ProgressFn,
                timings: dict[str, float]) -> tuple[list[Image.Image], int, list[str]]:
        """Decode the latents in chunks of frames; an OOM halves the chunk and retries it.

        Returns:
            The frames, the chunk size that finished the video and notices about retries.
        """
        from backends.runtime.probe import format_bytes

        started = time.perf_counter()
        total = request.num_frames
        cap = min(total, self.settings.auto_decode_chunk_max or total)

        def per_frame(module: torch.nn.Module) -> int:
            return decode_frame_bytes(request, module.config, element_size(module))

        asked: list[int] = []  # the chunk ``need`` asked room for

        def need(module: torch.nn.Module) -> int:
            # Room for the chunk asked for (or, on auto, the largest the budget allows), but never
            # more than the budget holds: an explicit chunk beyond our estimate is still tried,
            # and a real out-of-memory error halves it.
            fits = max(1, self.manager.room_beside(module_bytes(module)) // per_frame(module))
            asked.append(int(min(request.decode_chunk_size or cap, fits)))
            return per_frame(module) * asked[-1]

        frames: list[Image.Image] = []
        notices: list[str] = []
        with contextlib.ExitStack() as stack:
            try:
                vae = stack.enter_context(self.manager.use(VAE, need))
            except OutOfMemory as error:
                if asked != [1]:
                    raise
                module = self.manager.component(VAE).home
                assert module is not None  # loaded before it was placed
                raise OutOfMemory(decode_floor_message(request, per_frame(module.module), str(error))) from error
            if request.decode_chunk_size:
                chunk = request.decode_chunk_size
            else:
                usable = self.manager.usable_free()
                chunk = int(max(1, min(cap, usable // per_frame(vae))))
                logger.info("decode chunk %d (auto: %s usable, %s per frame, at most %d)", chunk,
                            format_bytes(max(usable, 0)), format_bytes(per_frame(vae)), cap)
            with torch.inference_mode():
                scaled = (1 / vae.config.scaling_factor * latents.flatten(0, 1)).to(self.manager.device,
                                                                                    weights_dtype(vae))
                done = 0
                while done < total:
                    size = min(chunk, total - done)
                    decoded = self._decode_chunk(vae, scaled[done:done + size], size, chunk, notices)
                    if decoded is None:
                        chunk = max(1, chunk // 2)
                        continue
                    frames.extend(to_pil_frames(decoded))
                    done += size
                    progress(DECODE, done, total)
        timings["vae_decode"] = time.perf_counter() - started
        return frames, chunk, notices


    def _decode_chunk(self, vae: torch.nn.Module, latents: torch.Tensor, size: int, chunk: int,
                      notices: list[str]) -> torch.Tensor | None:
        """One chunk; None after an OOM that a smaller chunk may avoid (the caller halves it)."""
        try:
            self.manager.checkpoint(DECODE_SITE)
            return vae.decode(latents, num_frames=size).sample
        except torch.OutOfMemoryError as error:
            if chunk <= 1:
                logger.warning("decoding ran out of memory even one frame at a time: %s", error)
                raise
            message = f"decoding {chunk} frames at once ran out of memory; retried with {max(1, chunk // 2)}"
            logger.warning("%s (%s)", message, error)
            notices.append(message)
        # Outside the except block, so the failed attempt's tensors are already unreferenced.
        if self.manager.device.type == "cuda":
            torch.cuda.empty_cache()
        return None
