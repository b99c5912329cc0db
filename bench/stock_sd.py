"""Stock diffusers SD3.5 and SDXL text-to-image, assembled from the very modules our backends loaded.

Built as the families' fidelity tests build them (``tests/backends/sd3/common.py::stock_pipeline``,
``tests/backends/sdxl/common.py::stock``): ``StableDiffusion3Pipeline`` or
``StableDiffusionXLPipeline`` gets our tokenizers, a fresh scheduler of our config and the
manager's modules, and is called directly, one image per seed as our backends make them (image
``i`` at ``image_seed(seed, i)``, each from its own CPU generator). With the same modules and
seeds both paths give the same latents and the same pixels (``same_latents``, ``same_images``).

Also here, for the image scenarios: the request each SD row runs, the components a model's
text-to-image job uses, and which of them one stage holds at once (for a budget that evicts).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from PIL import Image

from backends.runtime.image_requests import SdTextToImageRequest
from backends.runtime.requests import image_seed
from bench.common import BenchOptions

logger = logging.getLogger(__name__)

#: Real size (CUDA): 1024², the models' own size, at 20 steps: fewer than the model cards' 40
#: (Medium) and 30 (SDXL), since the ratio is per-step overhead and the GPU check is short.
REAL_SIZE, REAL_STEPS = 1024, 20
PROMPT, NEGATIVE = "a red lighthouse on a cliff at dusk", "blurry"


def sd_request(options: BenchOptions, studio: Any, model: str) -> SdTextToImageRequest:
    """The Image tab's request for ``model``: its tiny-preset defaults (256², Medium 4 steps, SDXL 3),
    or for ``--size real`` 1024² at ``REAL_STEPS``; guidance is the model's default (guided)."""
    from backends.sd3.requests import model_defaults
    from backends.sd3.spec import DEFAULTS_KEYS, Sd3Defaults
    from backends.sdxl.spec import SdxlDefaults

    registry = studio.registry
    family = registry.models()[model]
    if options.size == "real":
        defaults = SdxlDefaults() if family == "sdxl" else getattr(Sd3Defaults(), DEFAULTS_KEYS[model])
        width = height = REAL_SIZE
        steps = REAL_STEPS
    else:
        settings = registry.settings(family)
        defaults = settings.defaults if family == "sdxl" else model_defaults(settings, model)
        width, height, steps = defaults.width, defaults.height, defaults.steps
    return SdTextToImageRequest.build(PROMPT, NEGATIVE, width, height, steps, defaults.guidance, 1, 7, model,
                                      offered=list(registry.models()), default_model=registry.default_model())


def describe(request: SdTextToImageRequest) -> dict[str, Any]:
    """The request as a row shows it."""
    keys = ("width", "height", "steps", "guidance", "num_images")
    return {**{key: getattr(request, key) for key in keys}, "options": dict(request.options)}


def _sd3_t5(studio: Any) -> bool:
    """Whether SD3.5's T5 runs on the device (lent by the manager); cpu cannot be compared."""
    placement = studio.registry.backend("sd3").t5
    if placement == "cpu":
        raise ValueError("the stock comparison needs sd3.t5 device or off; the preset runs T5 on the cpu")
    return placement == "device"


def components(studio: Any, model: str) -> list[str]:
    """The manager names a text-to-image job of ``model`` uses, in the order it first uses them."""
    family = studio.registry.models()[model]
    if family == "sdxl":
        from backends.sdxl.stages import TEXT_ENCODER, TEXT_ENCODER_2, UNET, VAE

        return [TEXT_ENCODER, TEXT_ENCODER_2, UNET, VAE]
    from backends.sd3.backend import VAE, transformer_name
    from backends.sd3.text import TEXT_ENCODER, TEXT_ENCODER_2, TEXT_ENCODER_3

    return [TEXT_ENCODER, TEXT_ENCODER_2, *([TEXT_ENCODER_3] if _sd3_t5(studio) else []), transformer_name(model), VAE]


