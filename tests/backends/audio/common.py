"""What the Stable Audio Open tests share: the tiny settings, a request builder, the stock pipeline on our modules."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from backends.audio.backend import PROJECTION, TRANSFORMER, AudioBackend
from backends.audio.requests import AudioRequest
from backends.audio.spec import AudioSettings
from backends.audio.text import TEXT_ENCODER
from backends.families import load_preset
from backends.runtime.loading import resolve_repo

PROMPT = "a dog barking in the rain"
NEGATIVE = "Low quality."
#: A clip length whose sample count is whole (66,150), so the pipeline's ``int()`` and our ``round()`` agree.
SECONDS = 1.5


def tiny_settings(**changes: Any) -> AudioSettings:
    """The tiny preset's audio section, with ``changes``."""
    settings = load_preset("tiny").settings.audio  # type: ignore[attr-defined]
    return dataclasses.replace(settings, **changes)


def job(**changes: Any) -> AudioRequest:
    """A guided 1.5 s job, 4 steps, seed 7."""
    return dataclasses.replace(AudioRequest.build(PROMPT, NEGATIVE, SECONDS, 4, 7.0, 7), **changes)


def recorder() -> tuple[list[tuple[str, int, int]], Callable[[str, int, int], None]]:
    reports: list[tuple[str, int, int]] = []
    return reports, lambda stage, step, total: reports.append((stage, step, total))


def stock_pipeline(backend: AudioBackend) -> Any:
    """The stock ``StableAudioPipeline`` of the backend's own T5, projection model and DiT, with the VAE
    loaded afresh, unchanged (weight norm and all), and a fresh scheduler.

    On the CPU device ``use`` moves nothing, so the modules can be held outside the contexts.
    """
    from diffusers import AutoencoderOobleck, CosineDPMSolverMultistepScheduler, StableAudioPipeline

    parts = backend.parts()
    modules = {}
    for name in (TEXT_ENCODER, PROJECTION, TRANSFORMER):
        with backend.manager.use(name) as module:
            modules[name] = module
    source = backend.settings.vae
    vae = AutoencoderOobleck.from_pretrained(resolve_repo(source, backend.ctx), subfolder=source.subfolder,
                                             dtype=backend.dtype).eval()
    pipe = StableAudioPipeline(vae=vae, text_encoder=modules[TEXT_ENCODER], projection_model=modules[PROJECTION],
                               tokenizer=parts.tokenizer, transformer=modules[TRANSFORMER],
                               scheduler=CosineDPMSolverMultistepScheduler.from_config(parts.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_run(pipe: Any, request: AudioRequest, output_type: str) -> torch.Tensor:
    """The stock pipeline's ``audios`` for ``request`` (its one clip, or its latents), as the model card calls it."""
    return pipe(request.prompt, negative_prompt=request.negative_prompt or None, audio_end_in_s=request.seconds,
                num_inference_steps=request.steps, guidance_scale=request.guidance,
                generator=torch.Generator("cpu").manual_seed(request.seed), output_type=output_type).audios
