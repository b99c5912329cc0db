"""Stable Video Diffusion's spec: its settings with their defaults, and what the registry needs.

This module imports no torch; the backend (``backends.svd.backend``) is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.runtime.loading import Source
from backends.runtime.settings import choices
from backends.runtime.spec import BackendSpec
from backends.runtime.tiny import TinyFamily

SVD_REPO = "stabilityai/stable-video-diffusion-img2vid"


@dataclass
class SvdDefaults:
    """Generation defaults the Video tab starts with (the official ones, see NOTES.md)."""

    #: Frames to generate: SVD is trained on 14, SVD-XT on 25.
    num_frames: int = 14
    #: Frames per second of the MP4, also a conditioning input of the model (5-30).
    fps: int = 6
    #: How much motion (1-255).
    motion_bucket_id: int = 127
    #: Noise added to the conditioning image; more gives more motion and less fidelity.
    noise_aug_strength: float = 0.02
    #: Denoising steps (SVD 25, SVD-XT 30 in the official scripts).
    steps: int = 25
    #: Frames decoded at once; 0 picks it from the live free VRAM. The main VRAM knob.
    decode_chunk_size: int = 0
    #: Model input width and height (landscape; portrait swaps them).
    width: int = 1024
    height: int = 576
    #: How an input of another aspect is fitted: crop (fill the frame) or pad (letterbox, white).
    fit: str = field(default="crop", metadata=choices("crop", "pad"))
    #: Classifier-free guidance of the first frame; it rises linearly to ``max_guidance`` at the
    #: last frame (the pipeline's defaults, 1 and 3). A max of 1 or less turns guidance off.
    min_guidance: float = 1.0
    max_guidance: float = 3.0


@dataclass
class SvdSettings:
    """Stable Video Diffusion (SVD or SVD-XT): which files, dtype and memory mode."""

    #: The spatio-temporal UNet (``UNetSpatioTemporalConditionModel``).
    unet: Source = field(default_factory=lambda: Source(SVD_REPO, "unet", "fp16"))
    #: The temporal VAE decoder (``AutoencoderKLTemporalDecoder``).
    vae: Source = field(default_factory=lambda: Source(SVD_REPO, "vae", "fp16"))
    #: CLIP ViT-H/14 image encoder for the conditioning embedding.
    image_encoder: Source = field(default_factory=lambda: Source(SVD_REPO, "image_encoder", "fp16"))
    #: CLIP image preprocessing config.
    feature_extractor: Source = field(default_factory=lambda: Source(SVD_REPO, "feature_extractor"))
    #: EulerDiscreteScheduler config.
    scheduler: Source = field(default_factory=lambda: Source(SVD_REPO, "scheduler"))
    #: Weights dtype; SVD ships fp16 files.
    dtype: str = "float16"
    #: auto, gpu, offload or sequential (``backends.runtime.memory.MemoryMode``).
    memory_mode: str = "auto"
    #: Most frames the automatic decode chunk (decode_chunk_size 0) takes even when memory allows
    #: more: a guard against an optimistic per-frame estimate. 7 as in the official demo app; the
    #: official sampling script decodes 14. 0 means no limit.
    auto_decode_chunk_max: int = 7
    #: Generation defaults for the Video tab.
    defaults: SvdDefaults = field(default_factory=SvdDefaults)


SPEC = BackendSpec(
    name="svd",
    family="Stable Video Diffusion",
    tasks=("image_to_video",),
    factory="backends.svd.backend:SvdBackend",
    settings=SvdSettings,
    license="stable-video-diffusion-community (gated; accept it on the model page)",
    license_url="https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt/blob/main/LICENSE.md",
    components=("unet", "vae", "image_encoder"),
    params_m={"unet": 1524.6, "vae": 97.7, "image_encoder": 632.1},
    tiny=TinyFamily(name="svd", builder="backends.svd.tiny:build", version="v1"),
)
