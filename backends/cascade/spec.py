"""Stable Cascade's spec: its settings with their defaults, and what the registry needs to know.

The defaults are the lite preset's (``prior_lite``, ``decoder_lite``, bf16), the one most GPUs run.
This module imports no torch; the backend (``backends.cascade.backend``) is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.runtime.loading import Source
from backends.runtime.spec import BackendSpec
from backends.runtime.tiny import TinyFamily

PRIOR_REPO = "stabilityai/stable-cascade-prior"
DECODER_REPO = "stabilityai/stable-cascade"
#: The single files at the decoder repo's root, read with ``loading.read_safetensors``.
EFFNET_FILE = "effnet_encoder.safetensors"
PREVIEWER_FILE = "previewer.safetensors"


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
    #: img2img: how far the input is noised before stage C denoises it again (0 keeps the image,
    #: 1 ignores it); 0.8 as in the official notebooks and demo app.
    strength: float = 0.8
    #: Live previews (when the user turns them on): one every this many stage C steps, plus the last.
    preview_every: int = 2


@dataclass
class CascadeSettings:
    """Stable Cascade: which files to load, in which dtype and memory mode."""

    #: Stage C, the text-conditional prior that makes the 24x24 semantic latent.
    prior: Source = field(default_factory=lambda: Source(PRIOR_REPO, "prior_lite", "bf16"))
    #: Stage B, the decoder from stage C latents to VQGAN latents.
    decoder: Source = field(default_factory=lambda: Source(DECODER_REPO, "decoder_lite", "bf16"))
    #: CLIP ViT-bigG text encoder, shared by both stages (one copy in memory instead of two).
    text_encoder: Source = field(default_factory=lambda: Source(DECODER_REPO, "text_encoder", "bf16"))
    #: CLIP tokenizer.
    tokenizer: Source = field(default_factory=lambda: Source(DECODER_REPO, "tokenizer"))
    #: Stage A, the VQGAN that turns stage B latents into pixels.
    vqgan: Source = field(default_factory=lambda: Source(DECODER_REPO, "vqgan", "bf16"))
    #: Scheduler config of stage C.
    prior_scheduler: Source = field(default_factory=lambda: Source(PRIOR_REPO, "scheduler"))
    #: Scheduler config of stage B.
    decoder_scheduler: Source = field(default_factory=lambda: Source(DECODER_REPO, "scheduler"))
    #: CLIP ViT-L/14 image encoder: the input's embedding conditions stage C for variations. No
    #: variant: a bf16 file in that folder is unverified (hf_repos.md); the fp32 one loads as dtype.
    image_encoder: Source = field(default_factory=lambda: Source(PRIOR_REPO, "image_encoder"))
    #: CLIP preprocessing (resize, crop, normalise) for the image encoder.
    feature_extractor: Source = field(default_factory=lambda: Source(PRIOR_REPO, "feature_extractor"))
    #: EfficientNet encoder for img2img (image -> stage C latent): ``effnet_encoder.safetensors``
    #: in this folder (the repo root for the released file).
    effnet: Source = field(default_factory=lambda: Source(DECODER_REPO))
    #: Previewer for live previews (stage C latent -> small RGB image): ``previewer.safetensors``
    #: in this folder (the repo root for the released file).
    previewer: Source = field(default_factory=lambda: Source(DECODER_REPO))
    #: Weights dtype; stage C does not support float16 (see hf_repos.md), use bfloat16 or float32.
    dtype: str = "bfloat16"
    #: auto / gpu keep components resident and evict by LRU; offload moves each back after use;
    #: sequential streams blocks for cards too small for a whole component.
    memory_mode: str = "auto"
    #: Generation defaults for the Image tab.
    defaults: CascadeDefaults = field(default_factory=CascadeDefaults)


SPEC = BackendSpec(
    name="cascade",
    family="Stable Cascade",
    tasks=("text_to_image", "image_variation", "img2img"),
    factory="backends.cascade.backend:CascadeBackend",
    settings=CascadeSettings,
    license="stable-cascade-nc-community (non-commercial)",
    license_url="https://huggingface.co/stabilityai/stable-cascade/blob/main/LICENSE",
    # The previewer (3.98M, shared/data/cascade_previewer_keys.json) is left out: it sits at
    # the same repo root as the EfficientNet encoder, and params_m is keyed by folder.
    components=("text_encoder", "prior", "decoder", "vqgan", "image_encoder", "effnet"),
    # image_encoder: CLIP ViT-L/14 vision + 768 projection; the repo root holds the
    # EfficientNet encoder (20.2M, shared/data/cascade_effnet_encoder_keys.json).
    params_m={"prior": 3589.1, "prior_lite": 1030.8, "decoder": 1562.9, "decoder_lite": 699.5,
              "text_encoder": 632.1, "vqgan": 18.4, "image_encoder": 304.0,
              "stabilityai/stable-cascade": 20.2},
    files={"effnet": EFFNET_FILE, "previewer": PREVIEWER_FILE},
    tiny=TinyFamily(name="cascade", builder="backends.cascade.tiny:build", version="v3"),
)
