"""Hugging Face ZeroGPU: the GPU size the Space asks for, and the memory figures it plans with.

What the Spaces documentation ("Spaces ZeroGPU" in the hub docs, and the "zerogpu-aoti" blog post)
asks of an app, and where this one does it:

- A real GPU exists only inside functions wrapped with ``spaces.GPU``. Outside them ``spaces``
  emulates CUDA, so that models are put on ``cuda`` when the Space starts; loading or moving them
  inside a wrapped call is much slower. Each call runs in a process forked from the app, so
  whatever a call loads is lost with that process. ``Studio.preload`` therefore loads and places
  the preset's families before the app serves (``app.build_studio``).
- ``spaces`` must be imported before anything initialises CUDA (spaces 0.51 refuses to start
  otherwise), and only on ZeroGPU: ``import_spaces``.
- ``duration`` may be a function of the handler's own arguments: each tab passes its estimate to
  ``tabs.common.on_gpu``.
- ``torch.compile`` is not supported (ahead-of-time compilation is). Nothing on the app's path
  compiles; only ``bench/`` does, and it is not the app.
- The GPU comes in two sizes (``GpuSize``); ``SPACE_SIZE`` is the one every handler asks for.

There is no device to read outside a GPU call, so the memory manager plans with the size's memory
(``probe``, a ``FixedDeviceProbe``) instead of pynvml, and never pins host copies (pinning needs
the CUDA driver, which the app's own process does not have there).

This module imports neither torch nor ``spaces`` at import time.
"""

from __future__ import annotations

import os
from enum import Enum
from types import ModuleType
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from backends.runtime.probe import FixedDeviceProbe

#: The environment variable the platform sets on ZeroGPU Spaces, and the values ``spaces`` itself
#: reads as true (spaces 0.51 ``config.boolean``), so that we and the library agree on whether
#: ZeroGPU is on.
ENV = "SPACES_ZERO_GPU"
TRUE = ("1", "t", "true")


class GpuSize(str, Enum):
    """The ``size=`` of ``spaces.GPU``: what one call gets, as the Spaces docs list them."""

    LARGE = "large"  # the default: half an NVIDIA RTX Pro 6000 Blackwell, 48 GB, 1x quota
    XLARGE = "xlarge"  # the whole card, 96 GB; a call costs twice its seconds of the visitor's quota

    @property
    def vram_bytes(self) -> int:
        """Device memory of one call, in bytes.

        The docs' 48 and 96 GB are read as decimal gigabytes: spaces 0.51 reports the whole card
        as 101,973,950,464 bytes (95 GiB), so these figures are below what a call really has,
        and a plan made with them never overcommits the card.
        """
        return {GpuSize.LARGE: 48, GpuSize.XLARGE: 96}[self] * 10**9


#: What every GPU handler of the Space asks for. spaces 0.51 moves every tensor placed on ``cuda``
#: at start-up into each call's process, whichever handler it is, so one handler cannot ask for
#: less than the whole preload. The lite preset's families come to about 53 GB on the device
#: (Stable Cascade lite 5.4, SD3.5 Medium 6.8 plus its T5-XXL 9.5, SVD 4.5, SV3D_u and _p 9.3,
#: StableLM 2 1.6B 3.3, SDXL base and refiner 12.1, Stable Audio Open 2.7): over half a card,
#: and even without T5 (44 GB) the half card would leave little for activations. So the whole
#: card: twice the quota a second, which the docs reserve for work that needs the memory, as this
#: does.
SPACE_SIZE = GpuSize.XLARGE

#: The preset ``--preset auto`` means on ZeroGPU, where no GPU can be measured at start-up. lite
#: still: it is the richest shipped preset whose every family fits ``SPACE_SIZE`` with room for a
#: job. bf16 would want about 95 GB of weights (Stable Cascade 12.3, SD3.5 Large and Large Turbo
#: 16.3 each besides Medium, StableLM Zephyr 3B 5.6, ...), more than even the whole card.
SPACE_PRESET = "lite"

#: Device memory ``Studio.preload`` leaves free beside the preloaded weights, for one job's
#: activations (on top of the manager's own reserve): a sixth of the whole card. It is a target,
#: not a limit: a job that needs more makes the manager evict preloaded components inside the call.
PRELOAD_HEADROOM_BYTES = 16 * 10**9


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this is a ZeroGPU Space (the GPU exists only inside ``spaces.GPU`` calls)."""
    value = (os.environ if environ is None else environ).get(ENV)
    return value is not None and value.strip().lower() in TRUE


def import_spaces() -> ModuleType:
    """The ``spaces`` package, imported on ZeroGPU only.

    Called before the Studio asks torch whether CUDA exists: once imported, ``spaces`` emulates
    CUDA in this process (so the preload can place models on ``cuda``), and spaces 0.51 refuses
    to start if CUDA was initialised before it. The platform installs the package; so does
    ``requirements.txt``, pinned, though nothing imports it elsewhere.
    """
    import spaces  # ZeroGPU only: see the docstring

    return spaces


def probe(size: GpuSize = SPACE_SIZE) -> FixedDeviceProbe:
    """The memory probe of a ZeroGPU Space: the device is ``size``'s memory, free but for what
    the manager itself placed (a call has its slice to itself); RAM is read live."""
    from backends.runtime.probe import FixedDeviceProbe

    return FixedDeviceProbe(f"ZeroGPU {size.value} ({size.vram_bytes // 10**9} GB)", size.vram_bytes)


__all__ = ["GpuSize", "PRELOAD_HEADROOM_BYTES", "SPACE_PRESET", "SPACE_SIZE", "enabled", "import_spaces", "probe"]
