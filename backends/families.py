"""The one list of model families the app serves, and the runtime bound to it.

Adding a family is one new package under ``backends/`` with a ``spec.py``, one line in
``FAMILIES``, a section in each preset, and its tab (docs/architecture.md). The runtime
(``backends.runtime``) never imports this module or any family: it is handed these specs.

Importing this module imports each family's ``spec`` only: settings dataclasses and data, no
torch. A family's backend and tiny builder are imported on first use, by name.
"""

from __future__ import annotations

from pathlib import Path

from backends.audio.spec import SPEC as AUDIO
from backends.cascade.spec import SPEC as CASCADE
from backends.runtime import presets
from backends.runtime.loading import LoadContext
from backends.runtime.settings import preset_schema
from backends.runtime.spec import BackendSpec
from backends.runtime.tiny import TinyModels
from backends.sd3.spec import SPEC as SD3
from backends.sdxl.spec import SPEC as SDXL
from backends.stablelm.spec import SPEC as STABLELM
from backends.sv3d.spec import SPEC as SV3D
from backends.svd.spec import SPEC as SVD

#: Every family, in the order ``/status`` and the System tab list them.
FAMILIES: tuple[BackendSpec, ...] = (CASCADE, SD3, SVD, SV3D, STABLELM, SDXL, AUDIO)

#: The preset schema: the app-wide keys plus one section per family (``settings.cascade``, ...).
PresetSettings = preset_schema(FAMILIES)

#: The tiny random-weight families the families declare (``tiny:cascade``, ...).
TINY = TinyModels(spec.tiny for spec in FAMILIES if spec.tiny is not None)


def load_preset(name: str, presets_dir: Path = presets.PRESETS_DIR) -> presets.Preset:
    """Load, validate and merge preset ``name`` against these families' settings."""
    return presets.load(name, PresetSettings, presets_dir)


def load_context(cache_dir: Path, models_dir: Path | None = None, offline: bool = False) -> LoadContext:
    """A ``LoadContext`` that can build these families' tiny models (for tests and benchmarks)."""
    return LoadContext(cache_dir=Path(cache_dir), models_dir=models_dir, offline=offline, tiny=TINY)
