"""The validated image-to-video request, and how an input picture is fitted to the model.

Light on purpose (PIL and numpy, no torch), so the Video tab can validate inputs and show the
fitted frame before any model loads. Every check raises ``InputError`` naming the public field of
``/generate_video``.

Input pictures, as documented in the README:
- reading and checking is ``backends.runtime.image_input.load_image``, shared with the Variation tab: any
  format Pillow opens; more than ``MAX_INPUT_PIXELS`` (about 134 MP) is refused from the header
  before decoding; larger than 2048 px a side is scaled down on loading; EXIF rotation applied;
  transparency composited on white; grayscale, palette, CMYK and 16-bit converted to RGB;
- each side must be at least ``MIN_SIDE`` pixels;
- landscape or square pictures get the model's landscape size (1024x576 for SVD), portrait ones the
  portrait size (576x1024); ``crop`` fills the frame and cuts the overflow evenly from both sides,
  ``pad`` fits the whole picture and fills the rest with white.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from backends.runtime.errors import InputError
from backends.runtime.image_input import MAX_INPUT_PIXELS, load_image
from backends.runtime.requests import check_unicode, parse_float, parse_int, parse_seed

#: Smaller pictures carry too little for a 1024x576 video (and 1x1 "images" are usually a mistake).
MIN_SIDE = 64
#: SVD is trained on 14 (SVD-XT: 25) frames; more drift and cost memory linearly.
MAX_FRAMES = 50
MIN_FPS, MAX_FPS = 5, 30
MAX_MOTION_BUCKET = 255
MAX_STEPS = 100
FITS = ("crop", "pad")
#: Background for the bars of ``pad`` (SVD and SV3D expect objects on white, as transparency gets).
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True, eq=False)
class VideoRequest:
    """One image-to-video job, validated; ``seed`` is never -1 here."""

    #: The picture already fitted to the model size, RGB.
    image: Image.Image
    num_frames: int
    fps: int
    motion_bucket_id: int
    noise_aug_strength: float
    steps: int
    #: Frames the VAE decodes at once; 0 lets the backend choose from the live free memory.
    decode_chunk_size: int
    seed: int
    fit: str = "crop"
    #: The uploaded picture's size (after EXIF rotation), for the info.
    source_size: tuple[int, int] = (0, 0)
    #: What was done to the picture (scaling, transparency, first frame), shown in the info.
    notices: tuple[str, ...] = field(default_factory=tuple)

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    @classmethod
    def build(cls, image: Any, num_frames: Any, fps: Any, motion_bucket_id: Any, noise_aug_strength: Any,
              steps: Any, decode_chunk_size: Any, seed: Any, fit: Any = "crop", *, width: int = 1024,
              height: int = 576) -> "VideoRequest":
        """Validate raw inputs (in the ``/generate_video`` order) into a request.

        Args:
            image: a file path or a PIL image.
            fit: ``crop`` or ``pad`` (a UI setting, not an API input).
            width, height: the model's size (the preset's defaults); the larger is used as the
                long side, so either orientation may be given.

        Raises:
            InputError: naming the first invalid field.
        """
        if image is None or (isinstance(image, str) and not image.strip()):
            raise InputError("image", "no image given; upload a picture (PNG, JPEG or WebP)")
        frames = parse_int("num_frames", num_frames, 1, MAX_FRAMES)
        values = dict(
            num_frames=frames,
            fps=parse_int("fps", fps, MIN_FPS, MAX_FPS),
            motion_bucket_id=parse_int("motion_bucket_id", motion_bucket_id, 1, MAX_MOTION_BUCKET),
            noise_aug_strength=parse_float("noise_aug_strength", noise_aug_strength, 0.0, 1.0),
            steps=parse_int("steps", steps, 1, MAX_STEPS),
            decode_chunk_size=parse_int("decode_chunk_size", decode_chunk_size, 0, frames),
            seed=parse_seed("seed", seed),
        )
        fit = parse_fit(fit)
        fitted, source_size, notices = prepare_image(image, fit, width, height)
        return cls(image=fitted, fit=fit, source_size=source_size, notices=tuple(notices), **values)

    def as_dict(self) -> dict[str, Any]:
        """The parameters as plain JSON-able values (for the info and the sidecar file)."""
        return {
            "num_frames": self.num_frames, "fps": self.fps, "motion_bucket_id": self.motion_bucket_id,
            "noise_aug_strength": self.noise_aug_strength, "steps": self.steps,
            "decode_chunk_size": self.decode_chunk_size, "seed": self.seed, "fit": self.fit,
            "width": self.width, "height": self.height, "source_size": list(self.source_size),
            "notices": list(self.notices),
        }


def parse_fit(value: Any) -> str:
    """``crop`` or ``pad``; None means crop."""
    fit = "crop" if value is None else value
    if isinstance(fit, str):
        check_unicode("fit", fit)
    if fit not in FITS:
        raise InputError("fit", f"must be one of {', '.join(FITS)}, got {value!r}")
    return fit


def model_size(source_size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """The model's (width, height) for a picture: landscape for wide or square, else portrait."""
    long, short = max(width, height), min(width, height)
    return (long, short) if source_size[0] >= source_size[1] else (short, long)


def prepare_image(image: Any, fit: str, width: int,
                  height: int) -> tuple[Image.Image, tuple[int, int], list[str]]:
    """Read, check and fit a picture to the model size.

    Returns:
        The fitted RGB picture, the source size (after EXIF rotation) and notices for the info.
    """
    loaded = load_image("image", image)
    source = loaded.original_size
    if min(source) < MIN_SIDE:
        raise InputError("image", f"is {source[0]}x{source[1]}; each side must be at least {MIN_SIDE} pixels")
    target = model_size(source, width, height)
    notices = [note for note in loaded.notices if not note.startswith("input downscaled")]
    fitted = fit_image(loaded.image, target, fit)
    if source != target:
        verb = "downscaled" if source[0] * source[1] > target[0] * target[1] else "upscaled"
        notices.append(f"picture {verb} from {source[0]}x{source[1]} to {target[0]}x{target[1]} ({fit})")
    return fitted, source, notices


def fit_image(picture: Image.Image, size: tuple[int, int], fit: str) -> Image.Image:
    """Scale ``picture`` to exactly ``size``: ``crop`` fills and centres, ``pad`` letterboxes on white."""
    width, height = picture.size
    target_w, target_h = size
    if fit == "crop":
        scale = max(target_w / width, target_h / height)
        box_w, box_h = target_w / scale, target_h / scale
        left, top = (width - box_w) / 2, (height - box_h) / 2
        # Resizing from a box crops and scales in one pass; reducing_gap first shrinks big pictures
        # by whole factors, which makes a 100 MP downscale take about a second instead of ten.
        return picture.resize(size, Image.Resampling.LANCZOS, box=(left, top, left + box_w, top + box_h),
                              reducing_gap=3.0 if scale < 1 else None)
    scale = min(target_w / width, target_h / height)
    inner = (max(1, min(target_w, round(width * scale))), max(1, min(target_h, round(height * scale))))
    resized = picture.resize(inner, Image.Resampling.LANCZOS, reducing_gap=3.0 if scale < 1 else None)
    canvas = Image.new("RGB", size, BACKGROUND)
    canvas.paste(resized, ((target_w - inner[0]) // 2, (target_h - inner[1]) // 2))
    return canvas


__all__ = ["FITS", "MAX_FRAMES", "MAX_INPUT_PIXELS", "MIN_SIDE", "VideoRequest", "fit_image", "model_size",
           "parse_fit", "prepare_image"]
