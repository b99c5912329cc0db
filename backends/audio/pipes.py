"""diffusers' ``StableAudioPipeline``, assembled for the denoising stage from what the manager lends.

Three things the pipeline would infer that the manager knows better, or that need mending:

- **The compute device.** A pipeline infers it from where its modules' weights are
  (``DiffusionPipeline._execution_device``). A component the manager streams block by block
  keeps its weights in RAM between blocks, and the weightless VAE below lives on the meta
  device, so ``AudioPipeline`` is told the manager's device instead.
- **The VAE's config.** ``__call__`` reads the VAE's ``hop_length``, ``sampling_rate`` and
  ``audio_channels`` even with ``output_type="latent"``, where it never runs it; the denoising
  stage gets an ``AutoencoderOobleck`` built on the meta device from the real config
  (``weightless_vae``), so the VAE's weights need not be on the device beside the DiT.
- **Weight norm.** Every convolution of the Oobleck VAE is wrapped in ``torch.nn.utils.weight_norm``
  (diffusers 0.42.1, torch 2.13), whose forward pre-hook recomputes ``weight`` from ``weight_g``
  and ``weight_v`` before each call and keeps the result as a plain attribute. On a GPU that
  attribute stays on the device after the manager evicts the VAE (the manager moves parameters
  and buffers, and this is neither): 156 MB of float16 the budget never sees. The recomputation
  also costs a copy of the decoder's weights per decode, and under block streaming the hook runs
  before the weights are uploaded, so it would compute them on the CPU. ``fold_weight_norm``
  computes each weight once at load, with the same ``torch._weight_norm`` in the same dtype, so
  the decode gives the same samples (a test holds it to the unfolded VAE's bit for bit).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderOobleck, StableAudioDiTModel, StableAudioPipeline


class AudioPipeline(StableAudioPipeline):
    """``StableAudioPipeline`` on the manager's device, whatever device its weights are on now."""

    studio_device: torch.device = torch.device("cpu")

    @property
    def _execution_device(self) -> torch.device:
        return self.studio_device


def assemble(device: torch.device, *, transformer: torch.nn.Module, projection_model: torch.nn.Module,
             vae: AutoencoderOobleck, scheduler: Any, tokenizer: Any) -> AudioPipeline:
    """The denoising stage's pipeline: no text encoder (the prompt comes as T5 states), the
    weightless VAE, and a scheduler fresh for this job (it keeps a step index and its noise)."""
    pipe = AudioPipeline(vae=vae, text_encoder=None, projection_model=projection_model, tokenizer=tokenizer,
                         transformer=transformer, scheduler=scheduler)
    pipe.studio_device = torch.device(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class VaeConfig:
    """Reads an ``AutoencoderOobleck``'s config, and no weights, through ``load_pretrained``'s one path."""

    @classmethod
    def from_pretrained(cls, target: str, **options: Any) -> dict[str, Any]:
        return dict(AutoencoderOobleck.load_config(target, **options))


class TransformerConfig:
    """Reads a ``StableAudioDiTModel``'s config, and no weights (its window, for the length limit)."""

    @classmethod
    def from_pretrained(cls, target: str, **options: Any) -> dict[str, Any]:
        return dict(StableAudioDiTModel.load_config(target, **options))


def weightless_vae(config: dict[str, Any]) -> AutoencoderOobleck:
    """An ``AutoencoderOobleck`` with the real config and no memory behind its weights (meta device)."""
    with torch.device("meta"):
        return AutoencoderOobleck.from_config(config)


def fold_weight_norm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every weight-normed convolution's ``weight_g``/``weight_v`` with the weight they make.

    See the module docstring for why. ``remove_weight_norm`` computes the weight with the hook's own
    ``compute_weight`` and makes it a parameter again, so the manager places, evicts and streams it
    like any other.
    """
    for sub in module.modules():
        if hasattr(sub, "weight_g") and hasattr(sub, "weight_v"):
            torch.nn.utils.remove_weight_norm(sub)
    return module
