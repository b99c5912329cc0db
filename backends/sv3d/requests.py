"""The validated 3D-orbit request (SV3D_u / SV3D_p): input picture, variant and camera path.

Light on purpose (PIL and numpy, no torch), so the Orbit tab validates before any model loads.
Every check raises ``InputError`` naming the public field of ``/orbit``.

Input preparation (SV3D was trained on single objects on white, ``defaults.input_preprocess`` in
``shared/data/sv3d_*_unet_keys.json``):
- a picture with transparency (a cut-out PNG works best) is composited on white, cropped to the
  object and the object scaled to ``OBJECT_FRACTION`` of the square frame, centred;
- a picture without transparency is not segmented (no background removal here): the whole picture
  is scaled to ``OBJECT_FRACTION`` of the frame and centred on white;
- any size is accepted (``backends.runtime.image_input`` rules) and fitted to the model's square size.

Camera path (SV3D_p only; SV3D_u has no camera input, so ``path`` and ``elevation_end_deg`` are
ignored for it and the info says so):
- azimuths are spread evenly over 360 degrees, ``360 / frames`` apart, the input view (azimuth 0)
  last, as in the reference script (``linspace(0, 360, frames + 1)[1:] % 360``);
- ``constant``: every frame at ``elevation_deg``;
- ``sine``: elevation follows ``e0 + (e1 - e0) * (1 - cos(azimuth)) / 2``: ``elevation_deg`` at the
  input view, ``elevation_end_deg`` opposite it, smooth in between.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from backends.runtime.errors import InputError
from backends.runtime.image_input import load_image
from backends.runtime.requests import check_unicode, parse_float, parse_int, parse_seed

VARIANTS = ("u", "p")
PATHS = ("constant", "sine")
MAX_STEPS = 100
#: The object's longest side as a share of the frame (the reference's default framing is similar).
OBJECT_FRACTION = 0.85
#: A pixel counts as background when every channel is at least this (white after compositing).
WHITE_LEVEL = 250
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True, eq=False)
class OrbitRequest:
    """One orbit job, validated; ``seed`` is never -1 here."""

    #: The square picture the model sees, RGB, ``size`` x ``size``.
    image: Image.Image
    variant: str
    elevation_deg: float
    steps: int
    seed: int
    path: str = "constant"
    elevation_end_deg: float = 0.0
    #: Per-frame camera, the input view last (degrees).
    elevations_deg: tuple[float, ...] = ()
    azimuths_deg: tuple[float, ...] = ()
    source_size: tuple[int, int] = (0, 0)
    notices: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_frames(self) -> int:
        return len(self.azimuths_deg)

    @property
    def size(self) -> int:
        return self.image.width

    @classmethod
    def build(cls, image: Any, variant: Any, elevation_deg: Any, steps: Any, seed: Any, path: Any = "constant",
              elevation_end_deg: Any = None, *, size: int = 576, num_frames: int = 21) -> "OrbitRequest":
        """Validate raw inputs (in the ``/orbit`` order) into a request.

        Args:
            image: a file path or a PIL image.
            variant: ``u`` (no camera input) or ``p`` (camera path).
            elevation_deg: camera elevation of the input view, -90..90.
            path: ``constant`` or ``sine`` (p only).
            elevation_end_deg: the sine path's elevation opposite the input view (p only); None
                means ``elevation_deg``.
            size, num_frames: the model's (the preset's defaults).

        Raises:
            InputError: naming the first invalid field.
        """
        if image is None or (isinstance(image, str) and not image.strip()):
            raise InputError("image", "no image given; upload a picture (a cut-out PNG works best)")
        if isinstance(variant, str):
            check_unicode("variant", variant)
        name = str(variant).strip().lower() if variant is not None else ""
        name = name.removeprefix("sv3d_")
        if name not in VARIANTS:
            raise InputError("variant", f"must be one of {', '.join(VARIANTS)} (SV3D_u or SV3D_p), got {variant!r}")
        elevation = parse_float("elevation_deg", elevation_deg, -90.0, 90.0)
        steps_value = parse_int("steps", steps, 1, MAX_STEPS)
        seed_value = parse_seed("seed", seed)
        if isinstance(path, str):
            check_unicode("path", path)
        how = "constant" if path in (None, "") else path
        if how not in PATHS:
            raise InputError("path", f"must be one of {', '.join(PATHS)}, got {path!r}")
        end = elevation if elevation_end_deg in (None, "") else parse_float("elevation_end_deg", elevation_end_deg,
                                                                            -90.0, 90.0)
        fitted, source, notices = prepare_object(image, size)
        if name == "u":
            if how != "constant" or end != elevation:
                notices.append("SV3D_u has no camera input: the camera path was ignored")
            how, end = "constant", elevation
        azimuths = orbit_azimuths(num_frames)
        elevations = orbit_elevations(azimuths, elevation, end, how)
        return cls(image=fitted, variant=name, elevation_deg=elevation, steps=steps_value, seed=seed_value,
                   path=how, elevation_end_deg=end, elevations_deg=elevations, azimuths_deg=azimuths,
                   source_size=source, notices=tuple(notices))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able parameters for the info and the sidecar file.

        The camera path is ``path_mode`` here: gradio_client takes any JSON dict with a ``path``
        key for a file to download.
        """
        camera = None if self.variant == "u" else {
            "path_mode": self.path, "elevation_end_deg": self.elevation_end_deg,
            "elevations_deg": [round(e, 3) for e in self.elevations_deg],
            "azimuths_deg": [round(a, 3) for a in self.azimuths_deg]}
        return {"variant": self.variant, "elevation_deg": self.elevation_deg, "steps": self.steps, "seed": self.seed,
                "num_frames": self.num_frames, "size": self.size, "camera": camera,
                "source_size": list(self.source_size), "notices": list(self.notices)}


def orbit_azimuths(frames: int) -> tuple[float, ...]:
    """Azimuths in degrees relative to the input view, evenly over 360, the input view (0) last."""
    return tuple(float((360.0 * (i + 1) / frames) % 360.0) for i in range(frames))


def orbit_elevations(azimuths: tuple[float, ...], start: float, end: float, path: str) -> tuple[float, ...]:
    """Per-frame elevations for ``path`` (see the module docstring)."""
    if path == "constant":
        return tuple(start for _ in azimuths)
    return tuple(start + (end - start) * (1 - math.cos(math.radians(a))) / 2 for a in azimuths)


def prepare_object(image: Any, size: int) -> tuple[Image.Image, tuple[int, int], list[str]]:
    """Read a picture and frame its object on a white square (see the module docstring)."""
    loaded = load_image("image", image)
    picture = loaded.image
    notices = [n for n in loaded.notices if not n.startswith("input downscaled")]
    cut_out = any("transparent" in n for n in loaded.notices)
    if cut_out:
        pixels = np.asarray(picture)
        mask = (pixels < WHITE_LEVEL).any(axis=2)
        if mask.any():
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            picture = picture.crop((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
            notices.append(f"cut-out object cropped to {picture.width}x{picture.height}")
    inner = max(1, round(size * OBJECT_FRACTION))
    scale = inner / max(picture.size)
    shape = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    resized = picture.resize(shape, Image.Resampling.LANCZOS, reducing_gap=3.0 if scale < 1 else None)
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    canvas.paste(resized, ((size - shape[0]) // 2, (size - shape[1]) // 2))
    what = "object" if cut_out else "picture (no transparency, so not cut out)"
    notices.append(f"{what} scaled to {round(OBJECT_FRACTION * 100)} % of a {size}x{size} white frame")
    return canvas, loaded.original_size, notices
