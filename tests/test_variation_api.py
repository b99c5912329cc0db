"""The Variation / img2img contract from outside: the real app on the tiny preset, via gradio_client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.serving import serve_tiny


@pytest.fixture(scope="module")
def client(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with serve_tiny(models_dir, tmp_path_factory.mktemp("outputs")) as (_, url):
        yield Client(url, verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("inputs")
    blocks = (np.random.default_rng(0).random((3, 4, 3)) * 255).astype(np.uint8)
    rgba = Image.new("RGBA", (96, 64), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 48, 64))
    images = {
        "photo.png": Image.fromarray(blocks).resize((320, 240), Image.Resampling.BILINEAR),
        "gray.png": Image.new("L", (64, 64), 90),
        "cutout.png": rgba,
        "huge.png": Image.new("L", (10_000, 10_000), 200),  # compresses to a few hundred kB
    }
    paths = {}
    for name, image in images.items():
        image.save(folder / name)
        paths[name] = str(folder / name)
    return paths


def variation(client: Client, image: Any, **overrides: Any) -> tuple[list[dict], dict]:
    """``/image_variation`` with DESIGN.md's inputs in order."""
    values = dict(image=image, prompt="", negative_prompt="", width=0, height=0, num_images=1, seed=5)
    values.update(overrides)
    return client.predict(*values.values(), api_name="/image_variation")


def img2img(client: Client, image: Any, **overrides: Any) -> tuple[list[dict], dict]:
    """``/img2img`` with DESIGN.md's inputs in order."""
    values = dict(image=image, prompt="a red house", negative_prompt="", strength=0.5, width=0, height=0, seed=5)
    values.update(overrides)
    return client.predict(*values.values(), api_name="/img2img")


def test_the_endpoints_take_exactly_the_contract_inputs(client: Client) -> None:
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = {endpoint: [p["parameter_name"] for p in api[endpoint]["parameters"]]
             for endpoint in ("/image_variation", "/img2img")}
    assert names["/image_variation"] == ["image", "prompt", "negative_prompt", "width", "height", "num_images", "seed"]
    assert names["/img2img"] == ["image", "prompt", "negative_prompt", "strength", "width", "height", "seed"]


def test_variation_and_img2img_return_saved_images_and_info(client: Client, files: dict[str, str]) -> None:
    gallery, info = variation(client, handle_file(files["photo.png"]), num_images=2)
    assert len(gallery) == 2 and info["task"] == "image_variation" and info["seed"] == 5
    # Size 0: the input's 4:3 aspect near the tiny preset's 256² area in 128-pixel multiples
    # (issue #14: a 4:3 input gives a wide result, no longer a 256² square).
    assert Image.open(gallery[0]["image"]).size == (384, 256) == (info["width"], info["height"])
    assert info["input_size"] == [320, 240] and info["preset"] == "tiny"
    saved = Path(info["files"][0])
    with Image.open(saved) as png:
        assert json.loads(png.text["studio"])["task"] == "image_variation"

    gallery, info = img2img(client, handle_file(files["photo.png"]), width=384, height=256, strength="0.75")
    assert len(gallery) == 1 and Image.open(gallery[0]["image"]).size == (384, 256)
    assert (info["task"], info["strength"], info["prior_steps_run"]) == ("img2img", 0.75, 3)  # 4 steps x 0.75


def test_grayscale_transparent_and_huge_inputs_are_fitted_and_reported(client: Client, files: dict[str, str]) -> None:
    _, info = variation(client, handle_file(files["gray.png"]))
    assert "L input converted to RGB" in info["notices"]
    _, info = img2img(client, handle_file(files["cutout.png"]), strength=0.25)
    assert "RGBA input: transparent areas composited on white" in info["notices"]
    gallery, info = img2img(client, handle_file(files["huge.png"]), strength=0.25)
    assert "input downscaled from 10000×10000 to 2048×2048" in info["notices"]
    assert info["input_size"] == [10_000, 10_000] and Image.open(gallery[0]["image"]).size == (256, 256)
    assert client.predict(api_name="/status")["preset"] == "tiny"
