"""Stable Diffusion XL (base, and optionally the refiner): text-to-image, img2img and inpaint.

Each job runs diffusers' own SDXL pipelines, one stage at a time, each on the modules the memory
manager lends for that stage only (``backends.sdxl.pipelines``): the VAE encodes the input
(img2img, inpaint), the two text encoders encode the prompt (``encode_prompt``), the base UNet
denoises, the refiner UNet takes over at ``high_noise_frac`` when asked (diffusers' documented
ensemble of experts: ``denoising_end`` on the base, ``denoising_start`` on the refiner), and the
VAE decodes (``backends.sdxl.vae``). With the same modules and seed, each task gives the latents
and pixels the stock pipeline gives (tests compare them in float32 and bfloat16).

Images of a job are made one after another at seed, seed + 1, ... (``image_seed``), each with its
own CPU generator, as the Cascade backend makes them: any picture of a batch can be made again
alone from the seed its file carries, and Stop keeps the pictures already finished. Inpaint lays
the input's pixels back outside the mask with a feathered seam (``vae.overlay``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from backends.runtime import downloads
from backends.runtime.errors import Cancelled, InputError, UnknownNameError
from backends.runtime.image_requests import SdImageRequest, SdTextToImageRequest
from backends.runtime.loading import LoadContext, Source, describe_source, load_pretrained, torch_dtype
from backends.runtime.previews import numbered, stopped_notice
from backends.runtime.progress import ProgressFn
from backends.runtime.requests import MAX_PROMPT_CHARS, image_seed
from backends.sdxl import vae
from backends.sdxl.pipelines import Parts, VaeConfig, weightless_vae
from backends.sdxl.requests import SdxlOptions, SdxlRequest, parse_options
from backends.sdxl.spec import MODELS, SPEC, SdxlSettings
from backends.sdxl.stages import (
    DECODE,
    IMG2IMG,
    INPAINT,
    REFINER_UNET,
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    TEXT_TO_IMAGE,
    UNET,
    VAE,
    Prompt,
    Stages,
)
from backends.sdxl.steps import StepPlan, plan_steps

if TYPE_CHECKING:
    from backends.runtime.memory import MemoryManager

logger = logging.getLogger(__name__)

@dataclass
class SdxlResult:
    """What one SDXL job gives back; ``images`` and ``info`` as the Cascade backend's ``ImageResult``."""

    #: The decoded images, one per seed in ``info["seeds"]``, at the request's size.
    images: list[Image.Image]
    #: JSON-able metadata: the request, seeds, options, step counts, dtype, sources, timings, notices.
    info: dict[str, Any]
    #: The latents the VAE decoded, (images, 4, height / 8, width / 8) on the CPU (tests, img2img work).
    latents: torch.Tensor


