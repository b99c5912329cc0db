"""The real app, in-process on a free port, for tests: one way to start it, used by every fixture."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from backends.runtime.studio import Studio


@contextlib.contextmanager
def serve_tiny(models_dir: Path, outputs: Path, *argv: str) -> Iterator[tuple["Studio", str]]:
    """``app.py --preset tiny`` as ``app.launch`` starts it; yields its Studio and URL, then closes it.

    The Studio is the one the app serves, so tests can arm faults or count loads. ``argv`` goes
    after the defaults, so a test's own ``--outputs`` (or any other flag) wins.
    """
    import app

    args = app.parse_args(["--preset", "tiny", "--models-dir", str(models_dir), "--outputs", str(outputs), *argv],
                          environ={})
    studio = app.build_studio(args)
    try:
        demo, url = app.launch(args, prevent_thread_lock=True, studio=studio)
    except ValueError as error:
        # gradio 6.31's start-up probe (networking.url_ok) gives the first page 3 s once; on the
        # loaded 2-core CI machine it has missed that twice in ~60 launches. One more start.
        if "localhost is not accessible" not in str(error):
            raise
        demo, url = app.launch(args, prevent_thread_lock=True, studio=studio)
    try:
        yield studio, url
    finally:
        demo.close()
