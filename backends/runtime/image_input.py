"""Input images for variation and img2img: read, check and normalise one picture, before any model.

Every rule here is a documented fit or a clear error naming the field (``InputError``):

- nothing given, an unreadable or truncated file: error;
- smaller than ``MIN_INPUT_SIDE`` on a side: error (the encoders see 32-pixel blocks);
- more than ``MAX_INPUT_PIXELS``: error before decoding (a decompression bomb guard: a small PNG
  can unpack to gigabytes);
- larger than ``MAX_KEPT_SIDE`` on a side: downscaled (the models never use more: outputs are at
  most 2048 px), reported in the notices;
- EXIF rotation applied and reported in the notices (a phone photo that comes out turned,
  unexplained, looks like a bug); grayscale, palette, CMYK and 16-bit images converted to RGB;
  transparent areas (RGBA, LA, palette transparency) composited on white, reported in the notices.

Light: PIL and numpy only, no torch, so tabs can validate cheaply.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from backends.runtime.errors import InputError
from backends.runtime.requests import check_unicode

logger = logging.getLogger(__name__)

#: Smallest accepted side: the EfficientNet encoder reduces 32x32 pixels to one latent pixel.
MIN_INPUT_SIDE = 32
#: Largest accepted image, checked from the header before decoding: 2**27 pixels (e.g. 11,585²,
#: 400 MB as RGB). Below PIL's own bomb limit (2 x 89.5 MP), so our message is the one users see.
MAX_INPUT_PIXELS = 2**27
#: Larger inputs are downscaled to this longest side; outputs are at most 2048 px.
MAX_KEPT_SIDE = 2048
#: White, for transparent areas: Stable Cascade (like SV3D) expects objects on a plain background.
BACKGROUND = (255, 255, 255)
#: The EXIF tag phones use to say how a photo should be turned for display.
EXIF_ORIENTATION = 0x0112
#: What ``ImageOps.exif_transpose`` does for each EXIF orientation (1, or none, is upright).
EXIF_TURNS = {
    2: "mirrored left to right",
    3: "rotated 180°",
    4: "mirrored top to bottom",
    5: "mirrored left to right and rotated 90° counter-clockwise",
    6: "rotated 90° clockwise",
    7: "mirrored left to right and rotated 90° clockwise",
    8: "rotated 90° counter-clockwise",
}


@dataclass(frozen=True)
class InputImage:
    """A checked RGB picture and what was done to it."""

    image: Image.Image
    #: Width and height of the file as given (after EXIF rotation), before any downscale.
    original_size: tuple[int, int]
    #: Plain-language notes on conversions and fits, shown in the info JSON.
    notices: tuple[str, ...] = ()


def load_image(field: str, value: Any) -> InputImage:
    """Read ``value`` (a file path or a PIL image) into a checked RGB image.

    Raises:
        InputError: no image, an unreadable file, too small, or too large to decode safely.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(field, "no image given; upload a picture (PNG, JPEG or WebP)")
    if isinstance(value, Image.Image):
        _check_pixels(field, value.size)
        return _check(field, value, "the image", value.size)
    if not isinstance(value, (str, os.PathLike)):
        raise InputError(field, f"expected an image file, got {type(value).__name__}")
    if isinstance(name := os.fspath(value), str):
        # A lone surrogate (from JSON) names no file here, and could not be echoed in a UTF-8 error.
        check_unicode(field, name)
    path = Path(value)
    try:
        with Image.open(path) as opened:
            size = opened.size  # from the header: nothing is decoded yet
            _check_pixels(field, size)
            opened.draft("RGB", (MAX_KEPT_SIDE, MAX_KEPT_SIDE))  # JPEG only: decode at a lower scale
            opened.load()
            return _check(field, opened, path.name, size)
    except InputError:
        raise  # our own checks (an InputError is also a ValueError, caught below otherwise)
    except Image.DecompressionBombError as error:
        raise InputError(field, f"{path.name} is too large to decode safely ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        # PIL reports broken files with any of these (truncated data, bad headers, bad chunks).
        # The upload's temporary folder means nothing to the user: name the file only.
        detail = str(error).replace(str(path), path.name)[:200]
        raise InputError(field, f"could not read {path.name} as an image ({type(error).__name__}: "
                                f"{detail}); use a PNG, JPEG or WebP file") from error


def _check_pixels(field: str, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_INPUT_PIXELS:
        raise InputError(field, f"is {width}×{height} pixels, more than the {MAX_INPUT_PIXELS:,} pixels "
                                "accepted; downscale it first")


def _check(field: str, image: Image.Image, name: str, size: tuple[int, int]) -> InputImage:
    """Rotate, convert and fit a decoded image; ``size`` is the file's size before a JPEG draft."""
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    turn = EXIF_TURNS.get(orientation) if isinstance(orientation, int) else None
    if orientation in (5, 6, 7, 8):
        size = (size[1], size[0])  # a quarter turn: report the upright size
    # Always a new image (a copy when there is nothing to rotate): the caller's stays untouched.
    image = ImageOps.exif_transpose(image)
    width, height = size
    if min(width, height) < MIN_INPUT_SIDE:
        raise InputError(field, f"is {width}×{height} pixels; each side must be at least {MIN_INPUT_SIDE} pixels")
    notices = [f"input {turn} from its EXIF orientation"] if turn else []
    rgb, note = to_rgb(image)
    if note:
        notices.append(note)
    if max(rgb.size) > MAX_KEPT_SIDE or rgb.size != size:
        rgb.thumbnail((MAX_KEPT_SIDE, MAX_KEPT_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
        notices.append(f"input downscaled from {width}×{height} to {rgb.width}×{rgb.height}")
    logger.debug("input %s: %dx%d %s -> %dx%d RGB", name, width, height, image.mode, *rgb.size)
    return InputImage(rgb, (width, height), tuple(notices))


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """RGB version of ``image`` and a note when something visible changed (None for RGB input)."""
    mode = image.mode
    # Palette, gray and RGB images may mark a colour transparent (a tRNS chunk) instead of alpha.
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        flat = Image.alpha_composite(background, rgba).convert("RGB")
        return flat, f"{mode} input: transparent areas composited on white"
    if mode == "RGB":
        return image, None
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # PIL's convert() clips high bit depths at 255 (a white picture); scale to 8 bits instead.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(array.max()), 1.0)
        gray = np.clip(array / top * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB"), f"{mode} input converted to 8-bit RGB"
    return image.convert("RGB"), f"{mode} input converted to RGB"


def fit_output_size(width: int | None, height: int | None, image_size: tuple[int, int], area: int,
                    multiple: int, low: int, high: int, *, max_crop: float = 1 / 8) -> tuple[int, int]:
    """Output size for an input image when width and/or height is "from the input" (None).

    Both None: the grid size (each side a multiple of ``multiple`` in ``[low, high]``) that keeps
    the input's aspect ratio and comes nearest ``area`` pixels. Rounding each side of the exact
    size separately failed at small areas: on the tiny preset's 256² grid a 640×480 picture
    rounded to 256×256, cropping a quarter of it away. So the aspect comes first:

    1. Sizes whose aspect differs so little from the input's that covering the frame (the image
       is cropped to the output's aspect later) cuts at most ``max_crop`` of the picture are
       eligible: 1/8 lets 4:3 become 3:2 (1/9 cropped) but never a square (1/4 cropped).
    2. Of those, the one with the smallest sum of the two errors, ``|log(aspect / input's)|``
       + ``|log(pixels / area)|``, wins: at 1024² a 4:3 photo gets 1152×896 (close to both)
       rather than 1024×768 (exact aspect at 3/4 of the area); at 256², 384×256 (1.5 × the
       area) rather than 512×384 (exact aspect at 3 ×).
    3. When no size is eligible (an aspect beyond what ``[low, high]`` allows, e.g. 1:20),
       the closest aspect wins, then the nearest area.

    One None: that side follows the input's aspect from the other, snapped to the grid.
    """
    image_w, image_h = image_size
    aspect = image_w / image_h

    def snap(value: float) -> int:
        return int(min(max(round(value / multiple) * multiple, low), high))

    if width is None and height is None:
        sides = range(-(-low // multiple) * multiple, high // multiple * multiple + 1, multiple)
        limit = -math.log(1 - max_crop) + 1e-9  # the tolerance keeps an exact 1/8 crop eligible

        def errors(size: tuple[int, int]) -> tuple[float, float]:
            return abs(math.log(size[0] / size[1] / aspect)), abs(math.log(size[0] * size[1] / area))

        candidates = [(w, h) for w in sides for h in sides]
        eligible = [size for size in candidates if errors(size)[0] <= limit]
        if eligible:
            return min(eligible, key=lambda size: (sum(errors(size)), size))
        return min(candidates, key=lambda size: (*errors(size), size))
    if width is None:
        assert height is not None
        return snap(height * aspect), height
    if height is None:
        return width, snap(width / aspect)
    return width, height


__all__ = ["InputImage", "MAX_INPUT_PIXELS", "MAX_KEPT_SIDE", "MIN_INPUT_SIDE", "fit_output_size",
           "load_image", "to_rgb"]
