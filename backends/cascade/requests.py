"""Stable Cascade's requests: text-to-image, variation and img2img, validated before any model runs.

This module imports no torch, so tabs can build and validate requests cheaply. Every check raises
``InputError`` naming the public field (as in DESIGN.md's API table) and the allowed values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from backends.runtime.errors import InputError
from backends.runtime.requests import parse_float, parse_int, parse_seed, parse_text

#: Stable Cascade compresses 42.67x into stage C and 4x in stage A, so sizes that are multiples of
#: 128 (= 3 stage C latent pixels) come back at exactly the size asked for; other sizes would be
#: silently rounded by the pipeline.
SIZE_MULTIPLE = 128
MIN_SIZE = 256
MAX_SIZE = 2048
MAX_IMAGES = 4
MAX_PRIOR_STEPS = 100
MAX_DECODER_STEPS = 50
MAX_GUIDANCE = 20.0

def parse_size(field: str, value: Any) -> int:
    """A width or height: a multiple of ``SIZE_MULTIPLE`` in ``[MIN_SIZE, MAX_SIZE]``."""
    size = parse_int(field, value, MIN_SIZE, MAX_SIZE)
    if size % SIZE_MULTIPLE:
        lower = size // SIZE_MULTIPLE * SIZE_MULTIPLE
        raise InputError(
            field,
            f"must be a multiple of {SIZE_MULTIPLE} between {MIN_SIZE} and {MAX_SIZE}, got {size} "
            f"(try {max(lower, MIN_SIZE)} or {min(lower + SIZE_MULTIPLE, MAX_SIZE)})",
        )
    return size



@dataclass(frozen=True)
class TextToImageRequest:
    """One Stable Cascade text-to-image job, already validated; ``seed`` is never -1 here."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    prior_steps: int
    decoder_steps: int
    prior_guidance: float
    decoder_guidance: float
    num_images: int
    seed: int
    #: Fields whose text was cut to MAX_PROMPT_CHARS, reported to the user in the info.
    truncated: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        prompt: Any,
        negative_prompt: Any,
        width: Any,
        height: Any,
        prior_steps: Any,
        decoder_steps: Any,
        prior_guidance: Any,
        decoder_guidance: Any,
        num_images: Any,
        seed: Any,
    ) -> "TextToImageRequest":
        """Validate raw inputs (in the ``/generate_image`` order) into a request."""
        text, cut = parse_text("prompt", prompt)
        if not text.strip():
            raise InputError("prompt", "is empty; describe the image you want")
        negative, cut_negative = parse_text("negative_prompt", negative_prompt)
        return cls(
            prompt=text,
            negative_prompt=negative,
            width=parse_size("width", width),
            height=parse_size("height", height),
            prior_steps=parse_int("prior_steps", prior_steps, 1, MAX_PRIOR_STEPS),
            decoder_steps=parse_int("decoder_steps", decoder_steps, 1, MAX_DECODER_STEPS),
            prior_guidance=parse_float("prior_guidance", prior_guidance, 0.0, MAX_GUIDANCE),
            decoder_guidance=parse_float("decoder_guidance", decoder_guidance, 0.0, MAX_GUIDANCE),
            num_images=parse_int("num_images", num_images, 1, MAX_IMAGES),
            seed=parse_seed("seed", seed),
            truncated=tuple(name for name, was in (("prompt", cut), ("negative_prompt", cut_negative)) if was),
        )

    def as_dict(self) -> dict[str, Any]:
        """The parameters as plain JSON-able values (for info and the PNG metadata)."""
        data = asdict(self)
        data["truncated"] = list(self.truncated)
        return data


# ----- image-conditioned Stable Cascade (variation and img2img) --------------------------------

#: Output area when width and height come from the input image: the preset's default size.
#: ``fit_output_size`` keeps the input's aspect first and this area second (its docstring says how).
DEFAULT_AREA = 1024 * 1024
#: An img2img crop to the output's aspect of at least this much of the picture is reported in the
#: notices; less is rounding (a 1000×1000 photo at 1024² loses 2 px a side).
NOTED_CROP = 0.005


def _crop_notice(image_size: tuple[int, int], output_size: tuple[int, int]) -> str | None:
    """What img2img's crop to the output's aspect cuts from the picture; None when it is rounding.

    img2img encodes the input scaled to cover the output and centre-cropped, so a size that does
    not match the input's aspect loses the picture's edges, and the user should know how much.
    (Variations need no such notice: the CLIP image encoder sees its own 224 px centre crop
    whatever the output's size.)
    """
    (in_w, in_h), (out_w, out_h) = image_size, output_size
    ratio = (out_w / out_h) / (in_w / in_h)
    crop = 1 - min(ratio, 1 / ratio)
    if crop < NOTED_CROP:
        return None
    return (f"input aspect {in_w / in_h:.2f} cropped to the output's {out_w / out_h:.2f}: {crop:.0%} of the "
            "picture cut at its edges")


