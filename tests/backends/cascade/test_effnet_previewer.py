"""EfficientNet encoder and previewer: exact key layouts of the released files, strict loading,
preprocessing, and the tiny builds that share their code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from backends.cascade.effnet import (
    EFFNET_FILE,
    EfficientNetEncoder,
    EffnetConfig,
    cover_crop,
    effnet_pixels,
    load_effnet,
)
from backends.cascade.previewer import PREVIEWER_FILE, Previewer, load_previewer, to_images
from backends.families import load_context
from backends.runtime.errors import ModelUnavailable
from backends.runtime.loading import LoadContext, Source, load_state_dict_strict

#: The reference manifests (dumped from the official modules) live beside the repo, not in it.
# Copies of ../shared/data's manifests (the released checkpoints' key layouts), kept with the
# tests so a clean checkout can check the converters against them.
DATA = Path(__file__).resolve().parents[2] / "data"
MANIFESTS = {"effnet": DATA / "cascade_effnet_encoder_keys.json",
             "previewer": DATA / "cascade_previewer_keys.json"}
#: (tensors, learnable parameters, SHA-256 of the JSON list of [key, shape] in order), computed
#: from the manifests, so a clean checkout without them still checks the exact layout.
LAYOUTS = {
    "effnet": (784, 20_197_968, "e1339d5b6d5f203ce380e2b25ce67da181d3ae4f673863497aff97a85e8f80d0"),
    "previewer": (58, 3_979_651, "74a54f2204dfb69f48a282ab59cf757c83be5f3c89be93b575d82d119a8534d7"),
}
MODULES = {"effnet": EfficientNetEncoder, "previewer": Previewer}


def layout(keys: dict[str, list[int]]) -> str:
    return hashlib.sha256(json.dumps([[key, shape] for key, shape in keys.items()]).encode()).hexdigest()


def manifest_keys(name: str) -> dict[str, list[int]]:
    """The manifest's keys and shapes; without the manifest, our module's (checked by fingerprint)."""
    path = MANIFESTS[name]
    if path.is_file():
        return json.loads(path.read_text())["keys"]
    return {key: list(value.shape) for key, value in on_meta(MODULES[name]).state_dict().items()}


def random_state(keys: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with exactly these keys and shapes: random floats, int64 BatchNorm counters."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in keys.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


def on_meta(cls: type) -> torch.nn.Module:
    """A real-size module without the cost of initialising 20M weights."""
    with torch.device("meta"):
        return cls()


@pytest.fixture(scope="module")
def ctx(tiny_cache: Path) -> LoadContext:
    return load_context(cache_dir=tiny_cache, offline=True)


@pytest.fixture(scope="module")
def effnet_state() -> dict[str, torch.Tensor]:
    return random_state(manifest_keys("effnet"))


@pytest.fixture(scope="module")
def previewer_state() -> dict[str, torch.Tensor]:
    return random_state(manifest_keys("previewer"))


@pytest.mark.parametrize("name", ["effnet", "previewer"])
def test_real_size_modules_have_exactly_the_manifest_layout(name: str) -> None:
    module = on_meta(MODULES[name])
    ours = {key: list(value.shape) for key, value in module.state_dict().items()}
    if MANIFESTS[name].is_file():  # first the readable comparison, where the manifest is at hand
        data = json.loads(MANIFESTS[name].read_text())
        assert ours == data["keys"] and list(ours) == list(data["keys"])  # every key, shape, in order
        assert (data["n_tensors"], data["n_learnable_params"], layout(data["keys"])) == LAYOUTS[name]
    assert (len(ours), sum(p.numel() for p in module.parameters()), layout(ours)) == LAYOUTS[name]


@pytest.mark.parametrize(("name", "filename", "load"),
                         [("effnet", EFFNET_FILE, load_effnet), ("previewer", PREVIEWER_FILE, load_previewer)])
def test_a_file_with_the_manifest_keys_loads_strictly(name: str, filename: str, load, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    state = request.getfixturevalue(f"{name}_state")
    save_file(state, tmp_path / filename)  # no metadata: the released files' case
    module = load(Source(str(tmp_path)), load_context(cache_dir=tmp_path, offline=True), torch.float32)
    loaded = module.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[key], state[key]) for key in state)
    assert not module.training and not any(p.requires_grad for p in module.parameters())


def test_a_missing_or_extra_key_fails_naming_it(effnet_state: dict, previewer_state: dict) -> None:
    missing = dict(effnet_state)
    del missing["backbone.6.14.block.2.fc2.bias"]
    with pytest.raises(ModelUnavailable, match=r"missing keys \(1\): backbone\.6\.14\.block\.2\.fc2\.bias"):
        load_state_dict_strict(on_meta(EfficientNetEncoder), missing, "effnet_encoder.safetensors")
    extra = {**effnet_state, "mapper.1.weight": torch.ones(16)}  # the mapper's norm has no affine part
    with pytest.raises(ModelUnavailable, match=r"unexpected keys \(1\): mapper\.1\.weight"):
        load_state_dict_strict(on_meta(EfficientNetEncoder), extra, "effnet_encoder.safetensors")
    wrong = {**previewer_state, "blocks.24.weight": torch.zeros(4, 128, 1, 1)}
    with pytest.raises(ModelUnavailable, match=r"wrong shapes \(1\): blocks\.24\.weight \(file \[4, 128, 1, 1\]"):
        load_state_dict_strict(on_meta(Previewer), wrong, "previewer.safetensors")


def test_missing_batchnorm_counters_are_allowed_as_torch_allows_them(previewer_state: dict) -> None:
    state = {k: v for k, v in previewer_state.items() if not k.endswith("num_batches_tracked")}
    module = on_meta(Previewer)
    load_state_dict_strict(module, state, "previewer.safetensors")
    assert torch.equal(module.state_dict()["blocks.2.running_var"], state["blocks.2.running_var"])


def test_missing_file_offline_names_the_file(tmp_path: Path) -> None:
    ctx = load_context(cache_dir=tmp_path, models_dir=tmp_path / "hub", offline=True)
    with pytest.raises(ModelUnavailable, match=r"effnet_encoder\.safetensors from stabilityai/stable-cascade.*offline"):
        load_effnet(Source("stabilityai/stable-cascade"), ctx, torch.float32)
    with pytest.raises(ModelUnavailable, match="there is no"):
        load_previewer(Source(str(tmp_path)), ctx, torch.float32)


def test_shapes_through_the_real_size_modules(effnet_state: dict, previewer_state: dict) -> None:
    effnet, preview = on_meta(EfficientNetEncoder), on_meta(Previewer)
    load_state_dict_strict(effnet, effnet_state, "effnet")
    load_state_dict_strict(preview, previewer_state, "previewer")
    with torch.inference_mode():
        assert effnet.eval()(torch.randn(1, 3, 96, 64)).shape == (1, 16, 3, 2)  # 32 px per latent px
        assert preview.eval()(torch.randn(2, 16, 3, 4)).shape == (2, 3, 24, 32)  # 8x


def test_preprocessing_covers_the_frame_and_normalises_like_imagenet() -> None:
    red = Image.new("RGB", (300, 200), (255, 0, 0))
    pixels = effnet_pixels(red, 96, 64)
    assert pixels.shape == (1, 3, 64, 96)
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    assert torch.allclose(pixels[0, :, 10, 10], torch.tensor(expected), atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 32"):
        effnet_pixels(red, 100, 64)
    # A wide input is centre-cropped, not squashed: the left third (blue) is cut away.
    halves = Image.new("RGB", (300, 100), (0, 0, 255))
    halves.paste((0, 255, 0), (100, 0, 200, 100))
    assert cover_crop(halves, 100, 100).getpixel((50, 50)) == (0, 255, 0)


def test_tiny_builds_share_the_module_code(ctx: LoadContext) -> None:
    effnet = load_effnet(Source("tiny:cascade"), ctx, torch.float32)
    preview = load_previewer(Source("tiny:cascade"), ctx, torch.float32)
    assert isinstance(effnet, EfficientNetEncoder) and effnet.config != EffnetConfig()
    assert effnet.config.latent_channels == 16 and preview.c_in == 16
    assert sum(p.numel() for p in effnet.parameters()) < 200_000
    pictures = [Image.new("RGB", (256, 192), color) for color in ((200, 30, 30), (20, 40, 220))]
    with torch.inference_mode():
        first, second = (effnet(effnet_pixels(p, 256, 192)) for p in pictures)
        assert first.shape == (1, 16, 6, 8)
        assert (first - second).abs().mean() > 0.1  # the input matters (calibrated norms)
        images = to_images(preview(first))
    assert images[0].size == (64, 48) and images[0].mode == "RGB"
    assert np.asarray(images[0]).std() > 0
