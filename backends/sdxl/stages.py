"""One SDXL job's stages, each with the components the memory manager lends it for that stage only.

``Stages`` is made per job by ``backends.sdxl.backend.SdxlBackend`` (this module stands below it):
VAE encode (img2img and inpaint), prompt encode (both text encoders at once: ``encode_prompt``
reads them in one call; at 0.8B together they are a third of the UNet), base denoise, refiner
denoise, VAE decode. Each stage borrows its modules with ``manager.use`` and a working-memory
estimate from ``backends.sdxl.memory``, builds the stage's pipeline around them
(``backends.sdxl.pipelines.make``) and lets them go, so with a small budget the manager keeps one
big component on the device at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from backends.runtime.progress import ProgressFn
from backends.sdxl import memory, vae
from backends.sdxl.pipelines import ImageToImage, Inpaint, TextToImage, inputs_on, make, step_reporter
from backends.sdxl.spec import SPEC

if TYPE_CHECKING:
    from PIL import Image

    from backends.runtime.memory import MemoryManager
    from backends.sdxl.pipelines import Parts
    from backends.sdxl.requests import SdxlOptions, SdxlRequest
    from backends.sdxl.steps import StepPlan

TEXT_TO_IMAGE, IMG2IMG, INPAINT = SPEC.tasks
TEXT_ENCODER = "sdxl.text_encoder"
TEXT_ENCODER_2 = "sdxl.text_encoder_2"
UNET = "sdxl.unet"
REFINER_UNET = "sdxl.refiner_unet"
VAE = "sdxl.vae"
BASE = "Base (denoising)"
REFINER = "Refiner (denoising)"
DECODE = "VAE (decode)"


@dataclass
class Embeds:
    """One model's prompt embeddings (the negatives only with guidance), on the device."""

    prompt: torch.Tensor
    pooled: torch.Tensor
    negative: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None

    def kwargs(self) -> dict[str, torch.Tensor | None]:
        """The pipelines' keyword arguments for pre-computed embeddings."""
        return {"prompt_embeds": self.prompt, "pooled_prompt_embeds": self.pooled,
                "negative_prompt_embeds": self.negative, "negative_pooled_prompt_embeds": self.negative_pooled}


@dataclass
class Prompt:
    """The job's prompt, encoded for the base and (with the refiner) for the refiner."""

    base: Embeds
    refiner: Embeds | None = None
    notices: list[str] = field(default_factory=list)


