"""Requests of the families behind the SD endpoints: text-to-image, img2img and inpaint with a ``model``.

``/generate_image_sd``, ``/img2img_sd`` and ``/inpaint`` take the same inputs whichever family
serves the chosen model (SD3.5 or SDXL), so their validation lives here once rather than in each
family's ``requests.py``; a family adds its own options (``options``: the T5 sequence length, the
refiner) from the tab's extra controls or its preset defaults. The runtime still names no family:
the models a request may name come from the caller (the preset's offer).

This module imports no torch (PIL only when an image is read). Every check raises ``InputError``
naming the public field, as DESIGN.md's API table spells it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from backends.runtime.errors import InputError
from backends.runtime.requests import parse_float, parse_int, parse_seed, parse_text, shown

#: Both families' latents are 1/8 of the image and their UNet / transformer patches halve it
#: again with 2 down-samplings (SDXL) or 2x2 patches (SD3), so sizes are multiples of 64 (DESIGN.md).
SIZE_MULTIPLE = 64
MIN_SIZE = 256
MAX_SIZE = 2048
MAX_IMAGES = 4
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
#: Output area aimed at when img2img's size comes from the picture (1024², both families' size).
DEFAULT_AREA = 1024 * 1024
#: Mask pixels at or above this (of 255) are repainted; below it kept (after the feather).
MASK_THRESHOLD = 128


def parse_sd_size(field_name: str, value: Any) -> int:
    """A width or height: a multiple of ``SIZE_MULTIPLE`` in ``[MIN_SIZE, MAX_SIZE]``."""
    size = parse_int(field_name, value, MIN_SIZE, MAX_SIZE)
    if size % SIZE_MULTIPLE:
        lower = size // SIZE_MULTIPLE * SIZE_MULTIPLE
        near = f"{max(lower, MIN_SIZE)} or {min(lower + SIZE_MULTIPLE, MAX_SIZE)}"
        raise InputError(field_name, f"must be a multiple of {SIZE_MULTIPLE} between {MIN_SIZE} and {MAX_SIZE}, "
                                     f"got {size} (try {near})")
    return size


def parse_size_or_auto(field_name: str, value: Any) -> int | None:
    """A size, or None for 0 / empty ("from the picture")."""
    if value is None or value == 0 or (isinstance(value, str) and value.strip() in ("", "0", "0.0")):
        return None
    return parse_sd_size(field_name, value)


def parse_model(value: Any, offered: Sequence[str], default: str) -> str:
    """The ``model`` input: one the preset offers; empty means the preset's default."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if not isinstance(value, str) or value.strip() not in offered:
        raise InputError("model", f"must be one of {', '.join(offered)} (this preset's models) or empty for "
                                  f"{default}, got {shown(value)}")
    return value.strip()


def _prompts(prompt: Any, negative_prompt: Any) -> tuple[str, str, tuple[str, ...]]:
    text, cut = parse_text("prompt", prompt)
    if not text.strip():
        raise InputError("prompt", "is empty; describe the image you want")
    negative, cut_negative = parse_text("negative_prompt", negative_prompt)
    return text, negative, tuple(n for n, was in (("prompt", cut), ("negative_prompt", cut_negative)) if was)


def _sampling(sampling: Mapping[str, Any]) -> dict[str, Any]:
    """Steps and guidance that the img2img and inpaint contracts leave to the preset."""
    return dict(steps=parse_int("steps", sampling.get("steps", 30), 1, MAX_STEPS),
                guidance=parse_float("guidance", sampling.get("guidance", 5.0), 0.0, MAX_GUIDANCE))


