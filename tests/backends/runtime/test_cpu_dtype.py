"""dtype auto: bfloat16 on a CPU with native bf16, float32 on one without, the family default on CUDA.

The CPU's features are injected (``CpuFeatures``), so these tests say the same on any machine.
"""

from __future__ import annotations

import logging
import types
from pathlib import Path

import pytest

from backends.families import FAMILIES, load_preset
from backends.runtime import cpu_dtype, presets
from backends.runtime.cpu_dtype import CpuFeatures, resolve
from backends.runtime.loading import torch_dtype
from backends.runtime.presets import PresetError
from backends.runtime.probe import FakeProbe
from backends.runtime.studio import Studio, StudioConfig

GB = 10**9
SAPPHIRE_RAPIDS = CpuFeatures(capability="AVX512", avx512_bf16=True, amx=True)
ZEN4 = CpuFeatures(capability="AVX512", avx512_bf16=True, amx=False)
ZEN3 = CpuFeatures(capability="AVX2", avx512_bf16=False, amx=False)
SKYLAKE_X = CpuFeatures(capability="AVX512", avx512_bf16=False, amx=False)  # AVX512 without BF16
FAMILY_KEYS = [spec.settings_key for spec in FAMILIES]


def never_read() -> CpuFeatures:
    raise AssertionError("the CPU's features were read for a CUDA device")


def test_the_cpu_preset_asks_for_auto_in_every_family() -> None:
    cpu = load_preset("cpu").settings
    assert cpu.device == "cpu"
    assert {key: getattr(cpu, key).dtype for key in FAMILY_KEYS} == dict.fromkeys(FAMILY_KEYS, "auto")


@pytest.mark.parametrize("features", [SAPPHIRE_RAPIDS, ZEN4, CpuFeatures("AVX512", False, True)])
def test_auto_is_bfloat16_where_the_cpu_has_native_bf16(features: CpuFeatures) -> None:
    settings, choice = resolve(load_preset("cpu").settings, "cpu", lambda: features)
    assert {key: getattr(settings, key).dtype for key in FAMILY_KEYS} == dict.fromkeys(FAMILY_KEYS, "bfloat16")
    assert choice.dtypes == dict.fromkeys(FAMILY_KEYS, "bfloat16") and choice.auto == tuple(FAMILY_KEYS)
    assert choice.status()["cpu_bf16"] is True and "bfloat16" in choice.reason


@pytest.mark.parametrize("features", [ZEN3, SKYLAKE_X])
def test_auto_is_float32_where_bf16_would_be_emulated(features: CpuFeatures) -> None:
    settings, choice = resolve(load_preset("cpu").settings, "cpu", lambda: features)
    assert {key: getattr(settings, key).dtype for key in FAMILY_KEYS} == dict.fromkeys(FAMILY_KEYS, "float32")
    assert choice.status() == {"dtypes": dict.fromkeys(FAMILY_KEYS, "float32"),
                               "cpu_capability": features.capability, "cpu_bf16": False,
                               "dtype_reason": choice.reason}
    assert features.capability in choice.reason and "float32" in choice.reason


def test_auto_on_cuda_is_each_familys_default_and_reads_no_cpu_features() -> None:
    settings, choice = resolve(load_preset("cpu").settings, "cuda", never_read)
    defaults = {spec.settings_key: spec.settings().dtype for spec in FAMILIES}
    assert choice.dtypes == defaults == {"cascade": "bfloat16", "sd3": "bfloat16", "svd": "float16",
                                         "sv3d": "float16", "stablelm": "bfloat16", "sdxl": "float16",
                                         "audio": "float16"}
    assert choice.status()["cpu_capability"] is None and choice.status()["cpu_bf16"] is None


def test_concrete_dtypes_are_left_alone() -> None:
    lite = load_preset("lite").settings
    settings, choice = resolve(lite, "cpu", lambda: SAPPHIRE_RAPIDS)
    assert settings is lite and choice.auto == ()
    assert choice.dtypes == {"cascade": "bfloat16", "sd3": "bfloat16", "svd": "float16", "sv3d": "float16",
                             "stablelm": "bfloat16", "sdxl": "float16", "audio": "float16"}
    assert choice.reason == "the preset names every dtype"


