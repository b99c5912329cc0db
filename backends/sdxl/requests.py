"""What SDXL adds to the shared SD requests: its options (the refiner) and its sampling defaults.

The requests themselves are ``backends.runtime.image_requests``' (re-exported here): the SD
endpoints take the same inputs whichever family serves the model. A request's ``options`` carry
this family's own knobs, checked here before any work, each error naming its field:

- ``refiner``: whether the refiner UNet takes over the last part of the schedule (a bool; JSON
  clients may send ``"true"`` / ``"false"``); default: the preset's;
- ``high_noise_frac``: the share of the schedule the base denoises first, strictly between 0 and
  1 (at 0 or 1 one of the two models would run no step); default: the preset's (0.8).

No torch here, so a tab validates options as cheaply as the rest of the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from backends.runtime.errors import InputError
from backends.runtime.image_requests import SdImageRequest, SdTextToImageRequest
from backends.runtime.requests import parse_float, shown
from backends.sdxl.spec import MODELS, SdxlSettings

#: What this family's tasks take: text-to-image's request, or img2img's and inpaint's.
SdxlRequest = SdTextToImageRequest | SdImageRequest
#: The option names this family reads from ``request.options``.
OPTION_NAMES = ("refiner", "high_noise_frac")
#: Text a JSON client may send for a bool.
_BOOL_TEXT = {"true": True, "false": False}


@dataclass(frozen=True)
class SdxlOptions:
    """A job's SDXL options, validated."""

    #: Whether the refiner denoises the steps after ``high_noise_frac``.
    refiner: bool
    #: Where the base hands over to the refiner (only read when ``refiner`` is on).
    high_noise_frac: float

    def as_dict(self) -> dict[str, Any]:
        return {"refiner": self.refiner, "high_noise_frac": self.high_noise_frac}


def parse_options(options: Mapping[str, Any] | None, settings: SdxlSettings) -> SdxlOptions:
    """Validate a request's ``options``; missing ones take the preset's defaults.

    Raises:
        InputError: an unknown option (field ``options``), or a bad value (the option's name).
    """
    options = dict(options or {})
    unknown = sorted(str(key) for key in options if key not in OPTION_NAMES)
    if unknown:
        raise InputError("options", f"unknown SDXL option {', '.join(map(repr, unknown))}; "
                                    f"known: {', '.join(OPTION_NAMES)}")
    defaults = settings.defaults
    refiner = _parse_bool("refiner", options.get("refiner", defaults.refiner))
    frac = options.get("high_noise_frac")
    frac = defaults.high_noise_frac if frac is None else frac
    return SdxlOptions(refiner=refiner, high_noise_frac=parse_high_noise_frac(frac))


def parse_high_noise_frac(value: Any) -> float:
    """A hand-over point strictly between 0 and 1."""
    frac = parse_float("high_noise_frac", value, 0.0, 1.0)
    if not 0.0 < frac < 1.0:
        raise InputError("high_noise_frac", f"must be strictly between 0 and 1 (the share of the steps the base "
                                            f"denoises before the refiner), got {shown(value)}")
    return frac


def _parse_bool(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
        return _BOOL_TEXT[value.strip().lower()]
    raise InputError(field, f"must be true or false, got {shown(value)}")


__all__ = ["MODELS", "OPTION_NAMES", "SdImageRequest", "SdTextToImageRequest", "SdxlOptions", "SdxlRequest",
           "parse_high_noise_frac", "parse_options"]
