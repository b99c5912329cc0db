"""Outputs: numbering, embedded parameters, atomic writes that leave nothing behind on failure."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from PIL import Image

from backends.outputs import OutputError, OutputWriter, atomic_write


def test_images_are_numbered_and_carry_their_parameters(tmp_path: Path) -> None:
    writer = OutputWriter(tmp_path / "outputs")
    params = {"prompt": "a fox", "negative_prompt": "blur", "seed": 99, "width": 256, "timings": {"total": 1.0}}
    first = writer.save_images([Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")], params)
    second = writer.save_images([Image.new("RGB", (8, 8), "green")], dict(params, seed=100))
    assert [p.name for p in first + second] == ["00001-99.png", "00002-99.png", "00003-100.png"]
    with Image.open(first[1]) as png:
        text = png.text["parameters"]
        assert text.splitlines()[:2] == ["a fox", "Negative prompt: blur"]
        assert "Seed: 99" in text and "Width: 256" in text
        meta = json.loads(png.text["studio"])
        assert meta["image_index"] == 1 and meta["timings"] == {"total": 1.0}
        assert png.getpixel((0, 0)) == (0, 0, 255)
    assert writer.recent(limit=2) == [second[0], first[1]]


class FullDisk:
    """Stands in for an image whose save fails halfway, as on a full disk."""

    def save(self, path: Path, **_: object) -> None:
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_leaves_no_file_and_says_what_to_do(tmp_path: Path) -> None:
    writer = OutputWriter(tmp_path)
    with pytest.raises(OutputError, match="No space left on device.*Free some disk space"):
        writer.save_images([FullDisk()], {"seed": 1})  # type: ignore[list-item]
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []
    assert writer.save_images([Image.new("RGB", (4, 4))], {"seed": 2})[0].is_file()  # space is back


def test_atomic_write_keeps_the_old_file_when_the_new_one_fails(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(OutputError):
        atomic_write(target, lambda tmp: (tmp.write_text("new, partial"), (_ for _ in ()).throw(OSError(5, "I/O error"))))
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]
