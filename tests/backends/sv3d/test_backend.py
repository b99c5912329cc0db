"""SV3D: the converter against the real manifests, the conventions, and the tiny pipeline end to end."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backends.families import FAMILIES, TINY
from backends.runtime.errors import InputError, ModelUnavailable
from backends.runtime.studio import Studio, StudioConfig
from backends.sv3d.backend import camera_vector, edm_sigmas, triangle_scales
from backends.sv3d.convert import build_modules, convert, empty_module, ensure_converted
from backends.sv3d.names import UNET_PREFIX, ConversionError, unet_to_sgm
from backends.sv3d.requests import OrbitRequest, orbit_azimuths
from backends.sv3d.unet import Sv3dUNet, sinusoid

# Copies of ../shared/data's manifests (the released checkpoints' key layouts), kept with the
# tests so a clean checkout can check the converters against them.
DATA = Path(__file__).resolve().parents[2] / "data"


def manifest(variant: str) -> dict:
    return json.loads((DATA / f"sv3d_{variant}_unet_keys.json").read_text())


def manifest_keys(variant: str) -> dict[str, list[int]]:
    """Every tensor of the released file: the UNet keys plus the three other groups."""
    keys = dict(manifest(variant)["keys"])
    others = json.loads((DATA / "sv3d_first_stage_keys.json").read_text())
    for group in ("first_stage_model_keys", "conditioner_vae_keys", "conditioner_open_clip_keys"):
        keys.update(others[group])
    return keys


def meta_state(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in keys.items()}


@pytest.mark.parametrize("variant", ["u", "p"])
def test_every_manifest_key_maps_to_a_parameter_of_the_same_shape(variant: str) -> None:
    keys = manifest_keys(variant)
    assert len(keys) == manifest(variant)["checkpoint_layout"]["total_tensors"] == 2212
    converted = convert(meta_state(keys))
    modules = build_modules(converted, "manifest")  # strict: no missing/unexpected key, same shapes
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    assert params["unet"] == manifest(variant)["n_params"]
    assert params["image_encoder"] == 632_076_800  # the visual tower (structure_summary)
    # The conditioner VAE (83,653,863) less its post-quant conv (4x4 + 4), decoder swapped for the
    # first stage's (same shapes).
    assert params["vae"] == 83_653_863 - 20
    assert len(converted.states["unet"]) == 1428
    # Dropped by name only: 6 text-tower leftovers, the conditioner's decoder (138) and post-quant conv (2).
    assert len(converted.dropped) == 146
    assert all(".decoder." in k or "post_quant_conv" in k or "open_clip" in k for k in converted.dropped)
    config = converted.configs["unet"]
    assert config["num_attention_heads"] == [5, 10, 20, 20]
    assert config["projection_class_embeddings_input_dim"] == manifest(variant)["adm_in_channels"]
    expected = manifest(variant)["diffusers_mapping_check"]["config_used"]
    assert {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in config.items() if k in expected} == \
        {k: v for k, v in expected.items() if k in config and k != "sample_size"}


def test_a_renamed_missing_or_reshaped_key_fails_with_its_name() -> None:
    keys = manifest_keys("u")
    renamed = dict(keys)
    renamed["model.diffusion_model.input_blocks.1.0.in_layerz.0.weight"] = renamed.pop(
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight")
    with pytest.raises(ConversionError, match=r"input_blocks\.1\.0\.in_layerz\.0\.weight"):
        convert(meta_state(renamed))
    missing = dict(keys)
    del missing["model.diffusion_model.output_blocks.5.2.conv.weight"]
    with pytest.raises(ModelUnavailable, match=r"missing keys \(1\): up_blocks\.1\.upsamplers\.0\.conv\.weight"):
        build_modules(convert(meta_state(missing)), "file")
    stray = dict(keys, **{"cond_stage_model.extra.weight": [3]})
    with pytest.raises(ConversionError, match=r"cond_stage_model\.extra\.weight"):
        convert(meta_state(stray))
    reshaped = dict(keys, **{"first_stage_model.decoder.conv_in.bias": [7]})
    with pytest.raises(ModelUnavailable, match=r"decoder\.conv_in\.bias \(file \[7\], model \[512\]\)"):
        build_modules(convert(meta_state(reshaped)), "file")


@pytest.mark.parametrize("variant", ["u", "p"])
def test_tiny_files_use_the_released_key_names(tiny_cache: Path, variant: str) -> None:
    from safetensors import safe_open

    with safe_open(str(TINY.ensure("sv3d", tiny_cache) / f"sv3d_{variant}.safetensors"), "pt") as handle:
        tiny = set(handle.keys())
    real = set(manifest_keys(variant))
    not_clip = {k for k in real if ".open_clip." not in k}
    assert {k for k in tiny if ".open_clip." not in k} == not_clip  # UNet and both VAEs: identical names
    assert tiny - not_clip <= real  # the CLIP tower: fewer layers, same names


#: How sgm (generative-models) builds each normalisation of SV3D's VideoUNet, by its key name:
#: resnets (``in_layers.0``, ``out_layers.0``, their ``time_stack`` copies) and the output norm
#: (``out.0``) use ``normalization(ch)`` = ``GroupNorm32(32, ch)``, torch's eps 1e-5; the
#: transformers' input norm is ``attention.Normalize`` (GroupNorm eps 1e-6); the transformer
#: blocks' ``norm1-3`` and the time blocks' ``norm_in`` are ``nn.LayerNorm(dim)``, eps 1e-5.
SGM_NORMS = (
    (re.compile(r"(^out\.0|\.(in|out)_layers\.0)\.weight$"), torch.nn.GroupNorm, 1e-5),
    (re.compile(r"\.norm\.weight$"), torch.nn.GroupNorm, 1e-6),
    (re.compile(r"\.(norm[123]|norm_in)\.weight$"), torch.nn.LayerNorm, 1e-5),
)


def sgm_norm(key: str) -> tuple[type, float] | None:
    """The class and eps sgm builds the norm holding ``key`` with; None for a key of no norm."""
    return next(((cls, eps) for pattern, cls, eps in SGM_NORMS if pattern.search(key)), None)


def unet_norms(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every normalisation layer of ``unet`` by the sgm name of its weight."""
    levels = sum("CrossAttn" in kind for kind in unet.config.down_block_types)
    norms = {unet_to_sgm(f"{name}.weight", levels): module for name, module in unet.named_modules()
             if "norm" in type(module).__name__.lower()}
    assert {type(m) for m in norms.values()} == {torch.nn.GroupNorm, torch.nn.LayerNorm}
    return norms