class Stages:
    """The stages of one job; ``timings`` collects each stage's seconds (summed over the images)."""

    def __init__(self, manager: MemoryManager, parts: Parts, dtype: torch.dtype, request: SdxlRequest,
                 options: SdxlOptions, plan: StepPlan, timings: dict[str, float]) -> None:
        """Args:
            manager: lends the components (``manager.use``).
            parts: the tokenizers, scheduler and weightless VAE (``SdxlBackend.parts``).
            dtype: the weights' dtype, also the prompt embeddings' and the latents'.
        """
        from diffusers.image_processor import VaeImageProcessor

        self.manager = manager
        self.device = manager.device
        self.dtype = dtype
        self.parts = parts
        self.request = request
        self.options = options
        self.plan = plan
        self.timings = timings
        self.guided = request.guidance > 1
        #: The pipelines' own picture processing (the same config they build it with).
        self.image_processor = VaeImageProcessor(vae_scale_factor=2 ** (len(self.parts.vae.config.block_out_channels)
                                                                        - 1))
        #: Whether the decode ran on float32 weights (``vae.decode_upcast``); None before a decode.
        self.vae_float32: bool | None = None

    def _timed(self, key: str, started: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - started

    # ----- encoders --------------------------------------------------------------------------
    def encode_image(self) -> Any:
        """The input picture's latent distribution (img2img, inpaint); each image samples its own."""
        started = time.perf_counter()
        request = self.request
        if request.mask is None:  # type: ignore[union-attr]
            pixels = self.image_processor.preprocess(request.image)  # type: ignore[union-attr]
        else:  # the inpaint pipeline sizes explicitly and holds the picture in float32
            pixels = self.image_processor.preprocess(request.image, height=request.height,  # type: ignore[union-attr]
                                                     width=request.width).to(torch.float32)

        def need(module: torch.nn.Module) -> int:
            return memory.vae_encode_bytes(request.width, request.height, module, vae.encode_upcast(module))

        with self.manager.use(VAE, need) as module, torch.inference_mode():
            encoded = vae.encode(module, pixels, self.dtype, self.device)
        self._timed("vae_encode", started)
        return encoded

    def encode_prompt(self, refiner: bool) -> Prompt:
        """Both text encoders at once for the base; bigG alone again for the refiner, while it is lent."""
        started = time.perf_counter()
        request = self.request

        def need(module: torch.nn.Module) -> int:
            return memory.text_working_bytes(module.config, memory.dtype_size(module))

        arguments = dict(prompt=request.prompt, device=self.device, num_images_per_prompt=1,
                         do_classifier_free_guidance=self.guided, negative_prompt=request.negative_prompt or None)
        with self.manager.use(TEXT_ENCODER, need) as encoder, self.manager.use(TEXT_ENCODER_2, need) as encoder_2, \
                inputs_on(encoder, self.device), inputs_on(encoder_2, self.device), torch.inference_mode():
            pipe = make(TextToImage, self.parts, refiner=False, text_encoder=encoder, text_encoder_2=encoder_2)
            prompt = Prompt(base=Embeds(*_reordered(pipe.encode_prompt(**arguments))))
            if refiner:
                pipe = make(ImageToImage, self.parts, refiner=True, text_encoder_2=encoder_2)
                prompt.refiner = Embeds(*_reordered(pipe.encode_prompt(**arguments)))
        prompt.notices = self._truncations()
        self._timed("text_encoder", started)
        return prompt

    def _truncations(self) -> list[str]:
        """What CLIP cut (both tokenizers share one vocabulary; ``tokenizer_2`` serves both models)."""
        tokenizer = self.parts.tokenizer_2
        texts = [("prompt", self.request.prompt)]
        if self.guided and self.request.negative_prompt:
            texts.append(("negative prompt", self.request.negative_prompt))
        notices = []
        for label, text in texts:
            given = len(tokenizer(text, verbose=False).input_ids)
            if given > tokenizer.model_max_length:
                notices.append(f"{label} truncated to {tokenizer.model_max_length} tokens ({given} given)")
        return notices

    # ----- denoising ---------------------------------------------------------------------------
    def denoise(self, task: str, prompt: Prompt | None, encoded: Any, generator: torch.Generator,
                progress: ProgressFn) -> torch.Tensor:
        """One image's latents: the base's steps, then the refiner's when the plan has any.

        ``prompt`` is None only when the plan has no step (img2img at a strength too low for one):
        the latents are then the input's own.
        """
        request, frac = self.request, self.options.high_noise_frac
        end = {"denoising_end": frac} if self.plan.refiner else {}
        size = {"width": request.width, "height": request.height}
        inpaint = {"mask_image": request.mask, **size} if task == INPAINT else {}  # type: ignore[union-attr]
        if task == TEXT_TO_IMAGE:
            assert prompt is not None
            latents = self._unet(UNET, TextToImage, False, prompt.base, generator, progress, BASE, **size, **end)
        else:
            latents = vae.scaled_sample(encoded, self.parts.vae.config, self.dtype, generator,
                                        use_stats=task == IMG2IMG)
            if self.plan.base:
                assert prompt is not None
                latents = self._unet(UNET, Inpaint if task == INPAINT else ImageToImage, False, prompt.base, generator,
                                     progress, BASE, image=latents, strength=request.strength,  # type: ignore[union-attr]
                                     **inpaint, **end)
                if task == INPAINT and self.plan.refiner:
                    skip_masked_image_draw(encoded, generator)
        if self.plan.refiner:
            assert prompt is not None and prompt.refiner is not None
            latents = self._unet(REFINER_UNET, Inpaint if task == INPAINT else ImageToImage, True, prompt.refiner,
                                 generator, progress, REFINER, image=latents, denoising_start=frac, **inpaint)
        return latents

    def _unet(self, name: str, cls: type, refiner: bool, embeds: Embeds, generator: torch.Generator,
              progress: ProgressFn, label: str, **call: Any) -> torch.Tensor:
        started = time.perf_counter()
        request = self.request

        def need(module: torch.nn.Module) -> int:
            return memory.unet_working_bytes(request.width, request.height, module.config, memory.dtype_size(module),
                                             self.guided)

        with self.manager.use(name, need) as unet, torch.inference_mode():
            pipe = make(cls, self.parts, refiner=refiner, unet=unet)
            latents = pipe(**embeds.kwargs(), num_inference_steps=request.steps, guidance_scale=request.guidance,
                           generator=generator, output_type="latent",
                           callback_on_step_end=step_reporter(progress, label), **call).images
        self._timed(name.split(".", 1)[1], started)
        return latents

    # ----- decoding ----------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> Image.Image:
        """Pixels from one image's latents, through the pipelines' own post-processing."""
        started = time.perf_counter()
        request = self.request

        def need(module: torch.nn.Module) -> int:
            return memory.vae_decode_bytes(request.width, request.height, module, vae.decode_upcast(module))

        with self.manager.use(VAE, need) as module, torch.inference_mode():
            self.vae_float32 = vae.decode_upcast(module)
            pixels = vae.decode(module, latents, self.device)
            image = self.image_processor.postprocess(pixels, output_type="pil")[0]
        self._timed("vae_decode", started)
        return image


def skip_masked_image_draw(encoded: Any, generator: torch.Generator) -> None:
    """Advance ``generator`` past the draw the stock inpaint pipeline spends on the masked picture.

    With a 4-channel UNet (SDXL base and refiner), ``StableDiffusionXLInpaintPipeline`` still
    encodes ``image * (mask < 0.5)`` and samples its latents from the job's generator, after the
    start noise, although it never reads them. We skip that encode (the VAE would have to be on the
    device beside the UNet), but a later draw (the refiner's blending noise) must come from the same
    generator state as in the stock pipeline; this sample, taken after the base's call (whose start
    noise comes first), has that draw's shape and dtype. (The scheduler draws nothing more: SDXL's
    Euler scheduler draws noise only with ``s_churn`` > 0.)
    """
    encoded.sample(generator)


def _reordered(embeds: tuple[Any, Any, Any, Any]) -> tuple[Any, Any, Any, Any]:
    """``encode_prompt``'s (prompt, negative, pooled, negative pooled) as ``Embeds``' field order."""
    prompt, negative, pooled, negative_pooled = embeds
    return prompt, pooled, negative, negative_pooled
