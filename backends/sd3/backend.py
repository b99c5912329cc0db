"""Stable Diffusion 3.5 Large, Large Turbo and Medium: text-to-image, img2img and inpaint.

The sampling is diffusers' own: ``StableDiffusion3Pipeline``, ``StableDiffusion3Img2ImgPipeline``
and ``StableDiffusion3InpaintPipeline`` (0.42.1) run every denoising step. What this file adds is
the memory manager's work around them, so that only one large component needs the device at a
time (``backends.sd3.pipes`` says how the pipelines are assembled per stage):

1. the prompt: both CLIPs, then T5 (on the device, on the CPU, or off), borrowed in turn
   (``backends.sd3.text``); once per job, shared by its images;
2. img2img and inpaint: the VAE encodes the input (the latents are handed to the pipeline, which
   then does not encode it again);
3. the transformer denoises, called with the embeddings (``prompt_embeds=`` and friends) and
   ``output_type="latent"``; ``callback_on_step_end`` reports every step, and Stop raises there;
4. the VAE decodes: ``latents / scaling_factor + shift_factor``, as the text-to-image and img2img
   pipelines do. The inpaint pipeline of diffusers 0.42.1 leaves the shift out when it decodes
   (huggingface/diffusers#13611, issue 1); we decode all three alike. Inpaint then lays the
   input's pixels back over the result outside the feathered mask (``backends.sd3.images``).

Images of a job are made one after another at ``image_seed(seed, i)``, each from its own CPU
generator drawn in the pipeline's order (VAE sample, then noise), so image ``i`` equals the stock
pipeline's one image at that seed on any device. Guidance 1 or less (Turbo's 0) runs no
classifier-free guidance: no negative prompt is encoded, one transformer row per step.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from PIL import Image

from backends.runtime.errors import Cancelled, ModelUnavailable, StudioError, UnknownNameError
from backends.runtime.image_requests import SdImageRequest, SdTextToImageRequest
from backends.runtime.loading import (
    TINY_PREFIX,
    LoadContext,
    Source,
    describe_source,
    element_size,
    load_pretrained,
    resolve_repo,
    torch_dtype,
    weights_dtype,
)
from backends.runtime.previews import numbered, stopped_notice
from backends.runtime.progress import ProgressFn
from backends.runtime.requests import MAX_PROMPT_CHARS, image_seed
from backends.sd3 import images as picture
from backends.sd3.memory import transformer_bytes, vae_decode_bytes, vae_encode_bytes
from backends.sd3.pipes import PIPELINES, assemble
from backends.sd3.requests import Sd3Options, check_offered, parse_options, t5_placement
from backends.sd3.spec import MODELS, SHORT_NAMES, SPEC, TRANSFORMER_KEYS, Sd3Settings
from backends.sd3.text import TEXT_ENCODER, TEXT_ENCODER_2, TEXT_ENCODER_3, PromptEmbeddings, Tokenizers, encode

if TYPE_CHECKING:
    from backends.runtime.memory import MemoryManager

logger = logging.getLogger(__name__)

VAE = "sd3.vae"
DENOISE = "SD3.5 denoising"
DECODE = "SD3.5 decoding"
T5_OFF_NOTICE = ("T5 text encoder off: prompt following, long prompts and lettering get weaker "
                 "(the CLIP encoders alone condition the image)")
_REQUEST_TYPES = {"sd3_text_to_image": SdTextToImageRequest, "sd3_img2img": SdImageRequest,
                  "sd3_inpaint": SdImageRequest}
_SHARED = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3")


def transformer_name(model: str) -> str:
    """The manager name of a model's transformer, e.g. ``sd3.large-turbo.transformer``."""
    return f"sd3.{SHORT_NAMES[model]}.transformer"


@dataclass
class Sd3Result:
    """What one SD3.5 job gives back; the same ``images`` and ``info`` as Cascade's ``ImageResult``."""

    #: The finished images, at the request's size (fewer than asked after a Stop).
    images: list[Image.Image]
    #: JSON-able metadata: the request, ``seed`` and ``seeds``, ``model``, options, sources, timings, notices.
    info: dict[str, Any]
    #: The denoised latents each image was decoded from, (n, 16, height/8, width/8) on the CPU;
    #: None when no step ran (img2img or inpaint at strength 0 returns the input).
    latents: torch.Tensor | None


