"""Step progress and cancellation, shared by every backend.

Backends never see Gradio: they call a plain ``ProgressFn`` once per denoising step. The tab adapts
that to ``gr.Progress``; tests pass a list-appending function. Cancellation rides on the same call,
because the step boundary is the only place where stopping leaves nothing half-done.
"""

from __future__ import annotations

import threading
from typing import Protocol

from backends.runtime.errors import Cancelled


class ProgressFn(Protocol):
    """Called after each step of a stage.

    Args:
        stage: a short label shown to the user, e.g. ``"Stage C (prior)"``.
        step: steps finished so far in this stage (1-based once a step is done).
        total: the number of steps in this stage.
    """

    def __call__(self, stage: str, step: int, total: int) -> None: ...


def no_progress(stage: str, step: int, total: int) -> None:
    """A ``ProgressFn`` that ignores every report."""


class JobControl:
    """A Stop flag for one running job, checked at every progress report."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop at its next step."""
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def wrap(self, progress: ProgressFn) -> ProgressFn:
        """Return a ``ProgressFn`` that raises ``Cancelled`` once Stop was pressed."""

        def report(stage: str, step: int, total: int) -> None:
            if self._stop.is_set():
                raise Cancelled("Stopped by the user; nothing was saved.")
            progress(stage, step, total)

        return report

