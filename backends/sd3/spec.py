"""Stable Diffusion 3.5's spec: its settings with their defaults, and what the registry needs to know.

Three models share one family: SD3.5 Large (an 8.1B MMDiT), Large Turbo (the same network
distilled to four unguided steps) and Medium (a 2.5B MMDiT-X). They differ only in the
transformer; the three text encoders (CLIP-L, OpenCLIP bigG, T5-XXL), the 16-channel VAE, the
tokenizers and the scheduler are the same files in all three repos, so they are loaded once, from
one repo. Only the diffusers folders are ever named: the repos' root single files
(``sd3.5_large.safetensors``) and ``text_encoders/`` folder hold the same weights again for
ComfyUI (NOTES.md, "Duplicated weights in the SD3.5 repos").

This module imports no torch; the backend (``backends.sd3.backend``) is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.runtime.loading import Source
from backends.runtime.settings import choices
from backends.runtime.spec import BackendSpec
from backends.runtime.tiny import TinyFamily

LARGE_REPO = "stabilityai/stable-diffusion-3.5-large"
LARGE_TURBO_REPO = "stabilityai/stable-diffusion-3.5-large-turbo"
MEDIUM_REPO = "stabilityai/stable-diffusion-3.5-medium"
#: Where the shared components come from: the default model's repo, so the default preset needs
#: one gated repo (each SD3.5 repo has its own license gate to accept).
SHARED_REPO = MEDIUM_REPO

#: The ``model`` values of the SD endpoints this family serves (DESIGN.md).
MODELS = ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium")
#: Per model: the settings key of its transformer source, the key of its defaults, and the middle
#: part of its manager names (``sd3.large-turbo.transformer``).
TRANSFORMER_KEYS = {"sd3.5-large": "transformer_large", "sd3.5-large-turbo": "transformer_large_turbo",
                    "sd3.5-medium": "transformer_medium"}
DEFAULTS_KEYS = {"sd3.5-large": "large", "sd3.5-large-turbo": "large_turbo", "sd3.5-medium": "medium"}
SHORT_NAMES = {"sd3.5-large": "large", "sd3.5-large-turbo": "large-turbo", "sd3.5-medium": "medium"}
#: Where T5-XXL runs: on the compute device (borrowed from the manager like every component),
#: on the CPU (only its embeddings move to the device), or not at all (zeros in its place).
T5_PLACEMENTS = ("device", "cpu", "off")


@dataclass
class Sd3ModelDefaults:
    """One model's generation defaults (the model cards' diffusers examples)."""

    #: Denoising steps.
    steps: int = 28
    #: Classifier-free guidance; 1 or less runs one transformer pass per step instead of two.
    guidance: float = 3.5
    #: Output width and height in pixels (multiples of 64); all three models are trained at 1024².
    width: int = 1024
    height: int = 1024
    #: T5 tokens the prompt is padded or cut to (77-512); 256 is the pipelines' default.
    max_sequence_length: int = 256
    #: img2img and inpaint: how far the input is noised before it is denoised again (0 keeps it,
    #: 1 ignores it).
    strength: float = 0.8


@dataclass
class Sd3Defaults:
    """Defaults per model; the Image tab's SD controls start from the chosen model's."""

    #: SD3.5 Large: 28 steps, guidance 3.5.
    large: Sd3ModelDefaults = field(default_factory=lambda: Sd3ModelDefaults(steps=28, guidance=3.5))
    #: SD3.5 Large Turbo: 4 steps without guidance (the distillation removed it).
    large_turbo: Sd3ModelDefaults = field(default_factory=lambda: Sd3ModelDefaults(steps=4, guidance=0.0))
    #: SD3.5 Medium: 40 steps, guidance 4.5.
    medium: Sd3ModelDefaults = field(default_factory=lambda: Sd3ModelDefaults(steps=40, guidance=4.5))


@dataclass
class Sd3Settings:
    """Stable Diffusion 3.5: which files, dtype, memory mode, where T5 runs, which models are offered."""

    #: SD3.5 Large's MMDiT (``SD3Transformer2DModel``, 8.1B, 16.3 GB in bf16, two shards).
    transformer_large: Source = field(default_factory=lambda: Source(LARGE_REPO, "transformer"))
    #: SD3.5 Large Turbo's MMDiT (same shape as Large).
    transformer_large_turbo: Source = field(default_factory=lambda: Source(LARGE_TURBO_REPO, "transformer"))
    #: SD3.5 Medium's MMDiT-X (2.5B).
    transformer_medium: Source = field(default_factory=lambda: Source(MEDIUM_REPO, "transformer"))
    #: The 16-channel VAE (``AutoencoderKL``), shared by the three models.
    vae: Source = field(default_factory=lambda: Source(SHARED_REPO, "vae"))
    #: CLIP ViT-L/14 text encoder with projection.
    text_encoder: Source = field(default_factory=lambda: Source(SHARED_REPO, "text_encoder"))
    #: OpenCLIP ViT-bigG/14 text encoder with projection.
    text_encoder_2: Source = field(default_factory=lambda: Source(SHARED_REPO, "text_encoder_2"))
    #: T5-XXL encoder (4.8B, 9.5 GB in bf16): the long-prompt encoder; see ``t5``.
    text_encoder_3: Source = field(default_factory=lambda: Source(SHARED_REPO, "text_encoder_3"))
    #: CLIP tokenizers of the two CLIP encoders, and T5's SentencePiece tokenizer.
    tokenizer: Source = field(default_factory=lambda: Source(SHARED_REPO, "tokenizer"))
    tokenizer_2: Source = field(default_factory=lambda: Source(SHARED_REPO, "tokenizer_2"))
    tokenizer_3: Source = field(default_factory=lambda: Source(SHARED_REPO, "tokenizer_3"))
    #: ``FlowMatchEulerDiscreteScheduler`` config (shift 3), the same for the three models.
    scheduler: Source = field(default_factory=lambda: Source(SHARED_REPO, "scheduler"))
    #: Weights dtype. bfloat16: T5 overflows in float16.
    dtype: str = "bfloat16"
    #: auto, gpu, offload or sequential (``backends.runtime.placement.MemoryMode``).
    memory_mode: str = "auto"
    #: Where T5-XXL runs: device, cpu or off. The preset decides; memory_mode gpu overrides cpu to
    #: device (gpu mode runs every component on the device); off is never overridden (its weights
    #: may not even be downloaded) and makes prompt following weaker, which the info says.
    #: ``backends.sd3.requests.t5_placement`` is the rule; a request may still turn T5 off.
    t5: str = field(default="device", metadata=choices(*T5_PLACEMENTS))
    #: Which of ``SPEC.models`` this preset offers; the first is the family's default model.
    offer: list[str] = field(default_factory=lambda: ["sd3.5-medium"], metadata=choices(*MODELS))
    #: Inpaint: Gaussian blur radius (pixels) of the mask edge when the input's pixels are laid back
    #: over the result, so the repainted area blends in; 4 as A1111's default mask blur.
    mask_blur: int = 4
    #: Generation defaults per model.
    defaults: Sd3Defaults = field(default_factory=Sd3Defaults)

    def unused_sources(self) -> tuple[str, ...]:
        """Settings keys whose files this preset never reads: the transformers of the models it does
        not offer (16.3 GB each for Large and Large Turbo), and T5 with its tokenizer when ``t5`` is off
        (9.5 GB). A download plan or size estimate that honours this fetches and counts only the rest."""
        unused = [TRANSFORMER_KEYS[model] for model in MODELS if model not in self.offer]
        if self.t5 == "off":
            unused += ["text_encoder_3", "tokenizer_3"]
        return tuple(unused)


SPEC = BackendSpec(
    name="sd3",
    family="Stable Diffusion 3.5",
    tasks=("sd3_text_to_image", "sd3_img2img", "sd3_inpaint"),
    factory="backends.sd3.backend:Sd3Backend",
    settings=Sd3Settings,
    license="Stability AI Community License (gated: accept it on the model page and set HF_TOKEN)",
    license_url="https://huggingface.co/stabilityai/stable-diffusion-3.5-large/blob/main/LICENSE.md",
    components=("transformer_large", "transformer_large_turbo", "transformer_medium", "vae", "text_encoder",
                "text_encoder_2", "text_encoder_3"),
    # Millions of parameters plus buffers (what the weights take in memory), counted on the meta
    # device from the released configs with diffusers 0.42.1 / transformers 5.24. The transformers
    # carry their position-embedding table as a buffer: 89.6M in Large (192² x 2432), 226.5M in
    # Medium (384² x 1536), which is why Medium is "2.5B" with 2243M parameters. The registry keys
    # sizes by subfolder, and the three transformers share the subfolder name ``transformer``, so
    # theirs are keyed ``<repo>/transformer`` and the backend hints them itself.
    params_m={"vae": 83.8, "text_encoder": 123.7, "text_encoder_2": 694.7, "text_encoder_3": 4762.3,
              f"{LARGE_REPO}/transformer": 8146.3, f"{LARGE_TURBO_REPO}/transformer": 8146.3,
              f"{MEDIUM_REPO}/transformer": 2469.7},
    tiny=TinyFamily(name="sd3", builder="backends.sd3.tiny:build", version="v1"),
    models=MODELS,
)
