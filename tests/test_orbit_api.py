"""/orbit from outside: the real app in-process on the tiny preset, driven through gradio_client."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.serving import serve_tiny
from tests.test_video_api import read_video

CONTRACT = ["image", "variant", "elevation_deg", "steps", "seed", "path", "elevation_end_deg"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("orbit-pictures")
    rng = np.random.default_rng(8)
    array = (rng.random((80, 100, 4)) * 255).astype(np.uint8)
    array[..., 3] = 0
    array[10:70, 20:80, 3] = 255
    Image.fromarray(array, "RGBA").save(folder / "cutout.png")
    return {path.stem: path for path in folder.iterdir()}


@pytest.fixture(scope="module")
def client(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with serve_tiny(models_dir, tmp_path_factory.mktemp("orbit-outputs"), "--tabs", "image,orbit,system") as (_, url):
        yield Client(url, verbose=False)


def orbit(client: Client, image: Path | None, **overrides: Any) -> tuple[str, str, dict]:
    values = dict(image=handle_file(str(image)) if image else None, variant="p", elevation_deg=10, steps=2,
                  seed=4, path="sine", elevation_end_deg=30)
    values.update(overrides)
    video, sheet, info = client.predict(*values.values(), api_name="/orbit")
    return (video["video"] if isinstance(video, dict) else video), sheet, info


def test_api_takes_the_contract_inputs_in_order(client: Client) -> None:
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/orbit"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == CONTRACT


def test_orbit_returns_a_playable_mp4_and_a_contact_sheet(client: Client, pictures: dict[str, Path]) -> None:
    video, sheet, info = orbit(client, pictures["cutout"])
    meta, frames = read_video(video)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert meta["size"] == (64, 64) and len(frames) == 21
    assert Image.open(sheet).size == (7 * 64, 3 * 64)
    assert info["seed"] == 4 and info["variant"] == "p" and info["preset"] == "tiny"
    assert info["camera"]["path_mode"] == "sine" and info["camera"]["azimuths_deg"][-1] == 0
    assert {"timings", "guidance", "files"} <= set(info)
    saved = {kind: Path(path) for kind, path in info["files"].items()}
    assert set(saved) == {"video", "params", "sheet", "frames"}
    assert len(list(saved["frames"].glob("*.png"))) == 21
    assert not list(saved["video"].parent.glob(".*"))  # no temporaries left behind