def test_one_family_on_auto_leaves_the_others_as_written(tmp_path: Path) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text("base: cpu\ncascade: {dtype: float32}\n")
    settings, choice = resolve(load_preset(str(path)).settings, "cpu", lambda: ZEN4)
    assert choice.dtypes == {"cascade": "float32", "sd3": "bfloat16", "svd": "bfloat16", "sv3d": "bfloat16",
                             "stablelm": "bfloat16", "sdxl": "bfloat16", "audio": "bfloat16"}
    assert choice.auto == ("sd3", "svd", "sv3d", "stablelm", "sdxl", "audio")
    assert settings.cascade.defaults.width == 768  # the rest of each section is kept


def test_auto_is_a_valid_dtype_and_a_bad_one_lists_it(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("base: bf16\nstablelm: {dtype: auto}\n")
    assert load_preset(str(good)).settings.stablelm.dtype == "auto"
    bad = tmp_path / "bad.yaml"
    bad.write_text("stablelm: {dtype: fp8}\n")
    expected = "'stablelm.dtype' must be one of bfloat16, float16, float32, auto; got 'fp8'"
    with pytest.raises(PresetError, match=expected):
        load_preset(str(bad))


def test_a_backend_handed_auto_fails_loudly() -> None:
    with pytest.raises(ValueError, match="dtype auto is resolved by the Studio"):
        torch_dtype("auto")
    with pytest.raises(ValueError, match="must be one of bfloat16, float16, float32; got 'fp8'"):
        torch_dtype("fp8")


def cpu_studio(tmp_path: Path, features: CpuFeatures, preset: str = "cpu") -> Studio:
    config = StudioConfig(preset=preset, cache_dir=tmp_path / "cache", outputs_dir=tmp_path / "outputs")
    return Studio(config, FAMILIES, probe=FakeProbe(device_total=16 * GB), cpu_features=lambda: features)


def test_status_reports_the_dtypes_and_why(tmp_path: Path) -> None:
    studio = cpu_studio(tmp_path, ZEN4)
    status = studio.status()
    assert status["dtypes"] == dict.fromkeys(FAMILY_KEYS, "bfloat16")
    assert status["cpu_capability"] == "AVX512" and status["cpu_bf16"] is True
    assert "AVX512_BF16" in status["dtype_reason"]
    assert status["preset"] == "cpu" and status["device"] == "cpu" and status["models"] == []  # old keys stay
    # What the registry hands the backends, and sizes them by, is concrete.
    assert studio.registry.settings("stablelm").dtype == "bfloat16"
    assert studio.preset.settings.cascade.dtype == "bfloat16"
    lite = (1030.8 + 699.5 + 632.1 + 18.4 + 304.0 + 20.2) * 1e6
    assert studio.registry.size_estimate("cascade") == pytest.approx(2 * lite, rel=1e-6)


def test_status_on_a_cpu_without_bf16_says_float32(tmp_path: Path) -> None:
    status = cpu_studio(tmp_path, ZEN3).status()
    assert status["dtypes"] == dict.fromkeys(FAMILY_KEYS, "float32")
    assert status["cpu_capability"] == "AVX2" and status["cpu_bf16"] is False


def test_status_of_a_preset_without_auto_still_names_its_dtypes(tmp_path: Path) -> None:
    status = cpu_studio(tmp_path, ZEN3, preset="tiny").status()
    assert status["dtypes"] == dict.fromkeys(FAMILY_KEYS, "float32")
    assert status["dtype_reason"] == "the preset names every dtype"


def test_this_machines_features_are_read_once() -> None:
    import torch

    features = cpu_dtype.read_cpu_features()
    assert features is cpu_dtype.read_cpu_features()
    assert features.capability == torch.backends.cpu.get_cpu_capability()
    assert features.fast_bf16 == (features.avx512_bf16 or features.amx)


def test_a_torch_without_the_private_check_counts_as_no_bf16(caplog: pytest.LogCaptureFixture) -> None:
    fake_torch = types.SimpleNamespace(__version__="9.9", cpu=types.SimpleNamespace())
    with caplog.at_level(logging.WARNING, logger="backends.runtime.cpu_dtype"):
        assert cpu_dtype._torch_cpu_flag(fake_torch, "_is_avx512_bf16_supported") is False
    assert "torch 9.9 has no torch.cpu._is_avx512_bf16_supported" in caplog.text


def test_the_schema_and_shipped_presets_agree_on_auto() -> None:
    for name in presets.SHIPPED:
        settings = load_preset(name).settings
        resolved, _ = resolve(settings, "cpu", lambda: ZEN3)
        assert all(getattr(resolved, key).dtype != "auto" for key in FAMILY_KEYS), name