@dataclass(frozen=True)
class SdTextToImageRequest:
    """One text-to-image job for an SD-endpoint model; ``seed`` is never -1 here."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    num_images: int
    seed: int
    model: str
    #: The family's own settings for this job (e.g. ``max_sequence_length``, ``refiner``).
    options: Mapping[str, Any] = field(default_factory=dict)
    truncated: tuple[str, ...] = ()

    @classmethod
    def build(cls, prompt: Any, negative_prompt: Any, width: Any, height: Any, steps: Any, guidance: Any,
              num_images: Any, seed: Any, model: Any, *, offered: Sequence[str], default_model: str,
              options: Mapping[str, Any] | None = None) -> "SdTextToImageRequest":
        """Validate raw inputs in the ``/generate_image_sd`` order."""
        text, negative, truncated = _prompts(prompt, negative_prompt)
        return cls(prompt=text, negative_prompt=negative, width=parse_sd_size("width", width),
                   height=parse_sd_size("height", height), steps=parse_int("steps", steps, 1, MAX_STEPS),
                   guidance=parse_float("guidance", guidance, 0.0, MAX_GUIDANCE),
                   num_images=parse_int("num_images", num_images, 1, MAX_IMAGES), seed=parse_seed("seed", seed),
                   model=parse_model(model, offered, default_model), options=dict(options or {}),
                   truncated=truncated)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able parameters, for the info and the PNG metadata."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["options"], data["truncated"] = dict(self.options), list(self.truncated)
        return data


@dataclass(frozen=True)
class SdImageRequest:
    """img2img or inpaint: a picture (and for inpaint a mask) noised to ``strength`` and denoised again."""

    #: The checked RGB input, already at the output size.
    image: Any
    prompt: str
    negative_prompt: str
    strength: float
    width: int
    height: int
    seed: int
    model: str
    steps: int
    guidance: float
    #: Inpaint only: an L-mode picture of the output size, white = repaint; None for img2img.
    mask: Any = None
    num_images: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int] = (0, 0)
    notices: tuple[str, ...] = ()
    truncated: tuple[str, ...] = ()

    @classmethod
    def img2img(cls, image: Any, prompt: Any, negative_prompt: Any, strength: Any, width: Any, height: Any,
                seed: Any, model: Any, *, offered: Sequence[str], default_model: str,
                sampling: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
                area: int = DEFAULT_AREA) -> "SdImageRequest":
        """Validate raw inputs in the ``/img2img_sd`` order; width and height 0 follow the picture."""
        from backends.runtime.image_input import fit_output_size, load_image  # PIL: only when used

        checked = load_image("image", image)
        text, negative, truncated = _prompts(prompt, negative_prompt)
        strength_value = parse_float("strength", strength, 0.0, 1.0)
        given_w, given_h = parse_size_or_auto("width", width), parse_size_or_auto("height", height)
        seed_value = parse_seed("seed", seed)
        chosen = parse_model(model, offered, default_model)
        out = fit_output_size(given_w, given_h, checked.image.size, area, SIZE_MULTIPLE, MIN_SIZE, MAX_SIZE)
        notices = list(checked.notices)
        if given_w is None or given_h is None:
            notices.append(f"output size {out[0]}×{out[1]} from the input's aspect ratio")
        picture = _cover(checked.image, out, notices)
        return cls(image=picture, prompt=text, negative_prompt=negative, strength=strength_value, width=out[0],
                   height=out[1], seed=seed_value, model=chosen, options=dict(options or {}),
                   input_size=checked.original_size, notices=tuple(notices), truncated=truncated,
                   **_sampling(sampling or {}))

    @classmethod
    def inpaint(cls, image: Any, mask: Any, prompt: Any, negative_prompt: Any, strength: Any, seed: Any,
                model: Any, *, offered: Sequence[str], default_model: str,
                sampling: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
                area: int = DEFAULT_AREA) -> "SdImageRequest":
        """Validate raw inputs in the ``/inpaint`` order.

        The output keeps the picture's size when that is already on the 64 px grid in range
        (so the kept pixels are the input's own); otherwise the grid size nearest it in aspect
        and area, with the mask resized alike.
        """
        from backends.runtime.image_input import fit_output_size, load_image

        checked = load_image("image", image)
        marks = load_mask(mask, checked.image.size, checked.original_size)
        text, negative, truncated = _prompts(prompt, negative_prompt)
        strength_value = parse_float("strength", strength, 0.0, 1.0)
        seed_value = parse_seed("seed", seed)
        chosen = parse_model(model, offered, default_model)
        width, height = checked.image.size
        on_grid = (width % SIZE_MULTIPLE == 0 and height % SIZE_MULTIPLE == 0
                   and MIN_SIZE <= min(width, height) and max(width, height) <= MAX_SIZE)
        out = (width, height) if on_grid else fit_output_size(None, None, checked.image.size, area, SIZE_MULTIPLE,
                                                              MIN_SIZE, MAX_SIZE)
        notices = list(checked.notices)
        picture = _cover(checked.image, out, notices)
        if picture.size != marks.size:
            marks = _cover(marks, out, [])
        return cls(image=picture, mask=marks, prompt=text, negative_prompt=negative, strength=strength_value,
                   width=out[0], height=out[1], seed=seed_value, model=chosen, options=dict(options or {}),
                   input_size=checked.original_size, notices=tuple(notices), truncated=truncated,
                   **_sampling(sampling or {}))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able parameters (image and mask are described, not embedded)."""
        skip = ("image", "mask", "notices")
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in skip}
        data["options"], data["truncated"] = dict(self.options), list(self.truncated)
        data["input_size"] = list(self.input_size)
        if self.mask is not None:
            data["mask_fraction"] = round(mask_fraction(self.mask), 4)
        return data


