"""SV3D_u / SV3D_p: orbit videos of an object from one picture, with our own sampler.

There is no SV3D in diffusers, so this file tells the whole story on diffusers building blocks
(``Sv3dUNet``, ``AutoencoderKL``, transformers' CLIP vision tower), following the sgm reference as
recorded in ``shared/data/sv3d_*_unet_keys.json``:

- conditioning: the clean view's OpenCLIP image embedding (cross-attention, repeated per frame);
  the VAE *mode* latent of the view plus ``cond_aug`` noise, unscaled (concat, repeated per frame);
  a vector per frame: u = emb256(cond_aug); p = emb256(cond_aug) | emb512(polar) | emb512(azimuth);
- unconditional branch: image embedding and concat latent zeroed, the vector kept;
- sampler: EDM sigmas (0.002 .. 700, rho 7) plus a final 0, ``x = randn * sqrt(1 + sigma_max^2)``,
  Euler steps on the v-prediction denoiser (c_skip, c_out, c_in, c_noise = 0.25 ln sigma), triangle
  guidance per frame (1.0 -> 2.5 -> 1.0 over 21 frames);
- decoding: ``latents / 0.18215`` through the first-stage decoder (no post-quant conv), in chunks
  sized from the live free memory, halved after an out-of-memory error; the last frame is then
  replaced by the input view, as the reference does.

Each component is borrowed from the memory manager only for its stage, as in ``backends.svd.backend``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from PIL import Image

from backends.runtime.errors import StudioError, UnknownNameError
from backends.runtime.loading import LoadContext, Source, element_size, load_pretrained, resolve_file, weights_dtype
from backends.runtime.offload import module_bytes
from backends.runtime.progress import ProgressFn
from backends.sv3d.requests import OrbitRequest
from backends.sv3d.spec import CHECKPOINT_FILES, Sv3dSettings
from backends.svd.memory import clip_working_bytes, unet_working_bytes
from backends.svd.ops import clip_resize, image_tensor, to_pil_frames

if TYPE_CHECKING:
    from backends.runtime.memory import MemoryManager

logger = logging.getLogger(__name__)

DENOISE = "Orbit denoising"
DECODE = "Orbit decoding"
#: Fault-injection site fired before each decode chunk (tests arm an OOM there).
DECODE_SITE = "sv3d.decode"
#: EDM discretisation of the reference sampler config.
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 700.0, 7.0
#: OpenAI CLIP normalisation, which OpenCLIP ViT-H/14 uses too (the manifests' ``preprocess``).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Live full-resolution tensors per decoded frame (as ``svd_memory.DECODE_LIVE_TENSORS``).
DECODE_LIVE_TENSORS = 8
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class OrbitResult:
    """What one orbit run gives back."""

    frames: list[Image.Image]
    fps: int
    info: dict[str, Any]


@dataclass(frozen=True)
class _Shape:
    """The request size in the form ``svd_memory``'s estimates read."""

    width: int
    height: int
    num_frames: int


