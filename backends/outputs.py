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

    def _next_path(self, seed: int, suffix: str) -> Path:
        folder = self.root / dt.date.today().isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
        return folder / f"{max(numbers, default=0) + 1:05d}-{seed}{suffix}"

    def save_images(self, images: list[Image.Image], params: dict[str, Any]) -> list[Path]:
        """Save PNGs carrying ``params`` as a ``parameters`` text chunk and as JSON (``studio``)."""
        saved: list[Path] = []
        with self._lock:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise OutputError(f"Cannot create the outputs folder {self.root}: {error}. "
                                  "Choose a writable folder with --outputs.") from error
            for index, image in enumerate(images):
                meta = dict(params, image_index=index)
                info = PngImagePlugin.PngInfo()
                info.add_text("parameters", a1111_parameters(meta))
                info.add_text("studio", json.dumps(meta, default=str))
                path = self._next_path(int(params.get("seed", 0)), ".png")
                saved.append(atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info)))
        logger.info("saved %d image(s) to %s", len(saved), saved[0].parent if saved else self.root)
        return saved

    def recent(self, limit: int = 12, suffixes: tuple[str, ...] = (".png",)) -> list[Path]:
        """Newest result files first (hidden temporaries excluded)."""
        if not self.root.is_dir():
            return []
        files = [p for p in self.root.glob("*/*") if p.suffix in suffixes and not p.name.startswith(".")]
        return sorted(files, key=lambda p: (p.parent.name, p.name), reverse=True)[:limit]
