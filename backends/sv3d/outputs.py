"""Saving an orbit: the MP4 (``OutputWriter.save_video``), a contact sheet and the frames.

Every file is atomic: the MP4 and sidecar through ``save_video``, the sheet through
``atomic_write``, and the frames are written into a hidden temporary folder that is renamed into
place in one step. If anything fails, what this result already wrote is removed again.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from backends.runtime.outputs import OutputError, OutputWriter, atomic_write, write_error_message

logger = logging.getLogger(__name__)

#: Frames per row of the contact sheet (21 views: three rows of seven).
SHEET_COLUMNS = 7


def contact_sheet(frames: list[Image.Image], columns: int = SHEET_COLUMNS) -> Image.Image:
    """The frames in reading order on a white grid, ``columns`` per row."""
    width, height = frames[0].size
    rows = math.ceil(len(frames) / columns)
    sheet = Image.new("RGB", (width * min(columns, len(frames)), height * rows), (255, 255, 255))
    for index, frame in enumerate(frames):
        sheet.paste(frame.convert("RGB"), ((index % columns) * width, (index // columns) * height))
    return sheet


def save_orbit(writer: OutputWriter, frames: list[Image.Image], fps: int, params: dict[str, Any]) -> dict[str, Path]:
    """Save the orbit; returns ``{"video", "params", "sheet", "frames"}`` (frames: a folder).

    Raises:
        OutputError: a file could not be written; nothing of this result is left behind.
    """
    saved = writer.save_video(frames, fps, params)
    video = saved["video"]
    try:
        sheet = contact_sheet(frames)
        saved["sheet"] = atomic_write(video.with_name(video.stem + "-sheet.png"),
                                      lambda tmp: sheet.save(tmp, format="PNG"))
        folder = video.with_name(video.stem + "-frames")
        staging = video.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
        try:
            staging.mkdir()
            for index, frame in enumerate(frames):
                frame.save(staging / f"{index:03d}.png", format="PNG")
            os.replace(staging, folder)
        except OSError as error:
            raise OutputError(write_error_message(error, f"the frames {folder.name}", writer.root)) from error
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        saved["frames"] = folder
    except BaseException:
        for path in saved.values():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    logger.info("saved a %d-view orbit to %s", len(frames), video)
    return saved
