"""What a model family declares about itself, as data: the ``BackendSpec``.

Each family package (``backends/<family>/spec.py``) builds one ``BackendSpec``; ``backends/families.py``
lists them and hands the list to the registry, the preset loader and the download plan. Nothing in
the runtime names a family: everything it knows of one comes through its spec. Modelled on timm's
``PretrainedCfg``: a frozen dataclass with one commented line per field.

This module imports no torch, so listing the families costs nothing at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from backends.runtime.tiny import TinyFamily


@dataclass(frozen=True)
class BackendSpec:
    """One model family, declared as data; the weights' sources come from the preset section."""

    #: Registry name, also the prefix of its component names in ``/status`` (``cascade.prior``).
    name: str
    #: Human name for the UI and messages.
    family: str
    #: Tasks it serves; each task belongs to exactly one backend.
    tasks: tuple[str, ...]
    #: ``module:Class`` imported on first use, constructed as ``Class(settings, manager, ctx)``.
    factory: str
    #: The settings dataclass of its preset section, with the defaults (the lite preset's).
    settings: type
    #: License of the released weights, shown in the UI and the README.
    license: str
    license_url: str
    #: Settings keys whose sources are model components (``cascade.prior`` in ``/status``).
    components: tuple[str, ...] = ()
    #: Parameter counts (millions) by the source's subfolder, or its repo for root-level models,
    #: for size estimates before anything loads (from the real configs, see NOTES.md).
    params_m: Mapping[str, float] = field(default_factory=dict, hash=False)
    #: Settings keys whose source is read as one file rather than with ``from_pretrained``, and
    #: that file's name (``effnet`` -> ``effnet_encoder.safetensors``); the download plan fetches
    #: exactly that file.
    files: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: How ``tiny:<name>`` sources of this family are built (the tiny preset); None: no tiny model.
    tiny: TinyFamily | None = None
    #: The ``model`` values of the SD endpoints this family serves (``sd3.5-medium``, ``sdxl``);
    #: its settings' ``offer`` says which of them a preset offers. Its tasks for them are
    #: ``<name>_text_to_image``, ``<name>_img2img`` and ``<name>_inpaint``.
    models: tuple[str, ...] = ()

    @property
    def settings_key(self) -> str:
        """The preset section holding this family's settings: its registry name."""
        return self.name
