"""Saving results: atomic files under ``outputs/<date>/`` with the parameters embedded.

Each file is written to a hidden temporary name in the same folder and renamed into place, so a
crash or a full disk never leaves a half-written image where the user (or the history) sees it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, PngImagePlugin

from backends.errors import StudioError

logger = logging.getLogger(__name__)

_NUMBERED = re.compile(r"^(\d{5})-")


class OutputError(StudioError):
    """A result could not be saved (disk full, no permission); nothing partial is left behind."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, fsync it, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"Could not save {path.name} in {path.parent}: {error.strerror or error}. "
                          "Free some disk space or choose another folder with --outputs.") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def a1111_parameters(params: dict[str, Any]) -> str:
    """The ``parameters`` text most image viewers and web UIs read (A1111's layout)."""
    lines = [str(params.get("prompt", ""))]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    skip = {"prompt", "negative_prompt", "truncated", "timings", "notices"}
    fields = [f"{key.replace('_', ' ').capitalize()}: {value}" for key, value in params.items()
              if key not in skip and not isinstance(value, (dict, list))]
    lines.append(", ".join(fields))
    return "\n".join(lines)


class OutputWriter:
    """Numbers, names and atomically writes result files; lists recent ones for the history."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def _make_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"Cannot create the outputs folder {self.root}: {error}. "
                              "Choose a writable folder with --outputs.") from error

    def _next_path(self, seed: int, suffix: str) -> Path:
        folder = self.root / dt.date.today().isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
        return folder / f"{max(numbers, default=0) + 1:05d}-{seed}{suffix}"

    def save_images(self, images: list[Image.Image], params: dict[str, Any]) -> list[Path]:
        """Save PNGs carrying ``params`` as a ``parameters`` text chunk and as JSON (``studio``)."""
        saved: list[Path] = []
        with self._lock:
            self._make_root()
            for index, image in enumerate(images):
                meta = dict(params, image_index=index)
                info = PngImagePlugin.PngInfo()
                info.add_text("parameters", a1111_parameters(meta))
                info.add_text("studio", json.dumps(meta, default=str))
                path = self._next_path(int(params.get("seed", 0)), ".png")
                saved.append(atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info)))
        logger.info("saved %d image(s) to %s", len(saved), saved[0].parent if saved else self.root)
        return saved

    def save_video(self, frames: list[Image.Image], fps: int, params: dict[str, Any],
                   gif: bool = False) -> dict[str, Path]:
        """Save frames as an H.264 MP4 with a JSON sidecar of ``params`` (and a GIF if asked).

        The MP4 is libx264 in yuv420p, the combination every browser plays (``mp4v`` is not),
        with the index at the front (``+faststart``) so playback starts before the download ends.
        yuv420p needs even sides; an odd side is padded by repeating the last row or column.
        Each file is written atomically; if any of them fails, the ones already written are
        removed again, so a result is either complete or absent.

        Returns:
            ``{"video": mp4, "params": json}`` plus ``"gif"`` when asked for.

        Raises:
            OutputError: a file could not be written; nothing of this result is left behind.
        """
        if not frames:
            raise ValueError("save_video needs at least one frame")
        saved: dict[str, Path] = {}
        with self._lock:
            self._make_root()
            video = self._next_path(int(params.get("seed", 0)), ".mp4")
            try:
                saved["video"] = atomic_write(video, lambda tmp: _write_mp4(tmp, frames, fps))
                text = json.dumps(dict(params, fps=fps, frames=len(frames)), indent=2, default=str)
                saved["params"] = atomic_write(video.with_suffix(".json"),
                                               lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
                if gif:
                    saved["gif"] = atomic_write(video.with_suffix(".gif"), lambda tmp: _write_gif(tmp, frames, fps))
            except BaseException:
                for path in saved.values():
                    path.unlink(missing_ok=True)
                raise
        logger.info("saved a %d-frame video to %s", len(frames), video)
        return saved

    def recent(self, limit: int = 12, suffixes: tuple[str, ...] = (".png",)) -> list[Path]:
        """Newest result files first (hidden temporaries excluded)."""
        if not self.root.is_dir():
            return []
        files = [p for p in self.root.glob("*/*") if p.suffix in suffixes and not p.name.startswith(".")]
        return sorted(files, key=lambda p: (p.parent.name, p.name), reverse=True)[:limit]


def _even_frame(image: Image.Image) -> np.ndarray:
    """An RGB array with even sides (yuv420p stores colour at half resolution)."""
    array = np.asarray(image.convert("RGB"))
    pad_h, pad_w = array.shape[0] % 2, array.shape[1] % 2
    if pad_h or pad_w:
        array = np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(array)


def _write_mp4(path: Path, frames: list[Image.Image], fps: int) -> None:
    """H.264 through imageio-ffmpeg's bundled ffmpeg; the container is named because ``path``
    is a temporary name without the .mp4 suffix ffmpeg would guess it from."""
    import imageio_ffmpeg

    first = _even_frame(frames[0])
    height, width = first.shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        quality=None, bitrate=None, macro_block_size=1,
        # CRF 18 is visually lossless for x264; our frames are small, so files stay small too.
        output_params=["-crf", "18", "-movflags", "+faststart", "-f", "mp4"],
    )
    writer.send(None)  # start ffmpeg
    try:
        for index, frame in enumerate(frames):
            array = first if index == 0 else _even_frame(frame)
            if array.shape != first.shape:
                raise ValueError(f"frame {index} is {array.shape[1]}x{array.shape[0]}, the first {width}x{height}")
            writer.send(array)
    finally:
        writer.close()


def _write_gif(path: Path, frames: list[Image.Image], fps: int) -> None:
    """An endlessly looping GIF; GIF timing is in 10 ms steps, so fps is approximated."""
    first, *rest = [frame.convert("RGB") for frame in frames]
    first.save(path, format="GIF", save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
