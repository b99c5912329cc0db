"""/generate_video from outside: the real app in-process, driven through gradio_client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import imageio_ffmpeg
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from backends.runtime.studio import Studio
from backends.svd.backend import DECODE_SITE
from tests.serving import serve_tiny

CONTRACT = ["image", "num_frames", "fps", "motion_bucket_id", "noise_aug_strength", "steps", "decode_chunk_size",
            "seed"]
#: Fits either tiny family with its working memory, never both: the tiny weights are 11.5 MB (cascade)
#: and 13.7 MB (SVD), and the SVD UNet stage alone needs 11.6 MB plus 8.8 MB of working memory.
BUDGET_BYTES = 22 * 2**20


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(5)
    Image.fromarray((rng.random((120, 200, 3)) * 255).astype(np.uint8)).save(folder / "photo.png")
    return {path.stem: path for path in folder.iterdir()}


@pytest.fixture(scope="module")
def client(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with serve_tiny(models_dir, tmp_path_factory.mktemp("outputs")) as (_, url):
        yield Client(url, verbose=False)


def video(client: Client, image: Path | None, **overrides: Any) -> tuple[str, dict]:
    """Call /generate_video with the eight contract inputs, in order; tiny-preset defaults.

    Returns the downloaded MP4's path and the info.
    """
    values = dict(image=handle_file(str(image)) if image else None, num_frames=6, fps=8, motion_bucket_id=127,
                  noise_aug_strength=0.02, steps=3, decode_chunk_size=0, seed=11)
    values.update(overrides)
    result, info = client.predict(*values.values(), api_name="/generate_video")
    return (result["video"] if isinstance(result, dict) else result), info


def read_video(path: str | Path) -> tuple[dict, np.ndarray]:
    """The MP4's stream metadata (codec, pixel format, fps) and its decoded frames."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = np.stack([np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader])
    return meta, frames


def test_api_takes_exactly_the_contract_inputs(client: Client) -> None:
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate_video"]
    assert [p["parameter_name"] for p in parameters["parameters"]] == CONTRACT


def test_generate_video_returns_a_playable_h264_mp4(client: Client, pictures: dict[str, Path]) -> None:
    result, info = video(client, pictures["photo"], num_frames=5, fps=8)
    meta, frames = read_video(result)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert meta["fps"] == 8 and meta["size"] == (128, 64) and len(frames) == 5
    assert info["seed"] == 11 and info["num_frames"] == 5 and info["preset"] == "tiny"
    assert {"timings", "unet", "decode_chunk_size"} <= set(info)
    saved = {kind: Path(path) for kind, path in info["files"].items()}
    assert set(saved) == {"video", "params"} and all(path.is_file() for path in saved.values())
    assert json.loads(saved["params"].read_text())["seed"] == 11
    assert not list(saved["video"].parent.glob(".*"))  # no temporaries left behind


@pytest.fixture(scope="module")
def budget_app(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Studio, Client]]:
    """The app on a budget that holds one family at a time, with its Studio at hand (load counts, faults)."""
    with serve_tiny(models_dir, tmp_path_factory.mktemp("budget-outputs"),
                    "--vram-budget", f"{BUDGET_BYTES / 2**30:.9f}") as (studio, url):
        yield studio, Client(url, verbose=False)


def placements(client: Client) -> dict[str, str]:
    return {m["name"]: m["placement"] for m in client.predict(api_name="/status")["models"]}


def test_image_video_image_evicts_and_restores_without_reloading(
        budget_app: tuple[Studio, Client], pictures: dict[str, Path]) -> None:
    studio, client = budget_app
    image_inputs = ["a red lighthouse on a cliff", "", 256, 256, 3, 2, 4.0, 0.0, 1, 7]
    first, _ = client.predict(*image_inputs, api_name="/generate_image")
    video(client, pictures["photo"])
    after_video = placements(client)
    assert after_video["svd.vae"] == "gpu"
    assert {where for name, where in after_video.items() if name.startswith("cascade.")} == {"cpu"}  # evicted
    second, _ = client.predict(*image_inputs, api_name="/generate_image")
    after_image = placements(client)
    assert after_image["cascade.prior"] == "gpu" and after_image["cascade.decoder"] == "gpu"
    assert "cpu" in {where for name, where in after_image.items() if name.startswith("svd.")}
    cascade = [name for name in after_image if name.startswith("cascade.")]
    assert all(studio.manager.component(name).loads == 1 for name in cascade)  # back from RAM, not disk
    assert np.array_equal(np.asarray(Image.open(first[0]["image"])), np.asarray(Image.open(second[0]["image"])))
    status = client.predict(api_name="/status")
    assert sum(m["bytes"] for m in status["models"] if m["placement"] == "gpu") <= BUDGET_BYTES


def test_decode_oom_retry_and_persistent_oom(budget_app: tuple[Studio, Client], pictures: dict[str, Path]) -> None:
    studio, client = budget_app
    studio.manager.faults.arm(DECODE_SITE, times=1)
    result, info = video(client, pictures["photo"], decode_chunk_size=4)
    assert info["decode_chunk_size"] == 2 and len(read_video(result)[1]) == 6
    assert any("retried with 2" in notice for notice in info["notices"])
    # Chunks of 2 and 1 fail, then again in the manager's retry one memory mode lower.
    studio.manager.faults.arm(DECODE_SITE, times=4)
    with pytest.raises(Exception, match="Out of device memory running Stable Video Diffusion image-to-video"):
        video(client, pictures["photo"], decode_chunk_size=2)
    assert client.predict(api_name="/status")["preset"] == "tiny"
    result, _ = video(client, pictures["photo"], decode_chunk_size=2)  # and it still works
    assert len(read_video(result)[1]) == 6