def parse_size_or_auto(field: str, value: Any) -> int | None:
    """Like ``parse_size``, but 0, empty or None means "from the input image" (returns None)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0:
        return None
    if isinstance(value, str) and value.strip() in ("0", "0.0"):
        return None
    return parse_size(field, value)


@dataclass(frozen=True)
class _ImageJob:
    """Fields shared by the image-conditioned requests; ``seed`` is never -1 here."""

    #: The checked RGB input (at most 2048 px a side; see ``backends.runtime.image_input``).
    image: Any
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_images: int
    seed: int
    #: Sampling settings the contract leaves to the preset (its ``cascade.defaults``).
    prior_steps: int
    decoder_steps: int
    prior_guidance: float
    decoder_guidance: float
    #: The input's size before any fit, for the info.
    input_size: tuple[int, int] = (0, 0)
    #: Conversions and fits applied to the input, reported in the info.
    notices: tuple[str, ...] = ()
    #: Fields whose text was cut to MAX_PROMPT_CHARS.
    truncated: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-able parameters (the image itself is described by its size, not embedded)."""
        data = {f: getattr(self, f) for f in self.__dataclass_fields__ if f not in ("image", "notices")}
        data["input_size"] = list(self.input_size)
        data["truncated"] = list(self.truncated)
        return data


def _image_fields(image: Any, prompt: Any, negative_prompt: Any, width: Any, height: Any,
                  sampling: dict[str, Any], area: int) -> dict[str, Any]:
    """Validate the fields both image requests share, in contract order; fit the size."""
    from backends.runtime.image_input import fit_output_size, load_image  # PIL: only when used

    checked = load_image("image", image)
    text, cut = parse_text("prompt", prompt)
    negative, cut_negative = parse_text("negative_prompt", negative_prompt)
    given_w, given_h = parse_size_or_auto("width", width), parse_size_or_auto("height", height)
    out_w, out_h = fit_output_size(given_w, given_h, checked.image.size, area, SIZE_MULTIPLE, MIN_SIZE, MAX_SIZE)
    notices = list(checked.notices)
    if given_w is None or given_h is None:
        notices.append(f"output size {out_w}×{out_h} from the input's aspect ratio")
    return dict(
        image=checked.image, prompt=text, negative_prompt=negative, width=out_w, height=out_h,
        prior_steps=parse_int("prior_steps", sampling.get("prior_steps", 20), 1, MAX_PRIOR_STEPS),
        decoder_steps=parse_int("decoder_steps", sampling.get("decoder_steps", 10), 1, MAX_DECODER_STEPS),
        prior_guidance=parse_float("prior_guidance", sampling.get("prior_guidance", 4.0), 0.0, MAX_GUIDANCE),
        decoder_guidance=parse_float("decoder_guidance", sampling.get("decoder_guidance", 0.0), 0.0, MAX_GUIDANCE),
        input_size=checked.original_size, notices=tuple(notices),
        truncated=tuple(name for name, was in (("prompt", cut), ("negative_prompt", cut_negative)) if was),
    )


@dataclass(frozen=True)
class ImageVariationRequest(_ImageJob):
    """Variations of an image: its CLIP image embedding conditions stage C (plus an optional prompt)."""

    @classmethod
    def build(cls, image: Any, prompt: Any, negative_prompt: Any, width: Any, height: Any,
              num_images: Any, seed: Any, *, area: int = DEFAULT_AREA,
              sampling: dict[str, Any] | None = None) -> "ImageVariationRequest":
        """Validate raw inputs in the ``/image_variation`` order.

        Args:
            image: a file path or PIL image; see ``backends.runtime.image_input`` for the rules.
            width, height: a size like text-to-image, or 0 / empty for "from the input".
            area: output pixels aimed at when the size comes from the input (the preset's default).
            sampling: ``prior_steps``, ``decoder_steps``, ``prior_guidance``, ``decoder_guidance``
                (the preset's defaults; the contract does not expose them).
        """
        fields = _image_fields(image, prompt, negative_prompt, width, height, sampling or {}, area)
        return cls(num_images=parse_int("num_images", num_images, 1, MAX_IMAGES),
                   seed=parse_seed("seed", seed), **fields)


@dataclass(frozen=True)
class Img2ImgRequest(_ImageJob):
    """img2img: the image's stage C latent, noised to ``strength``, denoised again with the prompt."""

    #: 0 keeps the input's latent as it is, 1 ignores the input (plain text-to-image).
    strength: float = 0.8

    @classmethod
    def build(cls, image: Any, prompt: Any, negative_prompt: Any, strength: Any, width: Any, height: Any,
              seed: Any, *, area: int = DEFAULT_AREA,
              sampling: dict[str, Any] | None = None) -> "Img2ImgRequest":
        """Validate raw inputs in the ``/img2img`` order (one image per request, as in the contract).

        Args: as ``ImageVariationRequest.build``; ``strength`` is a number in [0, 1].
        """
        fields = _image_fields(image, prompt, negative_prompt, width, height, sampling or {}, area)
        crop = _crop_notice(fields["image"].size, (fields["width"], fields["height"]))
        if crop:
            fields["notices"] += (crop,)
        return cls(strength=parse_float("strength", strength, 0.0, 1.0), num_images=1,
                   seed=parse_seed("seed", seed), **fields)
