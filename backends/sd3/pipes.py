"""diffusers' three SD3 pipelines, told which device they compute on, and assembled per stage.

The backend never builds one pipeline holding every component: each stage gets a pipeline made
of just the modules the manager lent it (text encoders for the prompt, transformer for the
denoising), so only one large component needs the device at a time. Building a pipeline object is
cheap: it only registers the modules it is given.

Why subclasses at all: a pipeline works out its device from its modules' parameters (or from
accelerate's hooks). When the manager streams a transformer too big for the budget block by block
(``backends.runtime.offload``), its parameters sit on the CPU between forwards, and the stock
pipelines would then create their latents and timesteps on the CPU and feed them to blocks on
the GPU. ``run_on`` states the device instead; everything else is the stock pipelines' code.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusion3Pipeline,
)

#: The components every SD3 pipeline's constructor takes, all None unless a stage lends them.
_SLOTS = ("transformer", "scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
          "text_encoder_3", "tokenizer_3")


class _RunsOn:
    """Mixin: the pipeline computes on ``run_on`` whatever its modules' tensors say (see above)."""

    run_on: torch.device | None = None

    @property
    def _execution_device(self) -> torch.device:
        return self.run_on if self.run_on is not None else super()._execution_device  # type: ignore[misc]


class TextToImage(_RunsOn, StableDiffusion3Pipeline):
    """``StableDiffusion3Pipeline`` on a stated device."""


class Img2Img(_RunsOn, StableDiffusion3Img2ImgPipeline):
    """``StableDiffusion3Img2ImgPipeline`` on a stated device."""


class Inpaint(_RunsOn, StableDiffusion3InpaintPipeline):
    """``StableDiffusion3InpaintPipeline`` on a stated device."""


#: The pipeline class of each task.
PIPELINES: dict[str, type[StableDiffusion3Pipeline]] = {
    "sd3_text_to_image": TextToImage, "sd3_img2img": Img2Img, "sd3_inpaint": Inpaint,
}


def assemble(cls: type[Any], device: torch.device, **modules: Any) -> Any:
    """A pipeline of class ``cls`` holding only ``modules`` (the rest None), computing on ``device``.

    Raises:
        TypeError: a module name that no SD3 pipeline takes (a programming error).
    """
    unknown = sorted(set(modules) - set(_SLOTS))
    if unknown:
        raise TypeError(f"SD3 pipelines take no {', '.join(unknown)}")
    pipe = cls(**{slot: modules.get(slot) for slot in _SLOTS})
    pipe.run_on = torch.device(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