def real_unet() -> Sv3dUNet:
    """The released SV3D_p UNet's architecture on the meta device, as the converter builds it."""
    unet = empty_module("unet", convert(meta_state(manifest_keys("p"))).configs["unet"])
    assert isinstance(unet, Sv3dUNet)
    return unet


def test_every_unet_norm_uses_the_eps_sgm_trained_with() -> None:
    norms = unet_norms(real_unet())
    # The same norms as the released file: every norm weight there, no other.
    released = {k[len(UNET_PREFIX):] for k in manifest("p")["keys"] if sgm_norm(k[len(UNET_PREFIX):])}
    assert set(norms) == released and len(norms) == 217
    for key, module in norms.items():
        assert (type(module), module.eps) == sgm_norm(key), key
    # diffusers 0.42.1 builds the down/up blocks' resnet norms with 1e-6; all 88 must be sgm's 1e-5.
    resnets = [k for k in norms if re.search(r"\.(in|out)_layers\.0\.", k)]
    assert len(resnets) == 88 and {norms[k].eps for k in resnets} == {1e-5}


def test_sinusoids_equal_diffusers_timesteps() -> None:
    from diffusers.models.embeddings import Timesteps

    values = torch.tensor([1e-5, 0.3, 1.2, 6.0])
    for width in (256, 320, 512):
        reference = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)(values)
        assert torch.allclose(sinusoid(values, width), reference, atol=1e-6)


def test_triangle_guidance_equals_the_reference_formula() -> None:
    guider = manifest("p")["sampler"]["guider"]
    scales = triangle_scales(21, guider["min_scale"], guider["max_scale"], guider["period"])
    assert np.allclose(scales.numpy(), guider["per_frame_scale"], atol=1e-9)
    values = np.linspace(0, 1, 9)
    reference = 2 * np.abs(values - np.floor(values + 0.5)) * (3.0 - 1.5) + 1.5
    assert np.allclose(triangle_scales(9, 1.5, 3.0).numpy(), reference)


def test_edm_sigmas_follow_the_discretization() -> None:
    sigmas = edm_sigmas(50)
    assert len(sigmas) == 51 and sigmas[-1] == 0
    assert math.isclose(sigmas[0], 700.0, rel_tol=1e-12) and math.isclose(sigmas[-2], 0.002, rel_tol=1e-9)
    assert bool((sigmas[:-1].diff() < 0).all())


