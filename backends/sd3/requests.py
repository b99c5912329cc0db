"""What SD3.5 adds to the shared SD requests: its options, its per-model defaults, and where T5 runs.

The requests themselves are ``backends.runtime.image_requests``' (re-exported here): the SD
endpoints take the same inputs whichever family serves the model. A request's ``options`` carry
this family's own knobs, checked here before any work, each error naming its field:

- ``max_sequence_length``: T5 tokens the prompt is padded or cut to, 77 to 512 (the pipelines
  refuse more; fewer than CLIP's 77 would only lose what CLIP reads anyway); default: the model's
  preset default (256, the pipelines' own);
- ``t5``: ``off`` skips T5 for this job (faster, weaker prompt following); otherwise it must be
  where this preset runs T5 (``t5_placement``): T5-XXL is 9.5 GB, and one request moving it
  between the CPU and the device would leave a second copy behind.

No torch here, so a tab validates options as cheaply as the rest of the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from backends.runtime.errors import InputError
from backends.runtime.image_requests import SdImageRequest, SdTextToImageRequest
from backends.runtime.requests import parse_int, shown
from backends.sd3.spec import DEFAULTS_KEYS, MODELS, T5_PLACEMENTS, Sd3ModelDefaults, Sd3Settings

#: T5 sequence lengths a request may ask for: CLIP's 77 up to the pipelines' limit of 512.
MIN_SEQUENCE_LENGTH, MAX_SEQUENCE_LENGTH = 77, 512
#: The option names this family reads from ``request.options``.
OPTION_NAMES = ("max_sequence_length", "t5")


@dataclass(frozen=True)
class Sd3Options:
    """A job's SD3.5 options, validated."""

    #: T5 tokens the prompt is padded or cut to.
    max_sequence_length: int
    #: Where T5 runs for this job: device, cpu or off.
    t5: str

    def as_dict(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length, "t5": self.t5}


def t5_placement(settings: Sd3Settings) -> str:
    """Where this preset runs T5: its ``t5``, except that memory mode gpu turns cpu into device.

    Memory mode gpu promises that every component runs on the device, so it wins over a preset's
    cpu. off stays off whatever the mode: a preset that turns T5 off may not have its weights.
    """
    if settings.t5 == "cpu" and settings.memory_mode == "gpu":
        return "device"
    return settings.t5


def model_defaults(settings: Sd3Settings, model: str) -> Sd3ModelDefaults:
    """The preset's defaults of ``model`` (one of ``MODELS``)."""
    if model not in DEFAULTS_KEYS:
        raise InputError("model", f"must be one of {', '.join(MODELS)}, got {shown(model)}")
    return getattr(settings.defaults, DEFAULTS_KEYS[model])


def check_offered(settings: Sd3Settings, model: str) -> None:
    """Refuse a model the preset does not offer (its weights are not part of the preset)."""
    if model not in settings.offer:
        raise InputError("model", f"must be one of {', '.join(settings.offer)} (this preset's SD3.5 models), "
                                  f"got {shown(model)}")


def parse_options(options: Mapping[str, Any] | None, settings: Sd3Settings, model: str) -> Sd3Options:
    """Validate a request's ``options`` for ``model``; missing ones take the preset's defaults.

    Raises:
        InputError: an unknown option (field ``options``), or a bad value (the option's name).
    """
    options = dict(options or {})
    unknown = sorted(str(key) for key in options if key not in OPTION_NAMES)
    if unknown:
        raise InputError("options", f"unknown SD3.5 option {', '.join(map(repr, unknown))}; "
                                    f"known: {', '.join(OPTION_NAMES)}")
    length = options.get("max_sequence_length")
    if length is None:
        length = model_defaults(settings, model).max_sequence_length
    length = parse_int("max_sequence_length", length, MIN_SEQUENCE_LENGTH, MAX_SEQUENCE_LENGTH)
    return Sd3Options(max_sequence_length=length, t5=_parse_t5(options.get("t5"), t5_placement(settings)))


def _parse_t5(value: Any, preset: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return preset
    if not isinstance(value, str) or value.strip() not in T5_PLACEMENTS:
        raise InputError("t5", f"must be one of {', '.join(T5_PLACEMENTS)}, got {shown(value)}")
    chosen = value.strip()
    if chosen in ("off", preset):
        return chosen
    if preset == "off":
        raise InputError("t5", f"this preset turns T5 off (sd3.t5 = off), so its weights are not part of it; "
                               f"got {chosen!r}. Use a preset that runs T5, or leave t5 empty")
    raise InputError("t5", f"this preset runs T5 on the {preset} (sd3.t5); a request may use it there or turn "
                           f"it off, got {chosen!r}")


__all__ = ["MAX_SEQUENCE_LENGTH", "MIN_SEQUENCE_LENGTH", "OPTION_NAMES", "SdImageRequest", "SdTextToImageRequest",
           "Sd3Options", "check_offered", "model_defaults", "parse_options", "t5_placement"]
