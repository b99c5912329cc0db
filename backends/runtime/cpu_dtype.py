"""The ``auto`` dtype: bfloat16 on a CPU with fast bf16, float32 on one without.

A preset section may say ``dtype: auto`` (the cpu preset does, for every family). The Studio
resolves it once, after it has picked the device, so backends only ever see a concrete dtype:

* **CPU with AVX512_BF16 or AMX** (Intel Cooper Lake and Sapphire Rapids on, AMD Zen 4 on):
  bfloat16. oneDNN has native bf16 matmul and convolution there, and at batch 1 a decode step
  reads every weight once, so half the bytes is nearly half the time. The December 2026 review
  measured the StableLM 2 1.6B shape through our decode loop at 5.0 tokens/s in bf16 against
  1.28 in float32 on such a machine (NOTES.md).
* **Any other CPU** (AVX2 only, AVX512 without BF16, ARM): float32. There torch emulates bf16
  by converting to float32 in its kernels, which costs more than the halved memory traffic saves.
  Measured on an AMD EPYC (Zen 3, AVX2, 2 cores) with torch 2.13 (``python -m bench.cpu_dtype``,
  three runs): the StableLM 2 1.6B shape 1.4-1.7x slower end to end in bf16 (prefill of 77
  tokens 32-35 s against 16-18 s; decode 0.69-0.74 tokens/s against 0.78-0.92), one stage C
  lite layer at 768x768 5-7x slower; a lone 1x2048 @ 2048x5632 product was faster in bf16 only
  on a quiet machine, and a 3x3 convolution (320 channels, 64x64) was 460x slower.
* **CUDA**: ``auto`` means the family's own default dtype (its spec's settings, the lite
  preset's: bfloat16 for Stable Cascade and StableLM, float16 for SVD and SV3D).

Per component, nothing needs float32 on quality grounds where bf16 is fast: bf16 keeps float32's
exponent range, so the overflow that makes SVD's and SV3D's VAEs upcast from float16 cannot
happen; stage A (the Paella VQGAN, real architecture, random weights) decoded in bf16 differs
from float32 by at most 0.0020 of full scale, half an 8-bit level (mean 0.00018,
bench/cpu_dtype.py); and the official Stable Cascade and StableLM 2 releases run in bf16.
SV3D's VAE stays float32 anyway: its backend keeps it so.

Which features the CPU has is read once per process, on first use (``read_cpu_features``); no
timed probe, because on a shared 2-core machine a timing says more about the neighbours than
about the CPU, and the feature flags are exact. Tests pass their own ``CpuFeatures``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

logger = logging.getLogger(__name__)

#: The dtype value that asks for this resolution.
AUTO = "auto"


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU offers bf16 math, as torch sees it."""

    #: ``torch.backends.cpu.get_cpu_capability()``: the widest vector ISA torch's own kernels use
    #: (``AVX512``, ``AVX2``, ``DEFAULT``, ``SVE256``, ...). AVX512 alone does not mean bf16.
    capability: str
    #: The AVX512_BF16 instructions (``vdpbf16ps``): native bf16 dot products.
    avx512_bf16: bool
    #: Intel AMX tiles, whose matrix unit works in bf16.
    amx: bool

    @property
    def fast_bf16(self) -> bool:
        """Whether bf16 matmul and convolution run natively (not emulated in float32)."""
        return self.avx512_bf16 or self.amx


@functools.cache
def read_cpu_features() -> CpuFeatures:
    """This machine's ``CpuFeatures``, read once per process (the CPU does not change under it)."""
    import torch

    return CpuFeatures(capability=torch.backends.cpu.get_cpu_capability(),
                       avx512_bf16=_torch_cpu_flag(torch, "_is_avx512_bf16_supported"),
                       amx=_torch_cpu_flag(torch, "_is_amx_tile_supported"))


def _torch_cpu_flag(torch: Any, name: str) -> bool:
    """One of ``torch.cpu``'s private feature checks (present in torch 2.3 to 2.13, our pin).

    They are private, so a torch without one is logged and counted as "no": float32 is never
    wrong, only slower.
    """
    check = getattr(torch.cpu, name, None)
    if check is None:
        logger.warning("torch %s has no torch.cpu.%s; assuming the CPU lacks it (dtype auto -> float32)",
                       torch.__version__, name)
        return False
    return bool(check())


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype each family runs in, and why: what ``/status`` reports."""

    #: Family settings key -> the concrete dtype its backend sees.
    dtypes: Mapping[str, str]
    #: The families whose preset said ``auto``.
    auto: tuple[str, ...]
    #: The CPU's features when the device is the CPU (read then, once); None on CUDA.
    features: CpuFeatures | None
    #: One sentence: what ``auto`` became and why.
    reason: str

    def status(self) -> dict[str, Any]:
        """The ``/status`` keys: ``dtypes``, ``cpu_capability``, ``cpu_bf16``, ``dtype_reason``."""
        return {"dtypes": dict(self.dtypes),
                "cpu_capability": self.features.capability if self.features else None,
                "cpu_bf16": self.features.fast_bf16 if self.features else None,
                "dtype_reason": self.reason}


def resolve(settings: Any, device_type: str,
            features: Callable[[], CpuFeatures] = read_cpu_features) -> tuple[Any, DtypeChoice]:
    """``settings`` (a ``PresetSettings``) with every ``dtype: auto`` made concrete for ``device_type``.

    Args:
        settings: the merged preset; each family section (``settings.families``) has a ``dtype``.
        device_type: ``cpu`` or ``cuda``, the device the Studio picked.
        features: reads the CPU's features (tests pass their own); called only on the CPU.

    Returns:
        A copy of ``settings`` with concrete dtypes (the same object when none said ``auto``),
        and the ``DtypeChoice`` for ``/status``.
    """
    cpu = features() if device_type == "cpu" else None
    auto_dtype = ("bfloat16" if cpu.fast_bf16 else "float32") if cpu is not None else None
    changes: dict[str, Any] = {}
    dtypes: dict[str, str] = {}
    for spec in settings.families:
        section = getattr(settings, spec.settings_key)
        dtype = section.dtype
        if dtype == AUTO:
            dtype = auto_dtype or spec.settings().dtype  # CUDA: the family's own default
            changes[spec.settings_key] = dataclasses.replace(section, dtype=dtype)
        dtypes[spec.settings_key] = dtype
    auto = tuple(changes)
    choice = DtypeChoice(dtypes, auto, cpu, _reason(auto, cpu))
    if auto:
        logger.info("dtype auto -> %s (%s)", ", ".join(f"{k} {dtypes[k]}" for k in auto), choice.reason)
    return (dataclasses.replace(settings, **changes) if changes else settings), choice


def _reason(auto: tuple[str, ...], cpu: CpuFeatures | None) -> str:
    if not auto:
        return "the preset names every dtype"
    if cpu is None:
        return "auto on CUDA: each family's default dtype"
    if cpu.fast_bf16:
        found = " and ".join(name for name, has in (("AVX512_BF16", cpu.avx512_bf16), ("AMX", cpu.amx)) if has)
        return f"auto: bfloat16, the CPU has {found} (native bf16 matmul and convolution)"
    return (f"auto: float32, the CPU ({cpu.capability}) has neither AVX512_BF16 nor AMX, so torch "
            "would emulate bf16 (slower prefill and image models)")
