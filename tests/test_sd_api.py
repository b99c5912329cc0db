"""The SD endpoints from outside: ``/generate_image_sd``, ``/img2img_sd`` and ``/inpaint`` on the tiny preset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.serving import serve_tiny

MODELS = ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sdxl")


@pytest.fixture(scope="module")
def client(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with serve_tiny(models_dir, tmp_path_factory.mktemp("outputs")) as (_, url):
        yield Client(url, verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("sd-inputs")
    blocks = (np.random.default_rng(3).random((4, 4, 3)) * 255).astype(np.uint8)
    picture = Image.fromarray(blocks).resize((256, 256), Image.Resampling.BILINEAR)
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (64, 64, 192, 192))
    images = {"photo.png": picture, "mask.png": mask, "small_mask.png": mask.resize((128, 128)),
              "empty_mask.png": Image.new("L", (256, 256), 0)}
    paths = {}
    for name, image in images.items():
        image.save(folder / name)
        paths[name] = str(folder / name)
    return paths


def generate(client: Client, **overrides: Any) -> tuple[list[dict], dict]:
    values = dict(prompt="a red lighthouse", negative_prompt="", width=256, height=256, steps=2, guidance=3.0,
                  num_images=1, seed=11, model="sdxl")
    values.update(overrides)
    return client.predict(*values.values(), api_name="/generate_image_sd")


def pixels(item: dict) -> np.ndarray:
    return np.asarray(Image.open(item["image"]).convert("RGB")).astype(np.int16)


def test_the_endpoints_take_exactly_the_contract_inputs(client: Client) -> None:
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = {name: [p["parameter_name"] for p in api[name]["parameters"]]
             for name in ("/generate_image_sd", "/img2img_sd", "/inpaint", "/generate_image")}
    assert names["/generate_image_sd"] == ["prompt", "negative_prompt", "width", "height", "steps", "guidance",
                                           "num_images", "seed", "model"]
    assert names["/img2img_sd"] == ["image", "prompt", "negative_prompt", "strength", "width", "height", "seed",
                                    "model"]
    assert names["/inpaint"] == ["image", "mask", "prompt", "negative_prompt", "strength", "seed", "model"]
    assert len(names["/generate_image"]) == 10  # Stable Cascade's keeps its ten inputs


@pytest.mark.parametrize("model", MODELS)
def test_every_model_value_generates_on_the_tiny_preset(client: Client, model: str) -> None:
    gallery, info = generate(client, model=model, num_images=2)
    assert len(gallery) == 2
    assert info["model"] == model and info["seed"] == 11 and info["seeds"] == [11, 12]
    assert all(Image.open(item["image"]).size == (256, 256) for item in gallery)
    assert all(Path(path).exists() for path in info["files"])


def test_the_same_seed_gives_the_same_pixels_and_an_empty_model_is_the_default(client: Client) -> None:
    first, info = generate(client, model="", seed=21)
    again, _ = generate(client, model=info["model"], seed=21)
    assert info["model"] in MODELS
    assert np.array_equal(pixels(first[0]), pixels(again[0]))


def test_img2img_sd_follows_the_picture(client: Client, files: dict[str, str]) -> None:
    gallery, info = client.predict(handle_file(files["photo.png"]), "a blue house", "", 0.6, 0, 0, 4, "sdxl",
                                   api_name="/img2img_sd")
    assert Image.open(gallery[0]["image"]).size == (256, 256)
    assert info["model"] == "sdxl" and info["strength"] == 0.6


def test_inpaint_keeps_the_pixels_outside_the_mask(client: Client, files: dict[str, str]) -> None:
    source = np.asarray(Image.open(files["photo.png"]).convert("RGB")).astype(np.int16)
    for model in ("sdxl", "sd3.5-medium"):
        gallery, info = client.predict(handle_file(files["photo.png"]), handle_file(files["mask.png"]), "a door", "",
                                       1.0, 9, model, api_name="/inpaint")
        result = pixels(gallery[0])
        outside = np.ones((256, 256), bool)
        outside[64 - 16:192 + 16, 64 - 16:192 + 16] = False  # the mask and its feathered seam
        assert np.array_equal(result[outside], source[outside]), model
        assert np.abs(result[80:176, 80:176] - source[80:176, 80:176]).mean() > 1, model
        assert info["model"] == model


@pytest.mark.parametrize(("endpoint", "args", "message"), [
    ("/generate_image_sd", dict(model="sd9"), r"Model \(model\): must be one of sd3.5-large, sd3.5-large-turbo, "
                                              r"sd3.5-medium, sdxl"),
    ("/generate_image_sd", dict(width=300), r"Width \(width\): must be a multiple of 64"),
    ("/generate_image_sd", dict(steps=0), r"Steps \(steps\)"),
])
def test_bad_text_to_image_inputs_name_the_field(client: Client, endpoint: str, args: dict, message: str) -> None:
    with pytest.raises(Exception, match=message):
        generate(client, **args)


def test_bad_masks_are_refused_naming_the_field(client: Client, files: dict[str, str]) -> None:
    photo = handle_file(files["photo.png"])
    with pytest.raises(Exception, match=r"Mask \(mask\): is 128×128 but the image is 256×256"):
        client.predict(photo, handle_file(files["small_mask.png"]), "a door", "", 1.0, 9, "sdxl", api_name="/inpaint")
    with pytest.raises(Exception, match=r"Mask \(mask\): is empty"):
        client.predict(photo, handle_file(files["empty_mask.png"]), "a door", "", 1.0, 9, "sdxl", api_name="/inpaint")
    with pytest.raises(Exception, match=r"Mask \(mask\): no image given"):
        client.predict(photo, None, "a door", "", 1.0, 9, "sdxl", api_name="/inpaint")