def edm_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
               rho: float = RHO) -> torch.Tensor:
    """sgm ``EDMDiscretization``: ``steps`` sigmas from sigma_max down to sigma_min, then 0 (float64)."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    high, low = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return torch.cat([(high + ramp * (low - high)) ** rho, torch.zeros(1, dtype=torch.float64)])


def triangle_scales(frames: int, min_scale: float, max_scale: float, period: float = 1.0) -> torch.Tensor:
    """sgm ``TrianglePredictionGuider`` scales per frame: min at both ends, max in the middle."""
    values = torch.linspace(0, 1, frames, dtype=torch.float64)
    tri = 2 * (values / period - torch.floor(values / period + 0.5)).abs()
    return tri * (max_scale - min_scale) + min_scale


def camera_vector(request: OrbitRequest, cond_aug: float) -> torch.Tensor:
    """The per-frame conditioning vector, (frames, 256) for u or (frames, 1280) for p."""
    from backends.sv3d.unet import sinusoid

    frames = request.num_frames
    parts = [sinusoid(torch.full((frames,), cond_aug, dtype=torch.float64), 256)]
    if request.variant == "p":
        polar = torch.tensor([math.radians(90.0 - e) for e in request.elevations_deg], dtype=torch.float64)
        azimuth = torch.tensor([math.radians(a % 360.0) for a in request.azimuths_deg], dtype=torch.float64)
        parts += [sinusoid(polar, 512), sinusoid(azimuth, 512)]
    return torch.cat(parts, dim=1)


class Sv3dBackend:
    """SV3D_u and SV3D_p on the memory manager; one instance serves both variants."""

    name = "sv3d"
    tasks = ("orbit",)

    def __init__(self, settings: Sv3dSettings, manager: MemoryManager, ctx: LoadContext) -> None:
        """Register each variant's three components with ``manager``; nothing is read yet."""
        if settings.defaults.size % 64:
            raise StudioError(f"preset key sv3d.defaults.size must be a multiple of 64, got {settings.defaults.size}")
        from diffusers import AutoencoderKL
        from transformers import CLIPVisionModelWithProjection

        from backends.sv3d.unet import Sv3dUNet

        self.settings, self.manager, self.ctx = settings, manager, ctx
        self.dtype = _DTYPES[settings.dtype]
        self._lock = threading.Lock()
        self._folders: dict[str, Path] = {}
        for variant in ("u", "p"):
            for component, cls, dtype in (("image_encoder", CLIPVisionModelWithProjection, self.dtype),
                                          ("vae", AutoencoderKL, torch.float32), ("unet", Sv3dUNet, self.dtype)):
                manager.register(self.component(variant, component), self._loader(variant, component, cls, dtype))

    @staticmethod
    def component(variant: str, part: str) -> str:
        """Manager name of one component, e.g. ``sv3d.p.unet``."""
        return f"sv3d.{variant}.{part}"

    def component_names(self) -> list[str]:
        return [self.component(v, c) for v in ("u", "p") for c in ("image_encoder", "vae", "unet")]

    def checkpoint(self, variant: str) -> tuple[Source, str]:
        """The preset's source and file name of a variant's sgm checkpoint."""
        return getattr(self.settings, f"checkpoint_{variant}"), CHECKPOINT_FILES[f"checkpoint_{variant}"]

    def converted(self, variant: str) -> Path:
        """The converted-components folder of ``variant``, converting the checkpoint on first use."""
        from backends.sv3d.convert import ensure_converted

        with self._lock:
            if variant not in self._folders:
                source, filename = self.checkpoint(variant)
                path = resolve_file(source, filename, self.ctx)
                self._folders[variant] = ensure_converted(path, self.ctx.cache_dir, self.settings.dtype)
            return self._folders[variant]

    def _loader(self, variant: str, component: str, cls: type, dtype: torch.dtype) -> Callable[[], torch.nn.Module]:
        def load() -> torch.nn.Module:
            folder = self.converted(variant)
            module = load_pretrained(cls, Source(str(folder), component), self.ctx, dtype=dtype)
            return module.eval().requires_grad_(False)

        return load

    # ----- the run -------------------------------------------------------------------------
    def run(self, task: str, request: OrbitRequest, progress: ProgressFn) -> OrbitResult:
        """Make the orbit's frames for ``request``.

        Raises:
            UnknownNameError: ``task`` is not ``orbit``.
            Cancelled: raised by ``progress`` when the user pressed Stop.
            torch.OutOfMemoryError: decoding failed even one frame at a time.
        """
        if task not in self.tasks:
            raise UnknownNameError(f"Unknown task {task!r} for {self.name}; known tasks: {', '.join(self.tasks)}")
        started = time.perf_counter()
        timings: dict[str, float] = {}
        d = self.settings.defaults
        generator = torch.Generator("cpu").manual_seed(request.seed)
        pixels = image_tensor(request.image) * 2.0 - 1.0
        embedding = self._encode_clip(request.variant, pixels, timings)
        concat = self._encode_vae(request.variant, pixels, generator, timings)
        latents = self._denoise(request, embedding, concat, generator, progress, timings)
        frames, chunk, notices = self._decode(request, latents, progress, timings)
        frames[-1] = request.image.copy()  # the input view, as the reference replaces it
        timings["total"] = time.perf_counter() - started
        source, filename = self.checkpoint(request.variant)
        scales = triangle_scales(request.num_frames, d.min_guidance, d.max_guidance)
        info: dict[str, Any] = {
            "backend": self.name, "task": "orbit", **request.as_dict(),
            "cond_aug": d.cond_aug, "guidance": [round(float(s), 4) for s in scales],
            "decode_chunk_size": chunk, "dtype": self.settings.dtype, "device": str(self.manager.device),
            "checkpoint": f"{source.repo}/{filename}",
            "timings": {stage: round(seconds, 3) for stage, seconds in timings.items()},
            "notices": list(request.notices) + notices,
        }
        logger.info("sv3d_%s %d frames at %d px, %d steps, seed %d in %.2f s (%s)", request.variant,
                    request.num_frames, request.size, request.steps, request.seed, timings["total"], info["timings"])
        return OrbitResult(frames=frames, fps=d.fps, info=info)

    def _encode_clip(self, variant: str, pixels: torch.Tensor, timings: dict[str, float]) -> torch.Tensor:
        """OpenCLIP image embedding of the clean view, (1, 1, D)."""
        started = time.perf_counter()
        small = (clip_resize(pixels) + 1.0) / 2.0
        mean = torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)
        clip_input = (small - mean) / std

        def need(module: torch.nn.Module) -> int:
            return clip_working_bytes(module.config, element_size(module))

        with self.manager.use(self.component(variant, "image_encoder"), need) as encoder, torch.inference_mode():
            embedding = encoder(clip_input.to(self.manager.device, encoder.dtype)).image_embeds.unsqueeze(1)
        timings["image_encoder"] = time.perf_counter() - started
        return embedding

    def _encode_vae(self, variant: str, pixels: torch.Tensor, generator: torch.Generator,
                    timings: dict[str, float]) -> torch.Tensor:
        """Mode latent of the view plus ``cond_aug`` noise, unscaled (the embedder's scale is 1.0)."""
        started = time.perf_counter()
        noisy = pixels + self.settings.defaults.cond_aug * torch.randn(pixels.shape, generator=generator)
        pixel_count = pixels.shape[-1] * pixels.shape[-2]

        def need(module: torch.nn.Module) -> int:
            return pixel_count * module.config.block_out_channels[0] * 5 * 4 + 2 * 3 * pixel_count * 4

        with self.manager.use(self.component(variant, "vae"), need) as vae, torch.inference_mode():
            latent = vae.encode(noisy.to(self.manager.device, weights_dtype(vae))).latent_dist.mode()
        timings["vae_encode"] = time.perf_counter() - started
        return latent

    def _denoise(self, request: OrbitRequest, embedding: torch.Tensor, concat: torch.Tensor,
                 generator: torch.Generator, progress: ProgressFn, timings: dict[str, float]) -> torch.Tensor:
        """Euler EDM sampling with triangle guidance; returns latents (1, frames, 4, h, w)."""
        started = time.perf_counter()
        d, device, frames = self.settings.defaults, self.manager.device, request.num_frames
        shape = _Shape(request.size, request.size, frames)

        def need(module: torch.nn.Module) -> int:
            return unet_working_bytes(shape, module.config, element_size(module), True, False)

        with self.manager.use(self.component(request.variant, "unet"), need) as unet, torch.inference_mode():
            vector = camera_vector(request, d.cond_aug)
            expected = unet.add_embedding.linear_1.in_features
            if vector.shape[1] != expected:
                raise StudioError(f"the SV3D_{request.variant} UNet takes a {expected}-wide vector, not "
                                  f"{vector.shape[1]}: is {self.checkpoint(request.variant)[1]} the right file?")
            dtype = weights_dtype(unet)
            sigmas = edm_sigmas(request.steps).tolist()
            latents = torch.randn((1, frames, *concat.shape[1:]), generator=generator, dtype=torch.float32)
            latents = (latents * math.sqrt(1.0 + sigmas[0] ** 2)).to(device)
            # Unconditional half first, as sgm batches cat(uc, c): image inputs zeroed, vector kept.
            cond = concat.to(device, dtype).unsqueeze(1).expand(1, frames, *concat.shape[1:])
            cond = torch.cat([torch.zeros_like(cond), cond])
            context = embedding.to(device, dtype)
            context = torch.cat([torch.zeros_like(context), context])
            y = vector.to(device, dtype).repeat(2, 1)
            scale = triangle_scales(frames, d.min_guidance, d.max_guidance).to(device, torch.float32)
            scale = scale.reshape(1, frames, 1, 1, 1)
            for index in range(request.steps):
                sigma, following = sigmas[index], sigmas[index + 1]
                c_skip, c_out = 1.0 / (sigma ** 2 + 1.0), -sigma / math.sqrt(sigma ** 2 + 1.0)
                c_in, c_noise = 1.0 / math.sqrt(sigma ** 2 + 1.0), 0.25 * math.log(sigma)
                doubled = torch.cat([latents, latents])
                model_input = torch.cat([(doubled * c_in).to(dtype), cond], dim=2)
                noise_level = torch.full((2,), c_noise, device=device, dtype=torch.float32)
                output = unet(model_input, noise_level, context, y).float()
                denoised = output * c_out + doubled * c_skip
                unconditional, conditional = denoised.chunk(2)
                guided = unconditional + scale * (conditional - unconditional)
                latents = latents + (latents - guided) / sigma * (following - sigma)
                progress(DENOISE, index + 1, request.steps)
        timings["unet"] = time.perf_counter() - started
        return latents

    def _decode(self, request: OrbitRequest, latents: torch.Tensor, progress: ProgressFn,
                timings: dict[str, float]) -> tuple[list[Image.Image], int, list[str]]:
        """Decode in chunks of frames sized from free memory; an OOM halves the chunk and retries."""
        started = time.perf_counter()
        total = request.num_frames
        cap = max(1, min(total, self.settings.decode_chunk_max or total))
        pixels = request.size * request.size

        def per_frame(module: torch.nn.Module) -> int:
            width = module.config.block_out_channels[0]
            return pixels * width * DECODE_LIVE_TENSORS * (element_size(module)) + pixels * 12

        def need(module: torch.nn.Module) -> int:
            room = self.manager.room_beside(module_bytes(module))
            return per_frame(module) * int(min(cap, max(1, room // per_frame(module))))

        frames: list[Image.Image] = []
        notices: list[str] = []
        with self.manager.use(self.component(request.variant, "vae"), need) as vae:
            chunk = int(max(1, min(cap, self.manager.usable_free() // per_frame(vae))))
            logger.info("orbit decode chunk %d (at most %d)", chunk, cap)
            with torch.inference_mode():
                scaled = (latents.flatten(0, 1) / vae.config.scaling_factor).to(self.manager.device, weights_dtype(vae))
                done = 0
                while done < total:
                    size = min(chunk, total - done)
                    decoded = self._decode_chunk(vae, scaled[done:done + size], chunk, notices)
                    if decoded is None:
                        chunk = max(1, chunk // 2)
                        continue
                    frames.extend(to_pil_frames(decoded))
                    done += size
                    progress(DECODE, done, total)
        timings["vae_decode"] = time.perf_counter() - started
        return frames, chunk, notices

    def _decode_chunk(self, vae: torch.nn.Module, latents: torch.Tensor, chunk: int,
                      notices: list[str]) -> torch.Tensor | None:
        """One chunk; None after an OOM that a smaller chunk may avoid (the caller halves it)."""
        try:
            self.manager.checkpoint(DECODE_SITE)
            return vae.decode(latents).sample
        except torch.OutOfMemoryError as error:
            if chunk <= 1:
                raise
            message = f"decoding {chunk} frames at once ran out of memory; retried with {max(1, chunk // 2)}"
            logger.warning("%s (%s)", message, error)
            notices.append(message)
        if self.manager.device.type == "cuda":
            torch.cuda.empty_cache()
        return None

