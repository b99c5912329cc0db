"""The System tab's summary line: device, memory and the dtype each family runs in, with the reason."""

from __future__ import annotations

from tabs.system import _summary

STATUS = {"device": "cpu", "preset": "cpu", "vram_free": 2**30, "vram_total": 2**31, "ram_free": 2**30,
          "ram_total": 2**31, "budget": None}


def test_the_summary_names_each_family_s_dtype_and_why() -> None:
    text = _summary({**STATUS, "dtypes": {"cascade": "float32", "stablelm": "float32"},
                     "dtype_reason": "auto: float32, the CPU (AVX2) has neither AVX512_BF16 nor AMX"})
    assert "**Device:** cpu · **Preset:** cpu" in text
    assert "**Device memory (CPU):**" in text
    assert text.endswith("**Dtypes:** cascade float32, stablelm float32 (auto: float32, the CPU (AVX2) has "
                         "neither AVX512_BF16 nor AMX)")


def test_a_status_without_dtypes_shows_no_dtype_line() -> None:
    assert "Dtypes" not in _summary(STATUS)
