"""Outputs: numbering, embedded parameters, atomic writes that leave nothing behind on failure."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from backends.runtime.outputs import STALE_AFTER_S, OutputError, OutputWriter, _write_mp4, atomic_write


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
    with pytest.raises(OutputError, match="No space left on device.*Free some disk space") as caught:
        writer.save_images([FullDisk()], {"seed": 1})  # type: ignore[list-item]
    assert f"the disk holding the outputs folder {tmp_path} is full" in str(caught.value)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []
    assert writer.save_images([Image.new("RGB", (4, 4))], {"seed": 2})[0].is_file()  # space is back


class Denied:
    def save(self, path: Path, **_: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")


def test_an_unwritable_folder_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=f"the outputs folder {tmp_path} is not writable .*--outputs"):
        OutputWriter(tmp_path).save_images([Denied()], {"seed": 1})  # type: ignore[list-item]


def test_a_batch_is_saved_whole_or_not_at_all(tmp_path: Path) -> None:
    writer = OutputWriter(tmp_path)
    with pytest.raises(OutputError):
        writer.save_images([Image.new("RGB", (4, 4)), FullDisk()], {"seed": 1})  # type: ignore[list-item]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_failed_mp4_encode_raises_instead_of_leaving_a_broken_file(tmp_path: Path) -> None:
    """ffmpeg's own failure (here: every write to /dev/full is ENOSPC) must reach the caller."""
    frames = [Image.new("RGB", (32, 16), (i * 40, 0, 0)) for i in range(4)]
    with pytest.raises(OSError) as caught:
        _write_mp4(Path("/dev/full"), frames, 8)
    assert caught.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match="ffmpeg failed"):
        _write_mp4(tmp_path / "no-such-folder" / "x.mp4", frames, 8)
    with pytest.raises(ValueError, match="frame 1 is 8x8"):
        _write_mp4(tmp_path / "x.mp4", [frames[0], Image.new("RGB", (8, 8))], 8)


def test_a_new_writer_sweeps_temporaries_that_no_live_writer_holds(tmp_path: Path) -> None:
    day = tmp_path / "2026-01-01"
    day.mkdir()
    (day / "00001-1.png").write_bytes(b"done")
    dead = day / f".00002-1.png.{'a' * 32}.tmp"  # its writer was killed: nobody holds it
    dead.write_bytes(b"half")
    live = day / f".00003-1.png.{'b' * 32}.tmp"  # a writer in another process is still busy
    live.write_bytes(b"busy")
    young_dir = day / f".00004-1-frames.{'c' * 32}.tmp"  # folders cannot be locked: age decides
    young_dir.mkdir()
    old_dir = day / f".00005-1-frames.{'d' * 32}.tmp"
    old_dir.mkdir()
    (old_dir / "000.png").write_bytes(b"x")
    os.utime(old_dir, (time.time() - STALE_AFTER_S - 60,) * 2)
    other = day / ".notes.tmp"  # not our naming: never touched
    other.write_text("mine")
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        writer = OutputWriter(tmp_path)
        assert sorted(p.name for p in day.iterdir()) == sorted(
            ["00001-1.png", live.name, young_dir.name, other.name])
        assert writer.recent() == [day / "00001-1.png"]
    finally:
        os.close(holder)
    OutputWriter(tmp_path)  # the busy writer is gone now
    assert not live.exists() and young_dir.exists()


def test_a_write_holds_its_temporary_so_a_sweep_leaves_it_alone(tmp_path: Path) -> None:
    swept: list[list[Path]] = []

    def write(tmp: Path) -> None:
        tmp.write_text("in progress")
        swept.append(OutputWriter(tmp_path).sweep_stale())  # another app starting meanwhile

    (tmp_path / "day").mkdir()
    atomic_write(tmp_path / "day" / "result.txt", write)
    assert swept == [[]] and (tmp_path / "day" / "result.txt").read_text() == "in progress"


def test_atomic_write_keeps_the_old_file_when_the_new_one_fails(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(OutputError):
        atomic_write(target, lambda tmp: (tmp.write_text("new, partial"), (_ for _ in ()).throw(OSError(5, "I/O error"))))
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]
