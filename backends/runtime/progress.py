"""Step progress and cancellation, shared by every backend.

Backends never see Gradio: they call a plain ``ProgressFn`` once per denoising step. The tab adapts
that to ``gr.Progress``; tests pass a list-appending function. Cancellation rides on the same call,
because the step boundary is the only place where stopping leaves nothing half-done.

``JobControl`` also keeps how far its job has got, so a job waiting behind it can be told how long
it will wait (``Studio.queue_wait``).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

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


#: The first second of steps says little about their rate: no estimate before it.
ESTIMATE_AFTER_S = 1.0


class JobControl:
    """A Stop flag for one running job, checked at every progress report, and the job's progress.

    The progress adapter reports the fraction of the whole job done (``progressed``); the time
    left follows from the rate since the first report, not since the job started: what comes
    before it (the models moving in) happens once. On the tiny preset's longest image job (151
    steps, 96 s on a busy CPU, 8 s of it before the first step), the rate since the start gave
    169 s for the 84 s left after 10 steps and 75 s for 59 s after 50; the rate since the first
    report gave 62 s and 60 s. Plain attribute writes from the job's thread and reads from the
    server's are enough: a reader sees the last fraction or the one before, both true a moment ago.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Start the job's clock.

        Args:
            clock: seconds on a steady clock (tests pass a fake one to step time by hand).
        """
        self._stop = threading.Event()
        self._clock = clock
        self.started = clock()
        self._fraction = 0.0
        self._first: tuple[float, float] | None = None  # (time, fraction) of the first report
        self._halted = False

    def cancel(self) -> None:
        """Ask the job to stop at its next step."""
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    @property
    def halted(self) -> bool:
        """Whether a report raised ``Cancelled``: the job ended early, so its length says nothing
        about a whole job's. (A flag set after the last report, as chat does, halts nothing.)"""
        return self._halted

    def wrap(self, progress: ProgressFn) -> ProgressFn:
        """Return a ``ProgressFn`` that raises ``Cancelled`` once Stop was pressed."""

        def report(stage: str, step: int, total: int) -> None:
            if self._stop.is_set():
                self._halted = True
                raise Cancelled("Stopped by the user.")
            progress(stage, step, total)

        return report

    def progressed(self, fraction: float) -> None:
        """Record that ``fraction`` (0 to 1) of the whole job is done; values outside are clipped."""
        fraction = min(1.0, max(0.0, float(fraction)))
        if self._first is None:
            self._first = (self._clock(), fraction)  # one assignment: a reader sees both or neither
        self._fraction = fraction

    def elapsed(self) -> float:
        """Seconds since the job started."""
        return self._clock() - self.started

    def seconds_left(self) -> float | None:
        """The time left at the rate since the first report; None until a second of reports has
        moved the fraction on."""
        first, fraction = self._first, self._fraction
        if first is None:
            return None
        since, start = self._clock() - first[0], first[1]
        if fraction >= 1.0:
            return 0.0
        if fraction <= start or since < ESTIMATE_AFTER_S:
            return None
        return since * (1 - fraction) / (fraction - start)
