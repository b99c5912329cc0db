"""The preset schema: the app-wide keys, plus one section per family built from the family specs.

Each family declares its own settings dataclass (one commented line per field) in its spec; here
they become the sections of one ``PresetSettings`` dataclass, made for the list of specs the app
runs. ``backends.runtime.presets`` checks YAML against it (unknown keys, wrong types, values outside
the allowed choices) and merges a sparse file over the defaults. A family's defaults are the lite
preset, the one most GPUs can run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from backends.runtime.spec import BackendSpec

#: Allowed values of the enumerated fields every family shares, by field name; the validator
#: quotes these in errors. A family's own enumerated field says its choices in its metadata,
#: ``field(default=..., metadata=choices("crop", "pad"))``.
CHOICES: dict[str, tuple[str, ...]] = {
    #: auto: bfloat16 on a CPU with AVX512_BF16 or AMX, else float32; on CUDA the family's
    #: default. The Studio resolves it once it has picked the device (``backends.runtime.cpu_dtype``).
    "dtype": ("bfloat16", "float16", "float32", "auto"),
    #: auto / gpu keep components resident and evict by LRU; offload moves each back after use;
    #: sequential streams blocks for cards too small for a whole component (``MemoryMode``).
    "memory_mode": ("auto", "gpu", "offload", "sequential"),
    "device": ("auto", "cuda", "cpu"),
}


def choices(*allowed: str) -> dict[str, tuple[str, ...]]:
    """Field metadata naming the values a preset may give a family's own enumerated field."""
    return {"choices": allowed}


def allowed_values(schema_field: dataclasses.Field[Any]) -> tuple[str, ...] | None:
    """The values ``schema_field`` may take, or None when any value of its type will do."""
    return schema_field.metadata.get("choices") or CHOICES.get(schema_field.name)


@dataclass
class PresetBase:
    """The app-wide keys of a preset; ``preset_schema`` adds one section per family."""

    #: The family specs the sections come from (the download plan reads their components).
    families: ClassVar[tuple[BackendSpec, ...]] = ()

    #: One line for the UI and the README.
    description: str = ""
    #: cuda, cpu, or auto (cuda when available).
    device: str = "auto"
    #: Smallest total VRAM, in GB, this preset is meant for; `--preset auto` uses it.
    min_vram_gb: float = 0.0
    #: The SD endpoints' default ``model`` (an empty ``model`` input); empty: the first one the
    #: families' ``offer`` lists name. It must fit the preset's VRAM class.
    sd_model: str = ""


def preset_schema(specs: Sequence[BackendSpec]) -> type[PresetBase]:
    """The ``PresetSettings`` dataclass for these families: ``PresetBase`` plus a section each.

    Section ``spec.settings_key`` holds a ``spec.settings`` instance with its defaults, so
    ``settings.cascade.prior`` reads as it would on a hand-written dataclass.
    """
    sections = [(spec.settings_key, spec.settings, field(default_factory=spec.settings)) for spec in specs]
    return dataclasses.make_dataclass("PresetSettings", sections, bases=(PresetBase,),
                                      namespace={"families": tuple(specs), "__module__": __name__})
