"""Preset loading: shipped presets, sparse merging, base inheritance and validation messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from backends.families import PresetSettings, load_preset
from backends.runtime import presets
from backends.runtime.errors import UnknownNameError
from backends.runtime.presets import PresetError

GB = 10**9


@pytest.fixture()
def presets_dir(tmp_path: Path) -> Path:
    """A copy of the shipped presets with an empty user folder, so tests can add files."""
    folder = tmp_path / "presets"
    shutil.copytree(presets.PRESETS_DIR, folder, ignore=shutil.ignore_patterns("user"))
    (folder / "user").mkdir()
    return folder


@pytest.mark.parametrize("name", presets.SHIPPED)
def test_each_shipped_preset_loads(name: str) -> None:
    preset = load_preset(name)
    assert preset.name == name
    assert preset.settings.description
    cascade = preset.settings.cascade
    assert cascade.dtype in ("bfloat16", "float32", "auto")  # auto: the cpu preset (test_cpu_dtype.py)
    assert cascade.prior.repo and cascade.decoder.repo


def test_shipped_presets_choose_the_documented_models() -> None:
    lite, bf16, full, cpu, tiny = (load_preset(n).settings for n in presets.SHIPPED)
    assert (lite.cascade.prior.subfolder, lite.cascade.decoder.subfolder) == ("prior_lite", "decoder_lite")
    assert lite.cascade.prior.variant == "bf16" and lite.cascade.dtype == "bfloat16"
    assert (bf16.cascade.prior.subfolder, bf16.cascade.decoder.subfolder) == ("prior", "decoder")
    assert bf16.cascade.decoder.variant == "bf16"
    assert full.cascade.dtype == "float32" and full.cascade.prior.variant is None
    assert cpu.device == "cpu" and cpu.cascade.dtype == "auto"  # bf16 or float32 by the CPU's features
    assert cpu.cascade.prior.subfolder == "prior_lite"  # inherited from lite through base:
    assert all(s.repo == "tiny:cascade" for s in (tiny.cascade.prior, tiny.cascade.decoder, tiny.cascade.vqgan))


def test_auto_picks_from_vram() -> None:
    assert presets.pick_auto(None, PresetSettings) == "cpu"
    assert presets.pick_auto(8 * GB, PresetSettings) == "lite"
    assert presets.pick_auto(4 * GB, PresetSettings) == "lite"  # the manager offloads what does not fit
    assert presets.pick_auto(24 * GB, PresetSettings) == "bf16"


def test_user_preset_inherits_its_base_and_overrides_sparsely(presets_dir: Path) -> None:
    (presets_dir / "user" / "mine.yaml").write_text(
        "base: bf16\ncascade:\n  memory_mode: offload\n  defaults: {prior_steps: 30}\n")
    preset = load_preset("mine", presets_dir)
    assert "mine" in presets.available(presets_dir)
    cascade = preset.settings.cascade
    assert cascade.memory_mode == "offload"
    assert cascade.defaults.prior_steps == 30
    assert cascade.defaults.decoder_steps == 10  # from the defaults
    assert cascade.prior.subfolder == "prior"  # from bf16
    assert [p.name for p in preset.files] == ["bf16.yaml", "mine.yaml"]


def test_a_preset_file_anywhere_is_loaded_by_its_path(tmp_path: Path) -> None:
    """``--preset /some/where/mine.yaml``: no file has to go into the repo's presets/user/."""
    path = tmp_path / "elsewhere" / "mine.yaml"
    path.parent.mkdir()
    path.write_text("base: tiny\nstablelm:\n  model: {repo: /models/lm}\n")
    preset = load_preset(str(path))
    assert preset.name == "mine" and preset.files == (presets.PRESETS_DIR / "tiny.yaml", path.resolve())
    assert preset.settings.stablelm.model.repo == "/models/lm"
    assert preset.settings.cascade.prior.repo == "tiny:cascade"  # from the base
    assert "mine" not in presets.available()


def test_bad_key_names_file_key_and_allowed_keys(presets_dir: Path) -> None:
    path = presets_dir / "user" / "typo.yaml"
    path.write_text("cascade:\n  prior_stepz: 3\n")
    with pytest.raises(PresetError) as caught:
        load_preset("typo", presets_dir)
    message = str(caught.value)
    assert str(path) in message and "'cascade.prior_stepz'" in message
    assert "allowed here:" in message and "memory_mode" in message


