"""diffusers' SDXL pipelines, assembled per stage from the modules the memory manager lends.

We run ``StableDiffusionXLPipeline``, ``StableDiffusionXLImg2ImgPipeline`` and
``StableDiffusionXLInpaintPipeline`` of diffusers 0.42.1 rather than a loop of our own, but never
with all their components at once: a pipeline object is made for one stage and holds only what
that stage uses. The text stage's pipeline holds the two text encoders and runs ``encode_prompt``;
a denoising stage's holds one UNet and gets the prompt embeddings, and returns latents
(``output_type="latent"``); the VAE runs outside (``backends.sdxl.vae``). Building a pipeline
object costs about a millisecond.

Two things the pipelines infer that the manager knows better:

- **The VAE's config.** Every pipeline reads it (the latent scale factor, latent statistics,
  channel count) even when it never runs the VAE, so each gets a weightless VAE built on the
  meta device from the real config (``weightless_vae``).
- **The compute device.** A pipeline infers it from where its modules' weights are
  (``DiffusionPipeline._execution_device``), and a text encoder's inputs go where its weights
  are (``get_module_execution_device``). A component the manager streams block by block keeps
  its weights in RAM between blocks, so both would say "cpu" while the blocks compute on the
  GPU. The pipelines here are told the manager's device (``ManagedDevice``), and a text encoder's
  inputs are moved there on the way in (``inputs_on``).

The repos' ``model_index.json`` settings that change the math are passed as the repos give them:
the base zeroes the negative embeddings of an empty negative prompt; the refiner encodes the empty
prompt and adds an aesthetic score to its time ids.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from backends.runtime.progress import ProgressFn

#: ``model_index.json`` of stabilityai/stable-diffusion-xl-base-1.0 (``requires_aesthetics_score``
#: is absent there, i.e. False).
BASE_CONFIG: dict[str, bool] = {"force_zeros_for_empty_prompt": True}
#: ``model_index.json`` of stabilityai/stable-diffusion-xl-refiner-1.0.
REFINER_CONFIG: dict[str, bool] = {"force_zeros_for_empty_prompt": False, "requires_aesthetics_score": True}


class ManagedDevice:
    """Mixin: the pipeline computes on the device it is told, whatever device its weights are on now."""

    studio_device: torch.device = torch.device("cpu")

    @property
    def _execution_device(self) -> torch.device:
        return self.studio_device


class TextToImage(ManagedDevice, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` on the manager's device."""


class ImageToImage(ManagedDevice, StableDiffusionXLImg2ImgPipeline):
    """``StableDiffusionXLImg2ImgPipeline`` on the manager's device (img2img and the refiner)."""


class Inpaint(ManagedDevice, StableDiffusionXLInpaintPipeline):
    """``StableDiffusionXLInpaintPipeline`` on the manager's device."""


class VaeConfig:
    """Reads an ``AutoencoderKL``'s config, and no weights, through ``load_pretrained``'s one path."""

    @classmethod
    def from_pretrained(cls, target: str, **options: Any) -> dict[str, Any]:
        return AutoencoderKL.load_config(target, **options)


def weightless_vae(config: dict[str, Any]) -> AutoencoderKL:
    """An ``AutoencoderKL`` with the real config and no memory behind its weights (meta device)."""
    with torch.device("meta"):
        return AutoencoderKL.from_config(config)


@dataclass(frozen=True)
class Parts:
    """The small, shared pieces every stage's pipeline gets: loaded once, never lent."""

    tokenizer: Any
    tokenizer_2: Any
    #: Never stepped: each denoising pipeline gets a fresh copy (they keep a step index).
    scheduler: Any
    #: The weightless VAE (``weightless_vae``): its config, for the pipelines.
    vae: AutoencoderKL
    device: torch.device

    def fresh_scheduler(self) -> Any:
        """A copy of the pristine scheduler: what ``from_config`` would build, in a fifth of its 2.4 ms."""
        return copy.deepcopy(self.scheduler)


def make(cls: type, parts: Parts, *, refiner: bool, unet: torch.nn.Module | None = None,
         text_encoder: torch.nn.Module | None = None, text_encoder_2: torch.nn.Module | None = None) -> Any:
    """A pipeline of class ``cls`` holding only the given modules.

    Args:
        refiner: the refiner's ``model_index.json`` settings and tokenizer (bigG's only) instead of
            the base's.
    """
    config = REFINER_CONFIG if refiner else BASE_CONFIG
    if cls is TextToImage:
        config = {key: value for key, value in config.items() if key != "requires_aesthetics_score"}
    pipe = cls(vae=parts.vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
               tokenizer=None if refiner else parts.tokenizer, tokenizer_2=parts.tokenizer_2, unet=unet,
               # The text stage never steps a scheduler, so it may hold the shared one.
               scheduler=parts.fresh_scheduler() if unet is not None else parts.scheduler,
               add_watermarker=False, **config)
    pipe.studio_device = parts.device
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def inputs_on(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """While inside, ``module``'s tensor inputs are moved to ``device`` before its forward runs."""

    def move(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        def to(value: Any) -> Any:
            return value.to(device) if isinstance(value, torch.Tensor) else value

        return tuple(to(arg) for arg in args), {key: to(value) for key, value in kwargs.items()}

    handle = module.register_forward_pre_hook(move, with_kwargs=True, prepend=True)
    try:
        yield
    finally:
        handle.remove()


def step_reporter(progress: ProgressFn, label: str) -> Callable[..., dict[str, Any]]:
    """A ``callback_on_step_end`` that reports each finished step; Stop raises from ``progress``."""

    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        progress(label, step + 1, pipe.num_timesteps)
        return {}

    return on_step_end