def photo(mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(3)
    channels = 4 if mode == "RGBA" else 3
    array = (rng.random((90, 120, channels)) * 255).astype(np.uint8)
    if mode == "RGBA":
        array[..., 3] = 0
        array[20:70, 30:80, 3] = 255  # a 50x50 opaque object
    return Image.fromarray(array, mode)


def test_camera_path_input_view_last_and_per_frame_vector() -> None:
    assert orbit_azimuths(21)[-1] == 0 and math.isclose(orbit_azimuths(21)[0], 360 / 21)
    request = OrbitRequest.build(photo(), "p", 10, 3, 1, "sine", 40, size=64)
    assert request.elevations_deg[-1] == 10 and math.isclose(max(request.elevations_deg), 40, abs_tol=0.2)
    vector = camera_vector(request, 1e-5)
    assert vector.shape == (21, 1280) and not torch.equal(vector[0], vector[1])
    u = OrbitRequest.build(photo(), "u", 10, 3, 1, "sine", 40, size=64)
    assert camera_vector(u, 1e-5).shape == (21, 256) and u.path == "constant"
    assert "SV3D_u has no camera input: the camera path was ignored" in u.notices


def test_input_preparation_frames_the_object_on_white() -> None:
    cut = OrbitRequest.build(photo("RGBA"), "u", 0, 1, 1, size=100)
    array = np.asarray(cut.image)
    assert cut.image.size == (100, 100) and (array[:7] == 255).all()  # white margin above the object
    assert any("cropped to 50x50" in n for n in cut.notices)
    whole = OrbitRequest.build(photo(), "u", 0, 1, 1, size=100)
    assert (np.asarray(whole.image)[:10] == 255).all()  # 120x90 scaled to 85x64, centred


@pytest.mark.parametrize(("args", "field"), [
    ((None, "p", 10, 3, 1), "image"),
    (("/nonexistent/broken.png", "p", 10, 3, 1), "image"),
    ((photo(), "q", 10, 3, 1), "variant"),
    ((photo(), "p", 91, 3, 1), "elevation_deg"),
    ((photo(), "p", -90.5, 3, 1), "elevation_deg"),
    ((photo(), "p", 10, 0, 1), "steps"),
    ((photo(), "p", 10, 3, 1, "spiral"), "path"),
    ((photo(), "p", 10, 3, 1, "sine", 120), "elevation_end_deg"),
])
def test_bad_requests_name_the_field(args: tuple, field: str) -> None:
    with pytest.raises(InputError, match=f"^{field}: "):
        OrbitRequest.build(*args, size=64)


@pytest.fixture(scope="module")
def studio(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Studio:
    return Studio(StudioConfig(preset="tiny", cache_dir=tiny_cache, outputs_dir=tmp_path_factory.mktemp("out")), FAMILIES)


def run(studio: Studio, *args: object) -> list[np.ndarray]:
    result = studio.registry.run("orbit", OrbitRequest.build(photo(), *args, size=64), lambda *a: None)
    return [np.asarray(frame) for frame in result.frames]


def test_the_loaded_tiny_unet_keeps_sgm_eps(studio: Studio) -> None:
    folder = studio.registry.backend("sv3d").converted("p")
    norms = unet_norms(Sv3dUNet.from_pretrained(folder, subfolder="unet"))
    assert len(norms) == 217
    assert all((type(module), module.eps) == sgm_norm(key) for key, module in norms.items())


@pytest.mark.parametrize("variant", ["u", "p"])
def test_tiny_round_trip_runs_and_ends_on_the_input_view(studio: Studio, tiny_cache: Path, variant: str) -> None:
    request = OrbitRequest.build(photo(), variant, 10, 2, 5, size=64)
    steps: list[tuple[str, int, int]] = []
    result = studio.registry.run("orbit", request, lambda *report: steps.append(report))
    assert len(result.frames) == 21 and result.frames[0].size == (64, 64)
    assert np.array_equal(np.asarray(result.frames[-1]), np.asarray(request.image))
    assert ("Orbit denoising", 2, 2) in steps and steps[-1] == ("Orbit decoding", 21, 21)
    assert result.info["seed"] == 5 and result.info["guidance"][10] == 2.5
    # Converted once into the cache; the next call finds it.
    folder = studio.registry.backend("sv3d").converted(variant)
    assert (folder / "unet" / "config.json").is_file()

    assert ensure_converted(TINY.ensure("sv3d", tiny_cache) / f"sv3d_{variant}.safetensors", tiny_cache,
                            "float32") == folder


def test_per_frame_camera_changes_the_frames_and_u_ignores_it(studio: Studio) -> None:
    flat = run(studio, "p", 10, 2, 9, "constant")
    again = run(studio, "p", 10, 2, 9, "constant")
    sine = run(studio, "p", 10, 2, 9, "sine", 60)
    assert all(np.array_equal(a, b) for a, b in zip(flat, again))  # same seed, same frames
    assert not np.array_equal(flat[0], sine[0])
    assert np.array_equal(flat[-1], sine[-1])  # the input view itself
    assert all(np.array_equal(a, b) for a, b in zip(run(studio, "u", 10, 2, 9, "constant"),
                                                     run(studio, "u", 10, 2, 9, "sine", 60)))


def test_the_download_plan_names_both_single_files() -> None:
    from backends.families import PresetSettings
    from backends.runtime import downloads

    (plan,) = downloads.plan(PresetSettings(), sections=["sv3d"])
    assert plan.repo == "stabilityai/sv3d"
    assert set(plan.allow_patterns) == {"sv3d_u.safetensors", "sv3d_p.safetensors"}
