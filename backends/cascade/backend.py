"""Stable Cascade: stage C (prior), stage B (decoder), stage A (VQGAN decode), shared by all tasks.

We run our own sampling loop over the diffusers model classes instead of the Stable Cascade
pipelines. The pipelines are deprecated and frozen in diffusers 0.42 (``DeprecatedPipelineMixin``),
the combined one draws both stages from one generator (and the official app never seeded stage C
at all), and a pipeline wants all its components at hand. Here each component is borrowed from the
memory manager only while its stage runs, each stage gets its own seeded CPU generator, and every
step is reported.

The math follows ``StableCascadePriorPipeline`` and ``StableCascadeDecoderPipeline`` of diffusers
0.42.1 step for step, so the same inputs and noise give the same pixels (a test checks this).

Variation and img2img (``backends.cascade.image``) change only stage C's image conditioning or
its starting point (``backends.cascade.sampling``); stage C also sends live previews on request.
Stage names, latent sizes, the result type and the working-memory estimates live in
``backends.cascade.stages``, which both sides import. When the budget cannot hold stage A's whole
decode, it decodes in overlapping tiles (``backends.cascade.tiling``), and the info says so.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from backends.cascade.image import ImageParts
from backends.cascade.requests import ImageVariationRequest, Img2ImgRequest, TextToImageRequest
from backends.cascade.sampling import StageCStart, denoise, noise
from backends.cascade.spec import CascadeSettings
from backends.cascade.stages import (
    DECODER,
    PRIOR,
    STAGE_A,
    STAGE_B,
    STAGE_C,
    TEXT_ENCODER,
    VQGAN,
    CascadeJob,
    ImageResult,
    stage_b_size,
    stage_c_size,
    vqgan_tile_bytes,
    working_bytes,
)
from backends.cascade.tiling import TileGrid, decode_within_budget, tiling_report
from backends.runtime.errors import Cancelled, UnknownNameError
from backends.runtime.loading import LoadContext, Source, describe_source, load_pretrained, torch_dtype
from backends.runtime.previews import numbered, preview_channel, stopped_notice
from backends.runtime.progress import ProgressFn
from backends.runtime.requests import MAX_PROMPT_CHARS, image_seed

if TYPE_CHECKING:
    from backends.runtime.memory import MemoryManager

logger = logging.getLogger(__name__)

_STAGES = ("text_encoder", "prior", "decoder", "vqgan")
#: Request fields copied into the info JSON as they are.
_INFO_FIELDS = ("prompt", "negative_prompt", "seed", "width", "height", "num_images", "prior_steps", "decoder_steps",
                "prior_guidance", "decoder_guidance")


@dataclass
class _Text:
    """Text conditioning for one image (a job makes its images one after another)."""

    hidden: torch.Tensor | None  # last hidden state, for stage C only
    pooled: torch.Tensor
    negative_hidden: torch.Tensor | None = None  # present when some stage uses CFG
    negative_pooled: torch.Tensor | None = None
    notices: list[str] = field(default_factory=list)


def _estimate(request: CascadeJob, stage: str) -> Callable[[torch.nn.Module], int]:
    """The manager calls this with the loaded module, so the estimate reads its real config."""

    def estimate(module: torch.nn.Module) -> int:
        dtype_size = torch.finfo(module.dtype).bits // 8
        return working_bytes(request, dtype_size, {stage: module.config})[stage]

    return estimate


class CascadeBackend:
    """Stable Cascade on top of the memory manager; one instance serves every request."""

    name = "cascade"
    tasks = ("text_to_image", "image_variation", "img2img")

    def __init__(self, settings: CascadeSettings, manager: MemoryManager, ctx: LoadContext) -> None:
        """Register the four model components with ``manager``; nothing is loaded yet.

        Args:
            settings: sources, dtype and defaults from the preset.
            manager: the memory manager (``register``, ``use``, ``device``).
            ctx: cache and offline settings for ``load_pretrained``.
        """
        from diffusers import StableCascadeUNet
        from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
        from transformers import CLIPTextModelWithProjection

        self.settings = settings
        self.manager = manager
        self.ctx = ctx
        self.dtype = torch_dtype(settings.dtype)
        self._aux_lock = threading.Lock()
        self._tokenizer: Any = None
        self._prior_scheduler: Any = None
        self._decoder_scheduler: Any = None
        for name, cls, source in (
            (TEXT_ENCODER, CLIPTextModelWithProjection, settings.text_encoder),
            (PRIOR, StableCascadeUNet, settings.prior),
            (DECODER, StableCascadeUNet, settings.decoder),
            (VQGAN, PaellaVQModel, settings.vqgan),
        ):
            manager.register(name, self._loader(cls, source))
        #: Image encoder, EfficientNet encoder and previewer; registered on first use.
        self.images = ImageParts(self)

    def component_names(self) -> list[str]:
        """The manager names of the text-to-image modules, in the order a run uses them (the
        image-side ones are ``self.images.component_names()``)."""
        return [TEXT_ENCODER, PRIOR, DECODER, VQGAN]

    def _loader(self, cls: type, source: Source) -> Any:
        def load() -> torch.nn.Module:
            module = load_pretrained(cls, source, self.ctx, dtype=self.dtype)
            return module.eval().requires_grad_(False)

        return load

    def _aux(self) -> tuple[Any, Any, Any]:
        """Tokenizer and the two schedulers; small, loaded once and kept (runs use copies)."""
        with self._aux_lock:
            if self._tokenizer is None:
                from diffusers import DDPMWuerstchenScheduler
                from transformers import CLIPTokenizer

                s = self.settings
                self._tokenizer = load_pretrained(CLIPTokenizer, s.tokenizer, self.ctx)
                scheduler = DDPMWuerstchenScheduler
                self._prior_scheduler = load_pretrained(scheduler, s.prior_scheduler, self.ctx)
                self._decoder_scheduler = load_pretrained(scheduler, s.decoder_scheduler, self.ctx)
            return self._tokenizer, self._prior_scheduler, self._decoder_scheduler

    # ----- public entry points -------------------------------------------------------------
    def run(self, task: str, request: CascadeJob, progress: ProgressFn) -> ImageResult:
        """Run ``task`` for a validated request, reporting every denoising step to ``progress``.

        Raises:
            UnknownNameError: ``task`` is not one of ``tasks``.
            TypeError: ``request`` is not the task's request type (a programming error).
            Cancelled: raised by ``progress`` when the user pressed Stop.
        """
        if task not in self.tasks:
            known = ", ".join(self.tasks)
            raise UnknownNameError(f"Unknown task {task!r} for {self.name}; known tasks: {known}")
        expected = {"text_to_image": TextToImageRequest, "image_variation": ImageVariationRequest,
                    "img2img": Img2ImgRequest}[task]
        if not isinstance(request, expected):
            raise TypeError(f"{task} needs {expected.__name__}, got {type(request).__name__}")
        if task == "image_variation":
            return self.images.variation(request, progress)
        if task == "img2img":
            return self.images.img2img(request, progress)
        return self.generate("text_to_image", request, progress, time.perf_counter(), {})

    def decode_latents(
        self, stage_c_latents: torch.Tensor, request: CascadeJob, progress: ProgressFn
    ) -> list[Image.Image]:
        """Run stages B and A on given stage C latents, seeded from ``request.seed``.

        This is the second half of ``run``: the same latents and request give the same images
        (image ``i`` decoded at ``image_seed(seed, i) + 1``).
        """
        if stage_c_latents.ndim != 4:
            shape = tuple(stage_c_latents.shape)
            raise ValueError(f"stage C latents must be (batch, channels, height, width), got {shape}")
        timings: dict[str, float] = {}
        text = self._encode_text(request, for_prior=False, timings=timings)
        images: list[Image.Image] = []
        for index, stage_c in enumerate(stage_c_latents.split(1)):
            one = replace(request, seed=image_seed(request.seed, index), num_images=1)  # type: ignore[type-var]
            report = numbered(progress, index, stage_c_latents.shape[0])
            images += self._stage_a(self._stage_b(stage_c, text, one, report, timings), one, timings)
            report(STAGE_A, 1, 1)
        return images

    # ----- the stages ----------------------------------------------------------------------
    def generate(self, task: str, request: CascadeJob, progress: ProgressFn, started: float,
                 timings: dict[str, float], *, clip_img: torch.Tensor | None = None,
                 start: StageCStart | None = None, extra_info: Mapping[str, Any] | None = None,
                 notices: Sequence[str] = ()) -> ImageResult:
        """Stages C, B and A for any task, one image after another; the image tasks pass what they
        computed first.

        Image ``i`` of a job is the job at ``image_seed(seed, i)`` with one image, as in
        AUTOMATIC1111's batch count and Fooocus: any picture of a batch can be made again alone
        from the seed its file carries, and Stop keeps the images already finished. On a GPU the
        cost is small, since stage C at batch 1 with guidance already fills it.

        Args:
            task: the task name for the info.
            started: ``time.perf_counter()`` when the job began (the total includes image encoding).
            timings: seconds by stage so far; the stages add theirs.
            clip_img: (1, 1, C) CLIP image embedding for stage C (variation); zeros when None.
            start: img2img's starting latent; at strength 0 stage C does not run at all.
            extra_info: task fields for the info JSON.
            notices: the request's own notices (input conversions and fits).

        Raises:
            Cancelled: Stop came before the first image was finished. Once one is, Stop ends the
                job with the finished images and a notice that says how many.
        """
        total = request.num_images
        skip_prior = start is not None and start.steps(request.prior_steps) == 0
        text = self._encode_text(request, for_prior=not skip_prior, timings=timings)
        images: list[Image.Image] = []
        stage_cs: list[torch.Tensor] = []
        stopped: list[str] = []
        stage_b_shape: list[int] = []
        decodes: list[TileGrid | None] = []
        for index in range(total):
            one = replace(request, seed=image_seed(request.seed, index), num_images=1)  # type: ignore[type-var]
            report = numbered(progress, index, total)
            try:
                if skip_prior:
                    assert start is not None
                    stage_c = start.latents
                else:
                    stage_c = self._stage_c(text, one, report, timings, clip_img=clip_img, start=start)
                latents = self._stage_b(stage_c, text, one, report, timings)
                stage_b_shape = list(latents.shape[1:])
                images += self._stage_a(latents, one, timings, decodes)
                stage_cs.append(stage_c.cpu())
                report(STAGE_A, 1, 1)
            except Cancelled:
                if not images:
                    raise
                stopped.append(stopped_notice(len(images), total))
                break
        timings["total"] = time.perf_counter() - started
        s = self.settings
        cut = [f"{name} cut to {MAX_PROMPT_CHARS} characters" for name in request.truncated]
        seeds = [image_seed(request.seed, index) for index in range(len(images))]
        stage_a_tiles, tiled = tiling_report(decodes)
        info: dict[str, Any] = {
            "backend": self.name,
            "task": task,
            **{key: getattr(request, key) for key in _INFO_FIELDS},
            **(extra_info or {}),
            "seeds": seeds,
            "decoder_seeds": [seed + 1 for seed in seeds],
            "dtype": s.dtype,
            "device": str(self.manager.device),
            **{stage: describe_source(getattr(s, stage)) for stage in _STAGES},
            "stage_c_shape": [len(images), *stage_cs[0].shape[1:]],
            "stage_b_shape": [len(images), *stage_b_shape],
            "stage_a_tiles": stage_a_tiles,
            "timings": {stage: round(seconds, 3) for stage, seconds in timings.items()},
            "notices": [*notices, *cut, *text.notices, *tiled, *stopped],
        }
        logger.info("cascade %s %dx%d x%d seed %d in %.2f s (%s)", task, request.width, request.height,
                    len(images), request.seed, timings["total"], info["timings"])
        return ImageResult(images=images, info=info, stage_c_latents=torch.cat(stage_cs).clone())

    def _encode_text(self, request: CascadeJob, *, for_prior: bool,
                     timings: dict[str, float]) -> _Text:
        """CLIP text features: last hidden state (stage C) and pooled projection (both stages).

        The negative prompt is encoded only when a stage that runs uses classifier-free guidance.
        Prompts are encoded one at a time, as the pipelines do, so results match them exactly.
        """
        started = time.perf_counter()
        tokenizer, _, _ = self._aux()
        guided = request.decoder_guidance > 1 or (for_prior and request.prior_guidance > 1)
        texts = [("prompt", request.prompt)]
        if guided:
            texts.append(("negative prompt", request.negative_prompt))
        need = _estimate(request, "text_encoder")
        encoded: list[tuple[torch.Tensor, torch.Tensor]] = []
        notices: list[str] = []
        # The manager places modules outside inference mode; only the compute runs inside it.
        with self.manager.use(TEXT_ENCODER, need) as encoder, torch.inference_mode():
            for label, prompt in texts:
                limit = tokenizer.model_max_length
                given = len(tokenizer(prompt, verbose=False).input_ids)
                if given > limit:
                    notices.append(f"{label} truncated to {limit} tokens ({given} given)")
                tokens = tokenizer(prompt, padding="max_length", max_length=limit, truncation=True,
                                   return_tensors="pt")
                output = encoder(tokens.input_ids.to(self.manager.device),
                                 attention_mask=tokens.attention_mask.to(self.manager.device),
                                 output_hidden_states=True)
                # Stage C reads the last layer before the final layer norm (hidden_states[-1],
                # not last_hidden_state), as the original code and the pipelines do.
                hidden = output.hidden_states[-1].to(encoder.dtype)
                pooled = output.text_embeds.unsqueeze(1).to(encoder.dtype)
                encoded.append((hidden, pooled))
        timings["text_encoder"] = timings.get("text_encoder", 0.0) + time.perf_counter() - started
        (hidden, pooled), negative = encoded[0], (encoded[1] if guided else (None, None))
        return _Text(hidden if for_prior else None, pooled, negative[0], negative[1], notices)

    def _stage_c(self, text: _Text, request: CascadeJob, progress: ProgressFn, timings: dict[str, float],
                 *, clip_img: torch.Tensor | None = None, start: StageCStart | None = None) -> torch.Tensor:
        """Denoise the 16-channel semantic latent (about 24x24 for 1024 px) from text.

        ``clip_img`` is a variation's image embedding (zeros otherwise, as in text-to-image);
        ``start`` is img2img's noised input instead of pure noise. Previews, when the caller's
        progress carries a preview channel, come from the previewer after each chosen step.
        """
        from diffusers import DDPMWuerstchenScheduler

        started = time.perf_counter()
        _, prior_scheduler, _ = self._aux()
        device, n = self.manager.device, request.num_images
        guidance = request.prior_guidance
        cfg = guidance > 1
        generator = torch.Generator("cpu").manual_seed(request.seed)
        scheduler = DDPMWuerstchenScheduler.from_config(prior_scheduler.config)
        channel = preview_channel(progress)
        need = _estimate(request, "prior")
        # Both modules are placed before inference mode starts; only the compute runs inside it.
        with self.manager.use(PRIOR, need) as prior, \
                self.images.previewer(channel, request) as previewer, torch.inference_mode():
            dtype = prior.dtype
            height, width = stage_c_size(request.height, request.width)
            shape = (n, prior.config.in_channels, height, width)
            latents = noise(shape, generator, device, dtype)
            timesteps = None
            if start is not None:
                latents, timesteps = start.begin(latents, scheduler, request.prior_steps)
            if clip_img is None:
                clip_img = torch.zeros(n, 1, prior.config.clip_image_in_channels, device=device, dtype=dtype)
            clip_img = clip_img.to(device, dtype)
            assert text.hidden is not None
            clip_text, clip_pooled = text.hidden, text.pooled
            if cfg:
                assert text.negative_hidden is not None and text.negative_pooled is not None
                clip_text = torch.cat([clip_text, text.negative_hidden])
                clip_pooled = torch.cat([clip_pooled, text.negative_pooled])
                clip_img = torch.cat([clip_img, torch.zeros_like(clip_img)])
            clip_text, clip_pooled = clip_text.to(device, dtype), clip_pooled.to(device, dtype)
            observe = self.images.preview_observer(channel, previewer, scheduler)
            latents = denoise(prior, scheduler, latents, request.prior_steps, guidance, generator,
                              STAGE_C, progress, timesteps=timesteps, observe=observe,
                              clip_text_pooled=clip_pooled, clip_text=clip_text, clip_img=clip_img)
        timings["prior"] = timings.get("prior", 0.0) + time.perf_counter() - started
        return latents

    def _stage_b(self, stage_c: torch.Tensor, text: _Text, request: CascadeJob,
                 progress: ProgressFn, timings: dict[str, float]) -> torch.Tensor:
        """Denoise the 4-channel VQGAN latent, conditioned on stage C ("effnet") and pooled text."""
        from diffusers import DDPMWuerstchenScheduler

        started = time.perf_counter()
        _, _, decoder_scheduler = self._aux()
        device, n = self.manager.device, stage_c.shape[0]
        guidance = request.decoder_guidance
        cfg = guidance > 1
        # Its own generator, so stage B's noise depends on the seed but not on stage C's steps.
        generator = torch.Generator("cpu").manual_seed(request.seed + 1)
        need = _estimate(request, "decoder")
        with self.manager.use(DECODER, need) as decoder, torch.inference_mode():
            dtype = decoder.dtype
            effnet = stage_c.to(device, dtype)
            pooled = text.pooled
            if cfg:
                assert text.negative_pooled is not None
                pooled = torch.cat([pooled, text.negative_pooled])
                effnet = torch.cat([effnet, torch.zeros_like(effnet)])
            pooled = pooled.to(device, dtype)
            height, width = stage_b_size(stage_c.shape[2], stage_c.shape[3])
            latents = noise((n, decoder.config.in_channels, height, width), generator, device, dtype)
            scheduler = DDPMWuerstchenScheduler.from_config(decoder_scheduler.config)
            latents = denoise(decoder, scheduler, latents, request.decoder_steps, guidance, generator,
                              STAGE_B, progress, clip_text_pooled=pooled, effnet=effnet)
        timings["decoder"] = timings.get("decoder", 0.0) + time.perf_counter() - started
        return latents

    def _stage_a(self, latents: torch.Tensor, request: CascadeJob, timings: dict[str, float],
                 decodes: list[TileGrid | None] | None = None) -> list[Image.Image]:
        """Decode VQGAN latents to pixels (4x upscale) and convert to 8-bit images.

        When the whole decode's working memory does not fit the budget beside the VQGAN, it
        decodes in overlapping tiles as large as the room allows (``backends.cascade.tiling``;
        the same pixels up to float rounding). ``decodes``, when given, receives the grid used
        (None for a whole decode).

        It reports no progress itself: the caller does, once the images are in hand, so that a
        Stop raised by that report cannot lose a decoded picture.
        """
        started = time.perf_counter()
        whole = _estimate(request, "vqgan")

        def tile_bytes(module: torch.nn.Module, tiles: TileGrid) -> int:
            return vqgan_tile_bytes(request, tiles.tile_height * tiles.scale, tiles.tile_width * tiles.scale,
                                    torch.finfo(module.dtype).bits // 8, module.config)

        pixels, tiles = decode_within_budget(self.manager, VQGAN, latents, whole, tile_bytes)
        array = pixels.permute(0, 2, 3, 1).cpu().float().numpy()  # numpy has no bfloat16
        images = [Image.fromarray(image) for image in (array * 255).round().astype(np.uint8)]
        if decodes is not None:
            decodes.append(tiles)
        timings["vqgan"] = timings.get("vqgan", 0.0) + time.perf_counter() - started
        return images

