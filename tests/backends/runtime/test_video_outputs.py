"""OutputWriter.save_video: H.264 MP4 that browsers play, JSON sidecar, optional GIF, atomic."""

from __future__ import annotations

import json
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from backends.runtime.outputs import OutputWriter


def frames(count: int, size: tuple[int, int] = (64, 32)) -> list[Image.Image]:
    return [Image.new("RGB", size, (40 * i % 256, 100, 200)) for i in range(count)]


def test_mp4_sidecar_and_gif(tmp_path: Path) -> None:
    saved = OutputWriter(tmp_path).save_video(frames(5), fps=7, params={"seed": 42, "steps": 3}, gif=True)
    assert set(saved) == {"video", "params", "gif"}
    assert saved["video"].name.endswith("-42.mp4") and saved["params"].stem == saved["video"].stem
    reader = imageio_ffmpeg.read_frames(str(saved["video"]))
    meta = next(reader)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 7
    assert sum(1 for _ in reader) == 5
    params = json.loads(saved["params"].read_text())
    assert (params["seed"], params["steps"], params["fps"], params["frames"]) == (42, 3, 7, 5)
    with Image.open(saved["gif"]) as gif:
        assert gif.n_frames == 5 and gif.info["loop"] == 0
    assert OutputWriter(tmp_path).recent(suffixes=(".mp4",)) == [saved["video"]]


def test_odd_sizes_are_padded_to_even(tmp_path: Path) -> None:
    saved = OutputWriter(tmp_path).save_video(frames(2, (65, 33)), fps=6, params={"seed": 1})
    reader = imageio_ffmpeg.read_frames(str(saved["video"]))
    assert next(reader)["size"] == (66, 34)


def test_a_failed_save_leaves_nothing_behind(tmp_path: Path) -> None:
    mixed = frames(2) + frames(1, (32, 32))
    with pytest.raises(ValueError, match="frame 2 is 32x32"):
        OutputWriter(tmp_path).save_video(mixed, fps=6, params={"seed": 3})
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    with pytest.raises(ValueError, match="at least one frame"):
        OutputWriter(tmp_path).save_video([], fps=6, params={"seed": 3})


def test_pixels_survive_encoding_closely(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    smooth = [Image.fromarray(np.full((64, 128, 3), value, np.uint8)) for value in rng.integers(30, 220, 3)]
    saved = OutputWriter(tmp_path).save_video(smooth, fps=6, params={"seed": 0})
    reader = imageio_ffmpeg.read_frames(str(saved["video"]))
    next(reader)
    decoded = [np.frombuffer(frame, np.uint8).reshape(64, 128, 3) for frame in reader]
    for original, back in zip(smooth, decoded):
        assert np.abs(np.asarray(original, int) - back.astype(int)).mean() < 3  # CRF 18
