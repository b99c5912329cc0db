"""Typed settings that a preset fills in: one dataclass per backend, one commented line per field.

The dataclasses are the preset schema: ``backends.presets`` checks YAML against them (unknown keys,
wrong types, values outside ``CHOICES``) and merges a sparse file over these defaults. The defaults
are the lite preset, the one most GPUs can run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.loading import Source

#: Allowed values of the enumerated fields, by field name; the validator quotes these in errors.
CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": ("bfloat16", "float16", "float32"),
    "memory_mode": ("auto", "gpu", "offload", "sequential"),
    "device": ("auto", "cuda", "cpu"),
}

CASCADE_PRIOR_REPO = "stabilityai/stable-cascade-prior"
CASCADE_DECODER_REPO = "stabilityai/stable-cascade"


@dataclass
class CascadeDefaults:
    """Generation defaults the Image tab starts with (the official ones, see NOTES.md)."""

    #: Output width in pixels (multiple of 128).
    width: int = 1024
    #: Output height in pixels (multiple of 128).
    height: int = 1024
    #: Stage C denoising steps.
    prior_steps: int = 20
    #: Stage B denoising steps.
    decoder_steps: int = 10
    #: Stage C classifier-free guidance.
    prior_guidance: float = 4.0
    #: Stage B guidance; 0 turns classifier-free guidance off (one pass per step instead of two).
    decoder_guidance: float = 0.0
    #: Images per request.
    num_images: int = 1
    #: Negative prompt pre-filled in the UI.
    negative_prompt: str = ""


@dataclass
class CascadeSettings:
    """Stable Cascade: which files to load, in which dtype and memory mode."""

    #: Stage C, the text-conditional prior that makes the 24x24 semantic latent.
    prior: Source = field(default_factory=lambda: Source(CASCADE_PRIOR_REPO, "prior_lite", "bf16"))
    #: Stage B, the decoder from stage C latents to VQGAN latents.
    decoder: Source = field(default_factory=lambda: Source(CASCADE_DECODER_REPO, "decoder_lite", "bf16"))
    #: CLIP ViT-bigG text encoder, shared by both stages (one copy in memory instead of two).
    text_encoder: Source = field(default_factory=lambda: Source(CASCADE_DECODER_REPO, "text_encoder", "bf16"))
    #: CLIP tokenizer.
    tokenizer: Source = field(default_factory=lambda: Source(CASCADE_DECODER_REPO, "tokenizer"))
    #: Stage A, the VQGAN that turns stage B latents into pixels.
    vqgan: Source = field(default_factory=lambda: Source(CASCADE_DECODER_REPO, "vqgan", "bf16"))
    #: Scheduler config of stage C.
    prior_scheduler: Source = field(default_factory=lambda: Source(CASCADE_PRIOR_REPO, "scheduler"))
    #: Scheduler config of stage B.
    decoder_scheduler: Source = field(default_factory=lambda: Source(CASCADE_DECODER_REPO, "scheduler"))
    #: Weights dtype; stage C does not support float16 (see hf_repos.md), use bfloat16 or float32.
    dtype: str = "bfloat16"
    #: auto / gpu keep components resident and evict by LRU; offload moves each back after use;
    #: sequential streams blocks for cards too small for a whole component.
    memory_mode: str = "auto"
    #: Generation defaults for the Image tab.
    defaults: CascadeDefaults = field(default_factory=CascadeDefaults)


@dataclass
class PresetSettings:
    """A whole preset after merging: the app-wide keys plus one section per backend."""

    #: One line for the UI and the README.
    description: str = ""
    #: cuda, cpu, or auto (cuda when available).
    device: str = "auto"
    #: Smallest total VRAM, in GB, this preset is meant for; `--preset auto` uses it.
    min_vram_gb: float = 0.0
    #: Stable Cascade text-to-image (and later variation and img2img).
    cascade: CascadeSettings = field(default_factory=CascadeSettings)
