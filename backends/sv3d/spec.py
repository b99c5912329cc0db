"""SV3D's spec: its settings with their defaults, and what the registry needs to know.

This module imports no torch; the backend (``backends.sv3d.backend``) is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.runtime.loading import Source
from backends.runtime.spec import BackendSpec
from backends.runtime.tiny import TinyFamily

SV3D_REPO = "stabilityai/sv3d"
#: The single sgm files, one per variant, each holding the UNet, VAE and image encoder.
CHECKPOINT_FILES = {"checkpoint_u": "sv3d_u.safetensors", "checkpoint_p": "sv3d_p.safetensors"}


@dataclass
class Sv3dDefaults:
    """Defaults the 3D orbit tab starts with (the reference script's, shared/data/sv3d_*_keys.json)."""

    #: u (no camera input) or p (a camera path).
    variant: str = "p"
    #: Camera elevation of the input view in degrees (-90-90); 10 in the reference script.
    elevation_deg: float = 10.0
    #: p only: ``constant`` elevation, or a ``sine`` path to ``elevation_end_deg`` opposite the input view.
    path: str = "constant"
    elevation_end_deg: float = 30.0
    #: Euler EDM steps (50 in the reference script).
    steps: int = 50
    #: Square model size in pixels (576; a multiple of 64) and views per orbit (21).
    size: int = 576
    num_frames: int = 21
    #: Noise added to the conditioning frame (the reference forces 1e-5).
    cond_aug: float = 1e-5
    #: Triangle guidance: min_guidance at the first and last frame, max_guidance in the middle.
    min_guidance: float = 1.0
    max_guidance: float = 2.5
    #: Frames per second of the orbit MP4.
    fps: int = 7


@dataclass
class Sv3dSettings:
    """SV3D_u / SV3D_p: the two single sgm files (converted once into the cache), dtype, memory."""

    #: Folder or repo holding ``sv3d_u.safetensors`` (gated repo stabilityai/sv3d).
    checkpoint_u: Source = field(default_factory=lambda: Source(SV3D_REPO))
    #: Folder or repo holding ``sv3d_p.safetensors``.
    checkpoint_p: Source = field(default_factory=lambda: Source(SV3D_REPO))
    #: UNet and CLIP dtype after conversion (the VAE always stays float32: it overflows in float16).
    dtype: str = "float16"
    #: auto, gpu, offload or sequential (``backends.runtime.memory.MemoryMode``).
    memory_mode: str = "auto"
    #: Most frames decoded at once even when memory allows more (the reference decodes 14).
    decode_chunk_max: int = 14
    #: Defaults for the Orbit tab.
    defaults: Sv3dDefaults = field(default_factory=Sv3dDefaults)


SPEC = BackendSpec(
    name="sv3d",
    family="SV3D",
    tasks=("orbit",),
    factory="backends.sv3d.backend:Sv3dBackend",
    settings=Sv3dSettings,
    license="sv3d-nc-community (gated; accept it on the model page)",
    license_url="https://huggingface.co/stabilityai/sv3d/blob/main/LICENSE.md",
    # Each single sgm file holds all three components (unet, vae, image_encoder), converted
    # on first use; the manager names them sv3d.<u|p>.<part>. No size hints: a hint is keyed
    # by settings key, and these files are not one component each.
    components=("checkpoint_u", "checkpoint_p"),
    files=CHECKPOINT_FILES,
    tiny=TinyFamily(name="sv3d", builder="backends.sv3d.tiny:build", version="v1"),
)