class SdxlBackend:
    """SDXL base and refiner on top of the memory manager; one instance serves every request."""

    name = SPEC.name
    tasks = SPEC.tasks

    def __init__(self, settings: SdxlSettings, manager: MemoryManager, ctx: LoadContext) -> None:
        """Register the five model components with ``manager``; nothing is loaded yet.

        Raises:
            ValueError: the preset offers a model this family does not serve (``sdxl.offer``).
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        unknown = [model for model in settings.offer if model not in MODELS]
        if unknown:
            raise ValueError(f"sdxl.offer names {unknown}; this family serves {', '.join(MODELS)}")
        self.settings = settings
        self.manager = manager
        self.ctx = ctx
        self.dtype = torch_dtype(settings.dtype)
        self._lock = threading.Lock()
        self._parts: Parts | None = None
        for name, cls, source in (
            (TEXT_ENCODER, CLIPTextModel, settings.text_encoder),
            (TEXT_ENCODER_2, CLIPTextModelWithProjection, settings.text_encoder_2),
            (UNET, UNet2DConditionModel, settings.unet),
            (REFINER_UNET, UNet2DConditionModel, settings.refiner_unet),
            (VAE, AutoencoderKL, settings.vae),
        ):
            manager.register(name, self._loader(cls, source))

    def component_names(self) -> list[str]:
        """The manager names of the components, in the order a job with the refiner uses them."""
        return [TEXT_ENCODER, TEXT_ENCODER_2, UNET, REFINER_UNET, VAE]

    def _loader(self, cls: type, source: Source) -> Any:
        def load() -> torch.nn.Module:
            module = load_pretrained(cls, source, self.ctx, dtype=self.dtype)
            return module.eval().requires_grad_(False)

        return load

    def parts(self) -> Parts:
        """Tokenizers, scheduler and the weightless VAE; small, loaded once and kept."""
        with self._lock:
            if self._parts is None:
                from diffusers import EulerDiscreteScheduler
                from transformers import CLIPTokenizer

                s = self.settings
                self._parts = Parts(
                    tokenizer=load_pretrained(CLIPTokenizer, s.tokenizer, self.ctx),
                    tokenizer_2=load_pretrained(CLIPTokenizer, s.tokenizer_2, self.ctx),
                    scheduler=load_pretrained(EulerDiscreteScheduler, s.scheduler, self.ctx),
                    vae=weightless_vae(load_pretrained(VaeConfig, s.vae, self.ctx)),
                    device=self.manager.device)
            return self._parts

    # ----- the entry point -----------------------------------------------------------------
    def run(self, task: str, request: SdxlRequest, progress: ProgressFn) -> SdxlResult:
        """Run ``task`` for a validated request, reporting every denoising step to ``progress``.

        Raises:
            UnknownNameError: ``task`` is not one of ``tasks``.
            TypeError: ``request`` is not the task's request type (a programming error).
            InputError: a bad SDXL option, or a refiner hand-over that leaves a model no step.
            Cancelled: raised by ``progress`` when Stop came before the first image was finished.
        """
        if task not in self.tasks:
            raise UnknownNameError(f"Unknown task {task!r} for {self.name}; known tasks: {', '.join(self.tasks)}")
        expected = SdTextToImageRequest if task == TEXT_TO_IMAGE else SdImageRequest
        if not isinstance(request, expected):
            raise TypeError(f"{task} needs {expected.__name__}, got {type(request).__name__}")
        if task != TEXT_TO_IMAGE and (request.mask is None) != (task == IMG2IMG):  # type: ignore[union-attr]
            raise TypeError(f"{task} needs an SdImageRequest {'without' if task == IMG2IMG else 'with'} a mask")
        if request.model not in MODELS:
            raise InputError("model", f"must be one of {', '.join(MODELS)} for SDXL, got {request.model!r}")
        options = parse_options(request.options, self.settings)
        strength = None if task == TEXT_TO_IMAGE else request.strength  # type: ignore[union-attr]
        plan = plan_steps(self.parts().scheduler, request.steps, strength, options.refiner, options.high_noise_frac)
        return self._generate(task, request, options, plan, progress)

    # ----- the job -------------------------------------------------------------------------
    def _generate(self, task: str, request: SdxlRequest, options: SdxlOptions, plan: StepPlan,
                  progress: ProgressFn) -> SdxlResult:
        """Encode the input and the prompt once, then make the images one after another.

        Raises:
            Cancelled: Stop came before the first image was finished. Once one is, Stop ends the
                job with the finished images and a notice that says how many.
        """
        started = time.perf_counter()
        timings: dict[str, float] = {}
        stages = Stages(self.manager, self.parts(), self.dtype, request, options, plan, timings)
        notices = list(getattr(request, "notices", ()))
        notices += [f"{name} cut to {MAX_PROMPT_CHARS} characters" for name in request.truncated]
        if task != TEXT_TO_IMAGE and plan.base == 0:
            notices.append(f"strength {request.strength:g} of {request.steps} steps runs no denoising step: "  # type: ignore[union-attr]
                           "the picture only went through the VAE")
        if plan.refiner:  # left out of the preset's downloads unless it turns the refiner on
            downloads.fetch_component(REFINER_UNET, self.settings.refiner_unet, self.ctx, progress)
        encoded = stages.encode_image() if task != TEXT_TO_IMAGE else None
        # No step, no prompt: a job that only goes through the VAE never loads the text encoders.
        prompt: Prompt | None = stages.encode_prompt(refiner=plan.refiner > 0) if plan.base else None
        notices += prompt.notices if prompt is not None else []
        images: list[Image.Image] = []
        latents: list[torch.Tensor] = []
        total = request.num_images
        for index in range(total):
            seed = image_seed(request.seed, index)
            report = numbered(progress, index, total)
            try:
                generator = torch.Generator("cpu").manual_seed(seed)
                denoised = stages.denoise(task, prompt, encoded, generator, report)
                image = stages.decode(denoised)
                if task == INPAINT:
                    image = vae.overlay(stages.image_processor, request.mask, request.image,  # type: ignore[union-attr]
                                        image, self.settings.mask_blur)
                images.append(image)
                latents.append(denoised.cpu())
                report(DECODE, 1, 1)
            except Cancelled:
                if not images:
                    raise
                notices.append(stopped_notice(len(images), total))
                break
        timings["total"] = time.perf_counter() - started
        info = self._info(task, request, options, plan, images, timings, notices)
        info["vae_float32"] = stages.vae_float32
        logger.info("sdxl %s %dx%d x%d seed %d in %.2f s (%s)", task, request.width, request.height, len(images),
                    request.seed, timings["total"], info["timings"])
        return SdxlResult(images=images, info=info, latents=torch.cat(latents))

    def _info(self, task: str, request: SdxlRequest, options: SdxlOptions, plan: StepPlan,
              images: list[Image.Image], timings: dict[str, float], notices: list[str]) -> dict[str, Any]:
        s = self.settings
        sources = ["unet", "vae", "text_encoder", "text_encoder_2"] + (["refiner_unet"] if plan.refiner else [])
        info: dict[str, Any] = {
            "backend": self.name,
            "task": task,
            **request.as_dict(),
            "options": options.as_dict(),
            "seeds": [image_seed(request.seed, index) for index in range(len(images))],
            "base_steps": plan.base,
            "refiner_steps": plan.refiner,
            "dtype": s.dtype,
            "device": str(self.manager.device),
            **{key: describe_source(getattr(s, key)) for key in sources},
            "timings": {stage: round(seconds, 3) for stage, seconds in timings.items()},
            "notices": notices,
        }
        if task == INPAINT:
            info["mask_blur"] = s.mask_blur
        return info


__all__ = ["DECODE", "IMG2IMG", "INPAINT", "REFINER_UNET", "TEXT_ENCODER", "TEXT_ENCODER_2", "TEXT_TO_IMAGE", "UNET",
           "VAE", "SdxlBackend", "SdxlResult"]