def load_mask(value: Any, image_size: tuple[int, int], original_size: tuple[int, int] | None = None) -> Any:
    """The ``mask`` input as an L-mode picture of ``image_size``: white (or opaque) = repaint.

    ``original_size`` is the picture's size as given, when ``load_image`` downscaled it to
    ``image_size``: the mask must match the picture as the user drew on it.

    Accepts a file path or a PIL image. An RGBA mask (a drawn layer) counts its alpha; an RGB one
    its brightness. Raises ``InputError`` for a missing, unreadable, wrongly sized or empty mask.
    """
    from PIL import Image

    from backends.runtime.image_input import load_image

    if isinstance(value, Image.Image) and value.mode in ("RGBA", "LA", "PA"):
        marks = value.getchannel("A") if value.mode != "PA" else value.convert("RGBA").getchannel("A")
        size = value.size
    else:
        if isinstance(value, Image.Image) and value.mode in ("L", "1"):
            marks, size = value.convert("L"), value.size
        else:
            checked = load_image("mask", value)
            marks, size = checked.image.convert("L"), checked.original_size
    expected = original_size or image_size
    if size != expected:
        raise InputError("mask", f"is {size[0]}×{size[1]} but the image is {expected[0]}×{expected[1]}; "
                                 "draw the mask on the picture or upload one of the same size")
    if marks.size != image_size:  # a large input was downscaled by load_image: follow it
        marks = marks.resize(image_size, Image.Resampling.NEAREST)
    if mask_fraction(marks) == 0:
        raise InputError("mask", "is empty: paint the area to repaint in white (or draw on the picture)")
    return marks


def mask_fraction(mask: Any) -> float:
    """The share of pixels at or above ``MASK_THRESHOLD``, i.e. those to repaint."""
    histogram = mask.convert("L").histogram()
    return sum(histogram[MASK_THRESHOLD:]) / max(sum(histogram), 1)


def _cover(image: Any, size: tuple[int, int], notices: list[str]) -> Any:
    """``image`` scaled to cover ``size`` and centre-cropped to it; a notice when it changed."""
    from PIL import ImageOps

    if image.size == tuple(size):
        return image
    notices.append(f"input fitted from {image.width}×{image.height} to {size[0]}×{size[1]}")
    return ImageOps.fit(image, tuple(size), method=3)  # 3: bicubic
