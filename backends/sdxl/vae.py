"""The VAE steps SDXL's pipelines take themselves, done here with the VAE the memory manager lends.

Our pipelines denoise only (``output_type="latent"``, see ``backends.sdxl.pipelines``), so that
the VAE is on the device only while it encodes or decodes. These functions redo what diffusers
0.42.1's ``StableDiffusionXL{,Img2Img,Inpaint}Pipeline`` do around the VAE, step for step:

- **Encode** (img2img, inpaint): the picture goes to the prompt's dtype first, then, when the
  VAE's config says ``force_upcast``, to float32 through a float32 VAE, whatever the dtype; the
  latents are a *sample* of the encoder's distribution drawn from the job's generator (before the
  noise), cast back and scaled (img2img also applies ``latents_mean`` / ``latents_std`` when the
  config has them; SDXL's VAE has none).
- **Decode**: float32 when the weights are float16 and ``force_upcast`` is set, else as they are;
  then ``VaeImageProcessor.postprocess``.

Where the pipelines cast the VAE module itself (``vae.to(torch.float32)``) and back, we run it on
float32 copies of its weights (``torch.func.functional_call``) and leave the manager's module as
it is: the manager's CPU copies and its block streaming rely on each tensor keeping its dtype.
Inpaint's overlay (the input's pixels laid back outside the mask) is diffusers' own
``VaeImageProcessor.blur`` and ``apply_overlay``, as A1111 does it.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import torch

from backends.runtime.image_requests import MASK_THRESHOLD
from backends.runtime.loading import weights_dtype

if TYPE_CHECKING:
    from diffusers import AutoencoderKL
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from PIL import Image


class _Method(torch.nn.Module):
    """Calls one method of a module, so ``functional_call`` can run it on other weights."""

    def __init__(self, module: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.inner = module
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, self.method)(*args, **kwargs)


def float32_call(module: torch.nn.Module, method: str, device: torch.device, *args: Any, **kwargs: Any) -> Any:
    """``module.<method>(*args)`` on float32 copies of its weights on ``device``; its own tensors stay as
    they are. The copies take 4 bytes a parameter while the call runs (``memory.vae_weights_float32``)."""
    weights = {f"inner.{name}": tensor.to(device, torch.float32)
               for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers())}
    return torch.func.functional_call(_Method(module, method), weights, args, kwargs)


def encode_upcast(vae: AutoencoderKL) -> bool:
    """Whether the pipelines encode in float32: whenever the config says ``force_upcast``."""
    return bool(vae.config.force_upcast)


def decode_upcast(vae: AutoencoderKL) -> bool:
    """Whether the pipelines decode in float32: float16 weights with ``force_upcast`` (bf16 has the range)."""
    return weights_dtype(vae) == torch.float16 and bool(vae.config.force_upcast)


def encode(vae: AutoencoderKL, pixels: torch.Tensor, dtype: torch.dtype,
           device: torch.device) -> DiagonalGaussianDistribution:
    """The encoder's latent distribution of ``pixels`` ((1, 3, H, W) in [-1, 1], float32).

    Sampling is left to the caller (``scaled_sample``), one draw per image of the job, each from
    that image's generator, as the pipelines draw it.
    """
    image = pixels.to(device=device, dtype=dtype)  # the pipelines round to the prompt dtype first
    if not encode_upcast(vae):
        return vae.encode(image).latent_dist
    image = image.float()
    if weights_dtype(vae) == torch.float32:
        return vae.encode(image).latent_dist
    return float32_call(vae, "encode", device, image).latent_dist


def scaled_sample(distribution: DiagonalGaussianDistribution, config: Any, dtype: torch.dtype,
                  generator: torch.Generator, use_stats: bool) -> torch.Tensor:
    """One draw of the image latents, cast to ``dtype`` and scaled as the UNet expects them.

    Args:
        config: the VAE config (``scaling_factor``, and ``latents_mean`` / ``latents_std`` if any).
        use_stats: img2img normalises with the latent statistics when the config has them; the
            inpaint pipeline scales only (diffusers 0.42.1). SDXL's VAE has none, so both agree.
    """
    latents = distribution.sample(generator).to(dtype)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if use_stats and mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, dtype)
        std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, dtype)
        return (latents - mean) * config.scaling_factor / std
    return config.scaling_factor * latents


def decode(vae: AutoencoderKL, latents: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Decoded pixels in [-1, 1] (as the pipelines decode latents after denoising)."""
    upcast = decode_upcast(vae)
    if upcast:
        latents = latents.to(torch.float32)
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    latents = latents.to(device)
    if upcast:
        return float32_call(vae, "decode", device, latents, return_dict=False)[0]
    return vae.decode(latents, return_dict=False)[0]


def overlay(processor: Any, mask: Image.Image, original: Image.Image, result: Image.Image,
            blur: int) -> Image.Image:
    """``result`` with ``original``'s pixels wherever the mask keeps them, through a feathered seam.

    The mask is binarised at ``MASK_THRESHOLD`` (as the pipeline's mask processor does) and then
    blurred by ``blur`` pixels (``VaeImageProcessor.blur``), so the seam reaches about three times
    that far to either side of the mask's edge; beyond it, kept pixels are the input's exactly.

    Args:
        processor: the pipeline's ``VaeImageProcessor`` (its ``apply_overlay``).
        mask: L-mode, white = repainted.
        blur: Gaussian radius in pixels; 0 lays the input back with a hard edge.
    """
    from diffusers.image_processor import VaeImageProcessor

    hard = mask.convert("L").point(lambda value: 255 if value >= MASK_THRESHOLD else 0)
    soft = VaeImageProcessor.blur(hard, blur) if blur > 0 else hard
    return processor.apply_overlay(soft, original.convert("RGB"), result)