def stages(studio: Any, model: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per stage of the job: the components it holds at once (the backends' nested ``manager.use``),
    and those of them that ask the manager for working memory there.

    SD3.5's denoising holds the VAE beside the transformer (the image pipelines read its config)
    without asking for any; only the transformer's working memory counts there.
    """
    names = components(studio, model)
    text, rest = tuple(names[:2]), names[2:]
    if studio.registry.models()[model] == "sdxl":
        return [(text, text), ((rest[0],),) * 2, ((rest[1],),) * 2]
    *t5, transformer, vae = rest
    return [(text, text), *(((name,),) * 2 for name in t5), ((vae, transformer), (transformer,)), ((vae,),) * 2]


def modules(studio: Any, model: str) -> dict[str, torch.nn.Module]:
    """The loaded modules of ``components`` (after one run of ours), by manager name."""
    return {name: studio.manager.component(name).home.module for name in components(studio, model)}


class StockSd:
    """diffusers' own text-to-image pipeline of an SD model, over the modules our backend loaded."""

    def __init__(self, studio: Any, model: str) -> None:
        """Args:
            studio: the Studio whose backend ran ``model`` once (its modules are loaded).
            model: ``sd3.5-medium`` or ``sdxl`` (any offered model of those families).
        """
        self.family = studio.registry.models()[model]
        backend = studio.registry.backend(self.family)
        found = modules(studio, model)
        self.t5_length: int | None = None
        if self.family == "sdxl":
            self.pipe = self._sdxl(backend, found)
        else:
            from backends.sd3.requests import model_defaults

            self.pipe = self._sd3(backend, found, model)
            self.t5_length = model_defaults(backend.settings, model).max_sequence_length
        self.pipe.set_progress_bar_config(disable=True)

    @staticmethod
    def _sd3(backend: Any, found: dict[str, torch.nn.Module], model: str) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        from backends.sd3.backend import VAE, transformer_name
        from backends.sd3.text import TEXT_ENCODER, TEXT_ENCODER_2, TEXT_ENCODER_3

        tokenizers, scheduler = backend._small_parts()
        t5 = found.get(TEXT_ENCODER_3)
        return StableDiffusion3Pipeline(
            transformer=found[transformer_name(model)], vae=found[VAE],
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler.config),
            text_encoder=found[TEXT_ENCODER], tokenizer=tokenizers.clip_l,
            text_encoder_2=found[TEXT_ENCODER_2], tokenizer_2=tokenizers.clip_g,
            text_encoder_3=t5, tokenizer_3=tokenizers.t5 if t5 is not None else None)

    @staticmethod
    def _sdxl(backend: Any, found: dict[str, torch.nn.Module]) -> Any:
        from diffusers import StableDiffusionXLPipeline

        from backends.sdxl.stages import TEXT_ENCODER, TEXT_ENCODER_2, UNET, VAE

        parts = backend.parts()
        # The base repo's model_index.json: force_zeros_for_empty_prompt, the pipeline's default.
        return StableDiffusionXLPipeline(
            vae=found[VAE], text_encoder=found[TEXT_ENCODER], text_encoder_2=found[TEXT_ENCODER_2],
            tokenizer=parts.tokenizer, tokenizer_2=parts.tokenizer_2, unet=found[UNET],
            scheduler=type(parts.scheduler).from_config(parts.scheduler.config), add_watermarker=False)

    def enable_model_cpu_offload(self, device: torch.device) -> None:
        """Stock offload: each model on the GPU only while it runs. Raises without an accelerator
        (diffusers 0.42: ``RuntimeError ... requires accelerator``), so callers guard it."""
        self.pipe.enable_model_cpu_offload(device=device)

    def remove_offload(self) -> None:
        """Take accelerate's hooks off again, so the modules are plain for whoever runs next."""
        self.pipe.remove_all_hooks()

    def run(self, request: SdTextToImageRequest) -> tuple[torch.Tensor, list[Image.Image]]:
        """One text-to-image: the latents after each image's last step, and the PIL images."""
        kept: list[torch.Tensor] = []

        def keep(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if step + 1 == pipe.num_timesteps:
                kept.append(tensors["latents"].clone())
            return {}

        extra: dict[str, Any] = {}
        if self.t5_length is not None:
            extra["max_sequence_length"] = int(request.options.get("max_sequence_length", self.t5_length))
        images: list[Image.Image] = []
        for index in range(request.num_images):
            images += self.pipe(
                prompt=request.prompt, negative_prompt=request.negative_prompt or None, width=request.width,
                height=request.height, num_inference_steps=request.steps, guidance_scale=request.guidance,
                generator=torch.Generator("cpu").manual_seed(image_seed(request.seed, index)),
                callback_on_step_end=keep, **extra).images
        return torch.cat(kept), images
