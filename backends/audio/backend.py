"""Stable Audio Open 1.0: text to 44.1 kHz stereo, up to 47 s.

The sampling is diffusers' own ``StableAudioPipeline`` (0.42.1). What this file adds is the memory
manager's work around it, so that only one large component needs the device at a time:

1. the prompt: T5 borrowed alone, giving its states and masks (``backends.audio.text`` says why
   the pipeline is split after T5 rather than after ``encode_prompt``);
2. the DiT denoises, with the projection model beside it: the pipeline's ``__call__`` with those
   states, ``output_type="latent"``, a CPU generator seeded with the request's seed, and a
   weightless VAE for the config it reads (``backends.audio.pipes``). ``encode_prompt`` projects
   the states, ``encode_duration`` encodes the start and end seconds, ``prepare_latents`` draws
   the noise, and every step is the pipeline's; its ``callback`` reports each step, and Stop
   raises there;
3. the VAE decodes the whole window and the clip is cut from its start, as ``__call__`` cuts
   ``audio[:, :, waveform_start:waveform_end]``; here the end is ``round(seconds * rate)``
   rather than the pipeline's ``int()``, which is a sample short wherever the product lands a hair
   under a whole number (0.7 s: 30869.999999999996).

The audio comes back as float32 in [-1, 1]: the decoder's samples clipped there, as
stable-audio-tools' own interface clips before writing its file (the info says when any were).
With the same modules and seed, the latents and the samples equal the stock pipeline's.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from backends.audio.memory import decode_samples, projection_bytes, transformer_bytes, vae_decode_bytes
from backends.audio.pipes import TransformerConfig, VaeConfig, assemble, fold_weight_norm, weightless_vae
from backends.audio.requests import AudioRequest
from backends.audio.spec import SPEC, AudioSettings
from backends.audio.text import TEXT_ENCODER, TextStates, encode
from backends.runtime.errors import InputError, UnknownNameError
from backends.runtime.loading import (
    LoadContext,
    Source,
    describe_source,
    element_size,
    load_pretrained,
    torch_dtype,
    weights_dtype,
)
from backends.runtime.progress import ProgressFn
from backends.runtime.requests import MAX_PROMPT_CHARS

if TYPE_CHECKING:
    from backends.runtime.memory import MemoryManager

logger = logging.getLogger(__name__)

PROJECTION = "audio.projection_model"
TRANSFORMER = "audio.transformer"
VAE = "audio.vae"
DENOISE = "Stable Audio denoising"
#: Settings keys shown in the info as the job's sources.
_SOURCES = ("text_encoder", "projection_model", "transformer", "vae")


@dataclass
class AudioResult:
    """What one text-to-audio job gives back."""

    #: The clip, float32 (channels, samples) in [-1, 1]: ``round(seconds * sample_rate)`` samples.
    audio: np.ndarray
    #: Samples per second (the VAE config's ``sampling_rate``: 44100).
    sample_rate: int
    #: JSON-able metadata: the request, ``seed``, dtype, device, sources, sizes, timings, notices.
    info: dict[str, Any]
    #: The latents the VAE decoded, (1, latent channels, window frames), on the CPU.
    latents: torch.Tensor


@dataclass(frozen=True)
class _Parts:
    """The small pieces every job uses: loaded once, never lent."""

    tokenizer: Any
    #: Never stepped: each job's pipeline gets a fresh copy (it keeps a step index and its noise).
    scheduler: Any
    #: The weightless VAE (``pipes.weightless_vae``): its config, for the denoising stage.
    vae: Any
    #: The VAE's samples per second and per latent frame, and the DiT's window in latent frames.
    sample_rate: int
    hop_length: int
    window: int

    @property
    def max_seconds(self) -> float:
        """The longest clip the model makes: its whole window."""
        return self.window * self.hop_length / self.sample_rate


class AudioBackend:
    """Stable Audio Open on top of the memory manager; one instance serves every request."""

    name = SPEC.name
    tasks = SPEC.tasks

    def __init__(self, settings: AudioSettings, manager: MemoryManager, ctx: LoadContext) -> None:
        """Register the four model components with ``manager``; nothing is loaded yet."""
        from diffusers import AutoencoderOobleck, StableAudioDiTModel, StableAudioProjectionModel
        from transformers import T5EncoderModel

        self.settings, self.manager, self.ctx = settings, manager, ctx
        self.dtype = torch_dtype(settings.dtype)
        self._lock = threading.Lock()
        self._parts: _Parts | None = None
        self._names = [TEXT_ENCODER, PROJECTION, TRANSFORMER, VAE]
        for name, cls, source, prepare in (
            (TEXT_ENCODER, T5EncoderModel, settings.text_encoder, None),
            (PROJECTION, StableAudioProjectionModel, settings.projection_model, None),
            (TRANSFORMER, StableAudioDiTModel, settings.transformer, None),
            (VAE, AutoencoderOobleck, settings.vae, fold_weight_norm),
        ):
            manager.register(name, self._loader(cls, source, prepare))

    def component_names(self) -> list[str]:
        """The manager names of the components, in the order a job uses them."""
        return list(self._names)

    def _loader(self, cls: type, source: Source,
                prepare: Callable[[torch.nn.Module], torch.nn.Module] | None) -> Callable[[], torch.nn.Module]:
        def load() -> torch.nn.Module:
            module = load_pretrained(cls, source, self.ctx, dtype=self.dtype)
            if prepare is not None:
                module = prepare(module)
            return module.eval().requires_grad_(False)

        return load

    def parts(self) -> _Parts:
        """Tokenizer, scheduler, the weightless VAE and the window; small, loaded once and kept."""
        with self._lock:
            if self._parts is None:
                from diffusers import CosineDPMSolverMultistepScheduler
                from transformers import T5TokenizerFast

                s = self.settings
                vae_config = load_pretrained(VaeConfig, s.vae, self.ctx)
                transformer_config = load_pretrained(TransformerConfig, s.transformer, self.ctx)
                vae = weightless_vae(vae_config)
                self._parts = _Parts(
                    tokenizer=load_pretrained(T5TokenizerFast, s.tokenizer, self.ctx),
                    scheduler=load_pretrained(CosineDPMSolverMultistepScheduler, s.scheduler, self.ctx),
                    vae=vae, sample_rate=int(vae.config.sampling_rate), hop_length=int(vae.hop_length),
                    window=int(transformer_config["sample_size"]))
            return self._parts

    # ----- the job -------------------------------------------------------------------------
    def run(self, task: str, request: AudioRequest, progress: ProgressFn) -> AudioResult:
        """Make the clip ``request`` asks for, reporting every denoising step to ``progress``.

        Raises:
            UnknownNameError: ``task`` is not ``text_to_audio``.
            TypeError: ``request`` is not an ``AudioRequest`` (a programming error).
            InputError: ``seconds`` is longer than this model's window.
            Cancelled: Stop was pressed (raised from ``progress`` at the next step).
        """
        if task not in self.tasks:
            raise UnknownNameError(f"Unknown task {task!r} for {self.name}; known tasks: {', '.join(self.tasks)}")
        if not isinstance(request, AudioRequest):
            raise TypeError(f"{task} needs AudioRequest, got {type(request).__name__}")
        parts = self.parts()
        if request.seconds > parts.max_seconds:
            raise InputError("seconds", f"must be at most {parts.max_seconds:g} for this model "
                                        f"(its whole window), got {request.seconds:g}")
        started = time.perf_counter()
        timings: dict[str, float] = {}
        notices = list(request.notices) + [f"{name} cut to {MAX_PROMPT_CHARS} characters" for name in request.truncated]
        negative = request.negative_prompt if request.guided and request.negative_prompt else None
        text = encode(self.manager, parts.tokenizer, request.prompt, negative, timings)
        notices += text.notices
        generator = torch.Generator("cpu").manual_seed(request.seed)
        latents = self._denoise(request, parts, text, generator, progress, timings)
        audio, clipped = self._decode(request, parts, latents, timings)
        if clipped:
            notices.append(f"{clipped} samples beyond [-1, 1] were clipped")
        timings["total"] = time.perf_counter() - started
        info = self._info(task, request, parts, audio, latents, timings, notices)
        logger.info("audio %s %.2f s, %d steps, seed %d in %.2f s (%s)", task, request.seconds, request.steps,
                    request.seed, timings["total"], info["timings"])
        return AudioResult(audio=audio, sample_rate=parts.sample_rate, info=info, latents=latents)

    def _denoise(self, request: AudioRequest, parts: _Parts, text: TextStates, generator: torch.Generator,
                 progress: ProgressFn, timings: dict[str, float]) -> torch.Tensor:
        """The stock pipeline's ``__call__`` on the borrowed DiT and projection model; returns the latents."""
        from diffusers import CosineDPMSolverMultistepScheduler

        started = time.perf_counter()
        tokens = text.embeds.shape[1] + 2  # T5's tokens, then the start and end seconds

        def projection_need(module: torch.nn.Module) -> int:
            return projection_bytes(module.config, element_size(module), tokens, request.guided)

        def transformer_need(module: torch.nn.Module) -> int:
            return transformer_bytes(module.config, element_size(module), request.guided, tokens)

        def step_done(step: int, timestep: Any, latents: torch.Tensor) -> None:
            progress(DENOISE, step + 1, request.steps)

        with self.manager.use(PROJECTION, projection_need) as projection, \
                self.manager.use(TRANSFORMER, transformer_need) as transformer, torch.inference_mode():
            pipe = assemble(self.manager.device, transformer=transformer, projection_model=projection, vae=parts.vae,
                            scheduler=CosineDPMSolverMultistepScheduler.from_config(parts.scheduler.config),
                            tokenizer=parts.tokenizer)
            latents = pipe(**text.pipeline_arguments(), audio_end_in_s=request.seconds, audio_start_in_s=0.0,
                           num_inference_steps=request.steps, guidance_scale=request.guidance,
                           generator=generator, output_type="latent", callback=step_done, callback_steps=1).audios
        timings["transformer"] = timings.get("transformer", 0.0) + time.perf_counter() - started
        return latents.cpu()

    def _decode(self, request: AudioRequest, parts: _Parts, latents: torch.Tensor,
                timings: dict[str, float]) -> tuple[np.ndarray, int]:
        """The VAE's samples of the clip, float32 in [-1, 1], and how many had to be clipped."""
        started = time.perf_counter()
        frames = latents.shape[-1]
        samples = min(max(1, round(request.seconds * parts.sample_rate)), decode_samples(parts.vae.config, frames))

        def need(module: torch.nn.Module) -> int:
            return vae_decode_bytes(module.config, element_size(module), frames)

        with self.manager.use(VAE, need) as vae, torch.inference_mode():
            window = vae.decode(latents.to(self.manager.device, weights_dtype(vae))).sample
            clip = window[0, :, :samples].float()
            clipped = int((clip.abs() > 1).sum())
            audio = clip.clamp(-1.0, 1.0).cpu().numpy()
        timings["vae_decode"] = timings.get("vae_decode", 0.0) + time.perf_counter() - started
        return audio, clipped

    def _info(self, task: str, request: AudioRequest, parts: _Parts, audio: np.ndarray, latents: torch.Tensor,
              timings: dict[str, float], notices: list[str]) -> dict[str, Any]:
        s = self.settings
        return {
            "backend": self.name,
            "task": task,
            **request.as_dict(),
            "notices": notices,
            "guided": request.guided,
            "sample_rate": parts.sample_rate,
            "channels": int(audio.shape[0]),
            "samples": int(audio.shape[1]),
            "max_seconds": round(parts.max_seconds, 3),
            "dtype": s.dtype,
            "device": str(self.manager.device),
            **{key: describe_source(getattr(s, key)) for key in _SOURCES},
            "latent_shape": list(latents.shape),
            "timings": {stage: round(seconds, 3) for stage, seconds in timings.items()},
        }