def test_bad_type_names_file_key_and_expected_type(presets_dir: Path) -> None:
    path = presets_dir / "user" / "types.yaml"
    path.write_text("cascade:\n  defaults:\n    prior_steps: many\n")
    with pytest.raises(PresetError, match=r"types\.yaml: key 'cascade\.defaults\.prior_steps' must be of type int"):
        load_preset("types", presets_dir)


def test_bad_choice_names_the_allowed_values(presets_dir: Path) -> None:
    (presets_dir / "user" / "mode.yaml").write_text("cascade: {memory_mode: turbo}\n")
    with pytest.raises(PresetError, match="'cascade.memory_mode' must be one of auto, gpu, offload, sequential"):
        load_preset("mode", presets_dir)


def test_missing_base_names_file_and_key(presets_dir: Path) -> None:
    path = presets_dir / "user" / "orphan.yaml"
    path.write_text("base: nowhere\n")
    with pytest.raises(PresetError) as caught:
        load_preset("orphan", presets_dir)
    assert str(path) in str(caught.value) and "key 'base'" in str(caught.value)
    assert "nowhere" in str(caught.value) and "lite" in str(caught.value)


def test_error_in_a_base_file_names_that_file(presets_dir: Path) -> None:
    (presets_dir / "user" / "parent.yaml").write_text("device: gpu\n")
    (presets_dir / "user" / "child.yaml").write_text("base: parent\n")
    with pytest.raises(PresetError, match=r"parent\.yaml: key 'device' must be one of auto, cuda, cpu"):
        load_preset("child", presets_dir)


def test_base_cycle_is_reported(presets_dir: Path) -> None:
    (presets_dir / "user" / "a.yaml").write_text("base: b\n")
    (presets_dir / "user" / "b.yaml").write_text("base: a\n")
    with pytest.raises(PresetError, match="cycle"):
        load_preset("a", presets_dir)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="known: lite, bf16, full, cpu, tiny"):
        load_preset("huge")


def test_each_preset_offers_sd_models_whose_default_fits_its_vram_class(tiny_cache: Path, tmp_path: Path) -> None:
    from backends.families import FAMILIES
    from backends.runtime.registry import DTYPE_BYTES
    from backends.runtime.studio import Studio, StudioConfig

    largest = {"sd3.5-large": 8146.3, "sd3.5-large-turbo": 8146.3, "sd3.5-medium": 2469.7, "sdxl": 2567.5}
    chosen = {}
    for name in presets.SHIPPED:
        studio = Studio(StudioConfig(preset=name, cache_dir=tiny_cache, outputs_dir=tmp_path / "out", offline=True),
                        FAMILIES)
        models, default = studio.registry.models(), studio.registry.default_model()
        chosen[name] = default
        assert default in models
        settings = studio.preset.settings
        if settings.min_vram_gb:
            family = getattr(settings, models[default])
            size = largest[default] * 1e6 * DTYPE_BYTES.get(family.dtype, 4)
            assert size < settings.min_vram_gb * 2**30, (name, default)  # its largest component alone fits
    assert chosen == {"lite": "sdxl", "bf16": "sd3.5-medium", "full": "sd3.5-large", "cpu": "sdxl",
                      "tiny": "sd3.5-large"}
    tiny = load_preset("tiny").settings
    assert list(tiny.sd3.offer) + list(tiny.sdxl.offer) == ["sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sdxl"]
    assert load_preset("lite").settings.sd3.t5 == "cpu"  # T5-XXL's 9.5 GB stays off a 6 GB card


def test_a_list_key_is_checked_item_by_item(presets_dir: Path) -> None:
    (presets_dir / "user" / "mine.yaml").write_text("base: lite\nsd3: {offer: [sd3.5-medium, sd4]}\n")
    with pytest.raises(presets.PresetError, match=r"key 'sd3\.offer\[1\]' must be one of sd3\.5-large, "
                                                  r"sd3\.5-large-turbo, sd3\.5-medium; got 'sd4'"):
        load_preset("mine", presets_dir)
    (presets_dir / "user" / "mine.yaml").write_text("base: lite\nsdxl: {offer: sdxl}\n")
    with pytest.raises(presets.PresetError, match=r"key 'sdxl\.offer' must be a list of str, got 'sdxl'"):
        load_preset("mine", presets_dir)