class Sd3Backend:
    """SD3.5 on top of the memory manager; one instance serves every offered model and all three tasks."""

    name = "sd3"
    tasks = SPEC.tasks

    def __init__(self, settings: Sd3Settings, manager: MemoryManager, ctx: LoadContext) -> None:
        """Register the offered models' components with ``manager``; nothing is loaded yet.

        Raises:
            StudioError: the preset offers an unknown model, or a default size is off the 64 px grid.
        """
        from diffusers import AutoencoderKL, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, T5EncoderModel

        unknown = [model for model in settings.offer if model not in MODELS]
        if unknown or not settings.offer:
            raise StudioError(f"preset key sd3.offer must list some of {', '.join(MODELS)}, got {settings.offer}")
        for key in ("large", "large_turbo", "medium"):
            defaults = getattr(settings.defaults, key)
            for side in ("width", "height"):
                if getattr(defaults, side) % 64:
                    raise StudioError(f"preset key sd3.defaults.{key}.{side} must be a multiple of 64, "
                                      f"got {getattr(defaults, side)}")
        self.settings, self.manager, self.ctx = settings, manager, ctx
        self.dtype = torch_dtype(settings.dtype)
        self.t5 = t5_placement(settings)
        self._lock = threading.Lock()
        self._aux: tuple[Tokenizers, Any] | None = None
        self._t5_widths: dict[str, int] = {}
        parts = [(TEXT_ENCODER, CLIPTextModelWithProjection, settings.text_encoder),
                 (TEXT_ENCODER_2, CLIPTextModelWithProjection, settings.text_encoder_2)]
        if self.t5 != "off":  # with t5 cpu the manager lends its RAM copy (``use(..., host=True)``)
            parts.append((TEXT_ENCODER_3, T5EncoderModel, settings.text_encoder_3))
        parts += [(transformer_name(m), SD3Transformer2DModel, self._transformer_source(m)) for m in settings.offer]
        parts.append((VAE, AutoencoderKL, settings.vae))
        for name, cls, source in parts:
            manager.register(name, self._loader(cls, source), host_only=name == TEXT_ENCODER_3 and self.t5 == "cpu")
        self._names = [name for name, _, _ in parts]
        bytes_per = torch.finfo(self.dtype).bits // 8
        for model in settings.offer:  # the registry keys sizes by subfolder, which these share
            source = self._transformer_source(model)
            params = SPEC.params_m.get(f"{source.repo}/{source.subfolder}", 0.0)
            if params and not source.repo.startswith(TINY_PREFIX):
                manager.hint_size(transformer_name(model), int(params * 1e6 * bytes_per))

    def component_names(self) -> list[str]:
        """The manager names of this backend's modules, in the order a job first uses them."""
        return list(self._names)

    def _transformer_source(self, model: str) -> Source:
        return getattr(self.settings, TRANSFORMER_KEYS[model])

    def _loader(self, cls: type, source: Source) -> Callable[[], torch.nn.Module]:
        def load() -> torch.nn.Module:
            return load_pretrained(cls, source, self.ctx, dtype=self.dtype).eval().requires_grad_(False)

        return load

    def _small_parts(self) -> tuple[Tokenizers, Any]:
        """The three tokenizers and the scheduler; small, loaded once (each image gets a fresh scheduler)."""
        with self._lock:
            if self._aux is None:
                from diffusers import FlowMatchEulerDiscreteScheduler
                from transformers import CLIPTokenizer, T5TokenizerFast

                s = self.settings
                tokenizers = Tokenizers(load_pretrained(CLIPTokenizer, s.tokenizer, self.ctx),
                                        load_pretrained(CLIPTokenizer, s.tokenizer_2, self.ctx),
                                        load_pretrained(T5TokenizerFast, s.tokenizer_3, self.ctx))
                self._aux = (tokenizers, load_pretrained(FlowMatchEulerDiscreteScheduler, s.scheduler, self.ctx))
            return self._aux

    def _t5_width(self, model: str) -> int:
        """The transformer's ``joint_attention_dim`` (T5's width) from its config, without its weights."""
        with self._lock:
            if model not in self._t5_widths:
                from diffusers import SD3Transformer2DModel

                source = self._transformer_source(model)
                options: dict[str, Any] = {"subfolder": source.subfolder, "local_files_only": self.ctx.offline}
                if not source.repo.startswith(TINY_PREFIX):
                    options.update(revision=source.revision,
                                   cache_dir=str(self.ctx.models_dir) if self.ctx.models_dir else None)
                try:
                    config = SD3Transformer2DModel.load_config(resolve_repo(source, self.ctx), **options)
                except (OSError, ValueError) as error:  # hub and file errors are OSError subclasses
                    raise ModelUnavailable(f"Could not read the transformer config of {describe_source(source)}: "
                                           f"{type(error).__name__}: {str(error)[:300]}") from error
                self._t5_widths[model] = int(config["joint_attention_dim"])
            return self._t5_widths[model]

    # ----- the job -------------------------------------------------------------------------
    def run(self, task: str, request: Any, progress: ProgressFn) -> Sd3Result:
        """Run ``task`` for a validated request, reporting every denoising step to ``progress``.

        Raises:
            UnknownNameError: ``task`` is not one of ``tasks``.
            TypeError: ``request`` is not the task's request type (a programming error).
            InputError: the model is not offered, or an option is invalid (named).
            Cancelled: Stop came before the first image was finished. Once one is, Stop ends the
                job with the finished images and a notice that says how many.
        """
        if task not in self.tasks:
            raise UnknownNameError(f"Unknown task {task!r} for {self.name}; known tasks: {', '.join(self.tasks)}")
        expected = _REQUEST_TYPES[task]
        masked = isinstance(request, SdImageRequest) and request.mask is not None
        if not isinstance(request, expected) or masked != (task == "sd3_inpaint"):
            wanted = {"sd3_inpaint": " with a mask", "sd3_img2img": " without a mask"}.get(task, "")
            raise TypeError(f"{task} needs {expected.__name__}{wanted}, got {type(request).__name__}"
                            + (" with a mask" if masked else ""))
        check_offered(self.settings, request.model)
        options = parse_options(request.options, self.settings, request.model)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        total = request.num_images
        strength = getattr(request, "strength", 1.0)
        steps = request.steps if task == "sd3_text_to_image" else picture.steps_run(request.steps, strength)
        notices = list(getattr(request, "notices", ()))
        notices += [f"{name} cut to {MAX_PROMPT_CHARS} characters" for name in request.truncated]
        images: list[Image.Image] = []
        latents: list[torch.Tensor] = []
        if steps == 0:  # strength 0: the pipelines would refuse; nothing is to be changed
            images = [request.image.copy() for _ in range(total)]
            notices.append(f"strength {strength:g} runs no denoising step: the input is returned unchanged")
        else:
            text = self._encode_text(request, options, timings)
            notices += text.notices + ([T5_OFF_NOTICE] if options.t5 == "off" else [])
            for index in range(total):
                report = numbered(progress, index, total)
                try:
                    image, final = self._one_image(task, request, options, text, index, report, timings)
                    images.append(image)
                    latents.append(final)
                    report(DECODE, 1, 1)  # after the image is in hand: a Stop here keeps it
                except Cancelled:
                    if not images:
                        raise
                    notices.append(stopped_notice(len(images), total))
                    break
        timings["total"] = time.perf_counter() - started
        info = self._info(task, request, options, steps, images, latents, timings, notices)
        logger.info("sd3 %s %s %dx%d x%d seed %d in %.2f s (%s)", task, request.model, request.width,
                    request.height, len(images), request.seed, timings["total"], info["timings"])
        return Sd3Result(images=images, info=info, latents=torch.cat(latents) if latents else None)

    def _encode_text(self, request: Any, options: Sd3Options, timings: dict[str, float]) -> PromptEmbeddings:
        tokenizers, _ = self._small_parts()
        guided = request.guidance > 1
        return encode(self.manager, tokenizers, request.prompt, request.negative_prompt if guided else None,
                      max_sequence_length=options.max_sequence_length, t5=options.t5,
                      t5_width=lambda: self._t5_width(request.model),
                      dtype=self.dtype, timings=timings)

    def _one_image(self, task: str, request: Any, options: Sd3Options, text: PromptEmbeddings, index: int,
                   progress: ProgressFn, timings: dict[str, float]) -> tuple[Image.Image, torch.Tensor]:
        """Image ``index`` of the job: its own generator, (encode,) denoise, decode (, overlay)."""
        generator = torch.Generator("cpu").manual_seed(image_seed(request.seed, index))
        start = None if task == "sd3_text_to_image" else self._encode_image(request, generator, timings)
        latents = self._denoise(task, request, options, text, start, generator, progress, timings)
        image = self._decode(request, latents, timings)
        if task == "sd3_inpaint":
            image = picture.overlay(self._processor(), request.mask, request.image, image, self.settings.mask_blur)
        return image, latents.cpu()

    def _processor(self) -> Any:
        from diffusers.image_processor import VaeImageProcessor

        return VaeImageProcessor(vae_scale_factor=8)

    def _encode_image(self, request: SdImageRequest, generator: torch.Generator,
                      timings: dict[str, float]) -> torch.Tensor:
        """The input's scaled VAE latents, sampled with ``generator`` as the pipelines' ``prepare_latents`` do."""
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img import retrieve_latents

        started = time.perf_counter()
        pixels = self._processor().preprocess(request.image, height=request.height, width=request.width)

        def need(module: torch.nn.Module) -> int:
            return vae_encode_bytes(module.config, element_size(module), request.width, request.height)

        with self.manager.use(VAE, need) as vae, torch.inference_mode():
            sample = retrieve_latents(vae.encode(pixels.to(self.manager.device, self.dtype)), generator=generator)
            latents = (sample - vae.config.shift_factor) * vae.config.scaling_factor
        timings["vae_encode"] = timings.get("vae_encode", 0.0) + time.perf_counter() - started
        return latents

    def _denoise(self, task: str, request: Any, options: Sd3Options, text: PromptEmbeddings,
                 start: torch.Tensor | None, generator: torch.Generator, progress: ProgressFn,
                 timings: dict[str, float]) -> torch.Tensor:
        """The stock pipeline's denoising loop on the borrowed transformer; returns the final latents."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        started = time.perf_counter()
        _, scheduler = self._small_parts()
        guided = text.negative is not None

        def need(module: torch.nn.Module) -> int:
            return transformer_bytes(module.config, element_size(module), request.width,
                                     request.height, options.max_sequence_length, guided)

        def step_done(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            progress(DENOISE, step + 1, pipe.num_timesteps)
            return {}

        arguments: dict[str, Any] = dict(
            prompt_embeds=text.positive.embeds, pooled_prompt_embeds=text.positive.pooled,
            height=request.height, width=request.width, num_inference_steps=request.steps,
            guidance_scale=request.guidance, generator=generator, max_sequence_length=options.max_sequence_length,
            output_type="latent", callback_on_step_end=step_done, return_dict=False)
        if guided:
            assert text.negative is not None
            arguments.update(negative_prompt_embeds=text.negative.embeds,
                             negative_pooled_prompt_embeds=text.negative.pooled)
        if start is not None:
            # Latents as ``image`` are not encoded again (the pipelines' documented input). For a
            # 16-channel transformer the inpaint pipeline reads masked-image latents only to
            # encode them (33-channel inpainting models use them); giving it these spares a VAE
            # encode inside the transformer's turn.
            arguments.update(image=start, strength=request.strength)
            if task == "sd3_inpaint":
                arguments.update(mask_image=request.mask, masked_image_latents=start)
        # The VAE rides along for its config (the image pipelines read ``latent_channels``); it
        # is small, and the decode that follows needs it on the device anyway.
        with self.manager.use(VAE) as vae, self.manager.use(transformer_name(request.model), need) as transformer, \
                torch.inference_mode():
            pipe = assemble(PIPELINES[task], self.manager.device, transformer=transformer, vae=vae,
                            scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler.config))
            latents = pipe(**arguments)[0]
        timings["transformer"] = timings.get("transformer", 0.0) + time.perf_counter() - started
        return latents

    def _decode(self, request: Any, latents: torch.Tensor, timings: dict[str, float]) -> Image.Image:
        started = time.perf_counter()

        def need(module: torch.nn.Module) -> int:
            return vae_decode_bytes(module.config, element_size(module), request.width, request.height)

        with self.manager.use(VAE, need) as vae, torch.inference_mode():
            scaled = latents.to(self.manager.device, weights_dtype(vae)) / vae.config.scaling_factor
            scaled = scaled + vae.config.shift_factor
            pixels = vae.decode(scaled, return_dict=False)[0]
            image = self._processor().postprocess(pixels, output_type="pil")[0]
        timings["vae_decode"] = timings.get("vae_decode", 0.0) + time.perf_counter() - started
        return image

    def _info(self, task: str, request: Any, options: Sd3Options, steps: int, images: list[Image.Image],
              latents: list[torch.Tensor], timings: dict[str, float], notices: list[str]) -> dict[str, Any]:
        s = self.settings
        info: dict[str, Any] = {
            "backend": self.name,
            "task": task,
            **request.as_dict(),
            "options": options.as_dict(),
            "seeds": [image_seed(request.seed, index) for index in range(len(images))],
            "steps_run": steps,
            "guided": request.guidance > 1,
            "dtype": s.dtype,
            "device": str(self.manager.device),
            "transformer": describe_source(self._transformer_source(request.model)),
            **{key: describe_source(getattr(s, key)) for key in _SHARED},
            "latent_shape": [len(latents), *latents[0].shape[1:]] if latents else None,
            "timings": {stage: round(seconds, 3) for stage, seconds in timings.items()},
            "notices": notices,
        }
        if task == "sd3_inpaint":
            info["mask_blur"] = s.mask_blur
        return info
