"""Saving results: atomic files under ``outputs/<date>/`` with the parameters embedded.

Each file is written to a hidden temporary name in the same folder and renamed into place, so a
crash or a full disk never leaves a half-written image where the user (or the history) sees it.
The writer holds an advisory lock on its temporary file until the rename; a temporary that nobody
holds was left by a process that died mid-write, and the next ``OutputWriter`` removes it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

try:  # POSIX; Windows has no flock, and its leftovers are swept by age only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

import numpy as np
from PIL import Image, PngImagePlugin

from backends.runtime.errors import StudioError

logger = logging.getLogger(__name__)

_NUMBERED = re.compile(r"^(\d{5})-")
#: Our temporaries: ``.<final name>.<32 hex>.tmp`` (files from ``atomic_write``, folders from
#: ``orbit_outputs``). Only names of this shape are ever swept.
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
#: A temporary that cannot be checked with a lock (a folder, or no flock on this system) is taken
#: for a crash's leftover after this long: every write we make takes seconds, not an hour.
STALE_AFTER_S = 3600.0

_FULL = (errno.ENOSPC, errno.EDQUOT)
_TOO_LARGE = (errno.EFBIG,)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


class OutputError(StudioError):
    """A result could not be saved (disk full, no permission); nothing partial is left behind."""


def write_error_message(error: OSError, what: str, folder: Path) -> str:
    """The user's message for a failed save: which folder, why, and what to do about it.

    Args:
        error: the OS error of the write, rename or mkdir.
        what: the file (or files) that could not be saved, e.g. ``00003-7.png``.
        folder: the outputs folder (``--outputs``), the place the user can act on.
    """
    reason = error.strerror or str(error)
    if error.errno in _FULL:
        return (f"Could not save {what}: the disk holding the outputs folder {folder} is full ({reason}). "
                "Nothing was saved. Free some disk space there, or start the app with --outputs "
                "pointing at a folder on a disk with room, then try again.")
    if error.errno in _TOO_LARGE:
        return (f"Could not save {what}: the file is larger than the outputs folder {folder} allows "
                f"({reason}): its filesystem or a file-size limit (ulimit -f) caps it. Nothing was saved. "
                "Lift the limit, or start the app with --outputs pointing at another disk, then try again.")
    if error.errno in _DENIED:
        return (f"Could not save {what}: the outputs folder {folder} is not writable ({reason}). "
                "Nothing was saved. Make the folder writable, or start the app with --outputs "
                "pointing at a writable folder, then try again.")
    return (f"Could not save {what} in the outputs folder {folder}: {reason}. Nothing was saved. "
            "Free some disk space or choose another folder with --outputs, then try again.")


@contextlib.contextmanager
def _claimed(tmp: Path) -> Iterator[int | None]:
    """Create ``tmp`` and hold an exclusive flock on it while the block runs.

    The lock tells ``sweep_stale`` that a live process is still writing this file; the kernel
    drops it when the process dies, however it dies. Yields the descriptor (None without flock:
    Windows cannot rename a file that is open, so nothing is held there).
    """
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    if fcntl is None:  # pragma: no cover - Windows
        os.close(fd)
        yield None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None], folder: Path | None = None) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, fsync it, then rename it to ``path``.

    Args:
        path: the final name.
        write: writes the whole file at the path it is given (it may reopen and truncate it).
        folder: the outputs folder to name in an error message (default: ``path``'s folder).

    Raises:
        OutputError: the file could not be written; neither it nor its temporary is left behind.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with _claimed(tmp) as fd:
            write(tmp)
            if fd is None:  # pragma: no cover - Windows
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
            else:
                os.fsync(fd)  # the same inode the writer filled, whichever descriptor it used
            os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OutputError(write_error_message(error, path.name, folder or path.parent)) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _abandoned(entry: Path, now: float) -> bool:
    """Whether a temporary was left by a write that will never finish (its process is gone)."""
    try:
        if entry.is_dir() or fcntl is None:
            return now - entry.stat().st_mtime > STALE_AFTER_S
        fd = os.open(entry, os.O_RDONLY)
    except OSError:
        return False  # renamed by its writer meanwhile, or not ours to open: leave it be
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live writer (this process or another) holds it
    finally:
        os.close(fd)
    return True


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
        """Args:
            root: the outputs folder (``--outputs``); created on the first save. Leftovers of
                writes that a crash interrupted are removed now (``sweep_stale``).
        """
        self.root = Path(root)
        self._lock = threading.Lock()
        self.sweep_stale()

    def sweep_stale(self) -> list[Path]:
        """Remove temporaries that no live process is writing (a crash or a kill left them).

        A temporary file is stale when nobody holds its lock; a temporary folder, or any
        temporary where flock does not exist, when it is older than ``STALE_AFTER_S``. Returns
        what was removed. A leftover that cannot be removed is logged and left alone.
        """
        if not self.root.is_dir():
            return []
        now = time.time()
        removed = []
        for entry in self.root.glob("*/.*.tmp"):
            if not _TEMPORARY.match(entry.name) or not _abandoned(entry, now):
                continue
            try:
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError as error:
                logger.warning("could not remove the unfinished temporary %s: %s", entry, error)
                continue
            removed.append(entry)
        if removed:
            logger.info("removed %d unfinished temporary file(s) left in %s by an interrupted write: %s",
                        len(removed), self.root, ", ".join(str(p.relative_to(self.root)) for p in removed))
        return removed

    def _make_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(write_error_message(error, "the result", self.root)) from error

    def _today(self) -> Path:
        return self.root / dt.date.today().isoformat()

    @contextlib.contextmanager
    def _one_result(self) -> Iterator[list[Path]]:
        """Save one result whole or not at all: yields the list its files are added to.

        Holds the writer's lock (numbering stays unique), and if the block fails removes the
        files already written and the day folder when this result created it.
        """
        saved: list[Path] = []
        with self._lock:
            self._make_root()
            day = self._today()
            fresh = not day.exists()
            try:
                yield saved
            except BaseException:
                for path in saved:
                    path.unlink(missing_ok=True)
                if fresh:
                    with contextlib.suppress(OSError):  # not empty (another result landed) or already gone
                        day.rmdir()
                raise

    def _next_path(self, seed: int, suffix: str) -> Path:
        folder = self._today()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
        except OSError as error:
            raise OutputError(write_error_message(error, "the result", self.root)) from error
        return folder / f"{max(numbers, default=0) + 1:05d}-{seed}{suffix}"

    def save_images(self, images: list[Image.Image], params: dict[str, Any],
                    per_image: Sequence[Mapping[str, Any]] | None = None) -> list[Path]:
        """Save PNGs carrying ``params`` as a ``parameters`` text chunk and as JSON (``studio``).

        Args:
            per_image: what differs by image (its own seed), laid over ``params`` in each file
                and its name; one mapping per image.

        Raises:
            OutputError: an image could not be written; none of this batch is left behind.
        """
        if per_image is not None and len(per_image) != len(images):
            raise ValueError(f"per_image has {len(per_image)} entries for {len(images)} images")
        with self._one_result() as saved:  # a batch is saved whole or not at all
            for index, image in enumerate(images):
                meta = dict(params, image_index=index, **(per_image[index] if per_image is not None else {}))
                info = PngImagePlugin.PngInfo()
                info.add_text("parameters", a1111_parameters(meta))
                info.add_text("studio", json.dumps(meta, default=str))
                path = self._next_path(int(meta.get("seed", 0)), ".png")
                saved.append(atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info), self.root))
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
        text = json.dumps(dict(params, fps=fps, frames=len(frames)), indent=2, default=str)
        with self._one_result() as saved:
            video = self._next_path(int(params.get("seed", 0)), ".mp4")
            saved.append(atomic_write(video, lambda tmp: _write_mp4(tmp, frames, fps), self.root))
            saved.append(atomic_write(video.with_suffix(".json"),
                                      lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"), self.root))
            if gif:
                saved.append(atomic_write(video.with_suffix(".gif"), lambda tmp: _write_gif(tmp, frames, fps),
                                          self.root))
        logger.info("saved a %d-frame video to %s", len(frames), video)
        return dict(zip(("video", "params", "gif"), saved))

    def save_audio(self, audio: np.ndarray, sample_rate: int, params: dict[str, Any],
                   fmt: str = "flac") -> dict[str, Path]:
        """Save audio ((channels, samples) floats) as FLAC or WAV, its waveform picture and a JSON sidecar.

        Returns:
            ``{"audio": file, "waveform": webp, "params": json}``, all atomic; nothing is left of
            a result that failed part-way. The waveform is WebP, not PNG, so the Image tab's
            Recent outputs (its PNGs) never lists it.
        """
        from backends.runtime.audio_files import waveform, write_audio

        text = json.dumps(dict(params, sample_rate=sample_rate), indent=2, default=str)
        with self._one_result() as saved:
            path = self._next_path(int(params.get("seed", 0)), f".{fmt}")
            saved.append(atomic_write(path, lambda tmp: write_audio(tmp, audio, sample_rate, fmt), self.root))
            saved.append(atomic_write(path.with_suffix(".webp"), lambda tmp: waveform(audio).save(tmp, format="WEBP"),
                                      self.root))
            saved.append(atomic_write(path.with_suffix(".json"),
                                      lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"), self.root))
        logger.info("saved %.1f s of audio to %s", np.asarray(audio).shape[-1] / sample_rate, path)
        return dict(zip(("audio", "waveform", "params"), saved))

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
    """H.264 through imageio-ffmpeg's bundled ffmpeg binary, with its exit status checked.

    imageio-ffmpeg 0.8.1's ``write_frames`` never looks at ffmpeg's exit status: on a full disk
    ffmpeg fails ("Could not write header ...: No space left on device") and ``write_frames``
    returns normally, leaving an empty or truncated file that would be renamed into place. So we
    run the binary ourselves and turn a failure into an ``OSError`` carrying the errno ffmpeg
    reported. The container is named because ``path`` is a temporary name without the .mp4
    suffix ffmpeg would guess it from.
    """
    import subprocess
    import tempfile

    import imageio_ffmpeg

    first = _even_frame(frames[0])
    height, width = first.shape[:2]
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-hide_banner", "-loglevel", "error",
        "-f", "rawvideo", "-vcodec", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
        "-r", str(fps), "-i", "-", "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p",
        # CRF 18 is visually lossless for x264; our frames are small, so files stay small too.
        "-crf", "18", "-movflags", "+faststart", "-f", "mp4", str(path),
    ]
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full pipe would stall ffmpeg
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        assert process.stdin is not None
        try:
            for index, frame in enumerate(frames):
                array = first if index == 0 else _even_frame(frame)
                if array.shape != first.shape:
                    raise ValueError(f"frame {index} is {array.shape[1]}x{array.shape[0]}, the first {width}x{height}")
                process.stdin.write(array.tobytes())
            process.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg stopped early; its exit status and log below say why
        except BaseException:
            process.kill()
            raise
        finally:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
            try:
                status = process.wait(timeout=FFMPEG_FINISH_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise OSError(errno.ETIMEDOUT, f"ffmpeg did not finish within {FFMPEG_FINISH_S:.0f} s") from None
        if status != 0:
            log.seek(0)
            raise _ffmpeg_error(status, log.read().decode("utf-8", "replace"))


#: Seconds ffmpeg may take to finish the file after the last frame (x264 flushes its lookahead
#: and +faststart rewrites the file once); far above the ~2 s of 25 frames at 1024x576.
FFMPEG_FINISH_S = 300.0


def _ffmpeg_error(status: int, log: str) -> OSError:
    """An ``OSError`` for a failed ffmpeg run, with the errno its log names (disk full, denied...).

    ffmpeg prints C library error strings (``strerror``), the same ones ``os.strerror`` gives.
    Past a file-size limit (``ulimit -f``) the kernel kills it with SIGXFSZ instead: Python
    ignores that signal, but ``subprocess`` restores the default for its children.
    """
    if status == -getattr(signal, "SIGXFSZ", 0):
        return OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    last = log.strip().splitlines()[-1] if log.strip() else f"exit status {status}"
    for code in (*_FULL, *_TOO_LARGE, *_DENIED, errno.EIO):
        if os.strerror(code) in log:
            return OSError(code, os.strerror(code))
    return OSError(errno.EIO, f"ffmpeg failed: {last}")


def _write_gif(path: Path, frames: list[Image.Image], fps: int) -> None:
    """An endlessly looping GIF; GIF timing is in 10 ms steps, so fps is approximated."""
    first, *rest = [frame.convert("RGB") for frame in frames]
    first.save(path, format="GIF", save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
