"""Stable Audio Open 1.0's spec: its settings with their defaults, and what the registry needs to know.

Stable Audio Open 1.0 makes up to 47 s of 44.1 kHz stereo from a text prompt with four models:
a T5-base text encoder, a small projection model (it maps T5's states and the clip's start and
end seconds into the DiT's conditioning space), a 1.06B diffusion transformer (``StableAudioDiTModel``)
over the latents of the Oobleck VAE (``AutoencoderOobleck``, 64 latent channels at 2048 samples
per latent frame). The repo holds them as diffusers folders and, at its root, once more as one
``model.safetensors`` / ``model.ckpt`` for stable-audio-tools (4.85 GB each): only the diffusers
folders are ever named here, so the download plan never fetches the root single files.

The repo ships float32 files only (``transformer/`` 4.23 GB, ``vae/`` 624 MB). The default dtype
is float16, as in the model card's and diffusers' own example
(``StableAudioPipeline.from_pretrained(..., torch_dtype=torch.float16)``); transformers' T5 clamps
float16 overflows itself. The weights are cast on load.

This module imports no torch; the backend (``backends.audio.backend``) is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.runtime.loading import Source
from backends.runtime.spec import BackendSpec
from backends.runtime.tiny import TinyFamily

REPO = "stabilityai/stable-audio-open-1.0"


@dataclass
class AudioDefaults:
    """Generation defaults the Audio tab starts with.

    The model card's diffusers example (also diffusers' ``StableAudioPipeline`` docstring, 0.42.1)
    runs ``num_inference_steps=200``, ``audio_end_in_s=10.0`` and ``negative_prompt="Low
    quality."`` at the pipeline's default ``guidance_scale=7.0``; the model card's
    stable-audio-tools example uses ``cfg_scale=7`` too (with 100 steps of its own sampler).
    """

    #: Length of the clip in seconds (more than 0, up to ``backends.audio.requests.MAX_SECONDS``).
    seconds: float = 10.0
    #: Denoising steps (the model card's diffusers example: 200).
    steps: int = 200
    #: Classifier-free guidance (the pipeline's default and the model card's cfg_scale: 7);
    #: 1 or less runs one transformer pass per step and no negative prompt.
    guidance: float = 7.0
    #: What to steer away from (the model card's example); empty: the unconditional zeros.
    negative_prompt: str = "Low quality."


@dataclass
class AudioSettings:
    """Stable Audio Open: which files, dtype, memory mode and generation defaults."""

    #: T5-base encoder (``T5EncoderModel``, 110M).
    text_encoder: Source = field(default_factory=lambda: Source(REPO, "text_encoder"))
    #: T5's SentencePiece tokenizer (128 tokens).
    tokenizer: Source = field(default_factory=lambda: Source(REPO, "tokenizer"))
    #: ``StableAudioProjectionModel`` (0.4M): T5 states and the start/end seconds to conditioning.
    projection_model: Source = field(default_factory=lambda: Source(REPO, "projection_model"))
    #: The diffusion transformer (``StableAudioDiTModel``, 1.06B, 4.23 GB in float32).
    transformer: Source = field(default_factory=lambda: Source(REPO, "transformer"))
    #: The Oobleck VAE (``AutoencoderOobleck``, 156M): latents to 44.1 kHz stereo.
    vae: Source = field(default_factory=lambda: Source(REPO, "vae"))
    #: ``CosineDPMSolverMultistepScheduler`` config (needs ``torchsde`` for its Brownian noise).
    scheduler: Source = field(default_factory=lambda: Source(REPO, "scheduler"))
    #: Weights dtype (the files are float32; cast on load). See the module docstring.
    dtype: str = "float16"
    #: auto, gpu, offload or sequential (``backends.runtime.placement.MemoryMode``).
    memory_mode: str = "auto"
    #: Generation defaults for the Audio tab.
    defaults: AudioDefaults = field(default_factory=AudioDefaults)


SPEC = BackendSpec(
    name="audio",
    family="Stable Audio Open",
    tasks=("text_to_audio",),
    factory="backends.audio.backend:AudioBackend",
    settings=AudioSettings,
    license="Stability AI Community License (gated: accept it on the model page and set HF_TOKEN)",
    license_url="https://huggingface.co/stabilityai/stable-audio-open-1.0/blob/main/LICENSE.md",
    components=("text_encoder", "projection_model", "transformer", "vae"),
    # Millions of parameters plus buffers, counted on the meta device with diffusers 0.42.1 /
    # transformers 5.24 from the released configs (diffusers' scripts/convert_stable_audio.py
    # applied to stable-audio-tools' model_config.json: DiT width 1536, 24 layers, 24 heads with
    # 12 key/value heads, 64 channels, sample_size 1024; VAE the class defaults; T5-base; the
    # projection 768 -> 768 with seconds in 0-512). They match the file sizes (4.23 GB, 624 MB).
    params_m={"text_encoder": 109.6, "projection_model": 0.4, "transformer": 1056.9, "vae": 156.1},
    tiny=TinyFamily(name="audio", builder="backends.audio.tiny:build", version="v1"),
)
