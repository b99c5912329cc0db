"""Running jobs and the wait of those behind them: ``JobControl.seconds_left`` and ``Studio.queue_wait``."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.families import FAMILIES
from backends.runtime.errors import Cancelled
from backends.runtime.progress import JobControl, no_progress
from backends.runtime.studio import RECENT_JOBS, Studio, StudioConfig


class Clock:
    """A steady clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def studio(tiny_cache: Path, tmp_path: Path, clock: Clock) -> Studio:
    return Studio(StudioConfig(preset="tiny", cache_dir=tiny_cache, outputs_dir=tmp_path / "outputs"), FAMILIES,
                  clock=clock)


def run(st: Studio, clock: Clock, session: str, seconds: float) -> None:
    """A job of ``seconds`` that runs to its end."""
    control = st.start_job(session)
    clock.now += seconds
    control.progressed(1.0)
    st.finish_job(session, control)


def test_the_time_left_follows_the_rate_since_the_first_report() -> None:
    clock = Clock()
    control = JobControl(clock)
    assert control.seconds_left() is None  # no progress yet
    clock.now += 8  # the models move in: once a job, so it is left out of the rate
    control.progressed(0.1)
    assert control.seconds_left() is None  # one report is no rate
    clock.now += 0.5
    control.progressed(0.15)
    assert control.seconds_left() is None  # too early to say
    clock.now += 1.5
    control.progressed(0.2)
    assert control.seconds_left() == pytest.approx(16.0)  # a tenth of the job in 2 s: 0.8 in 16 s
    clock.now += 2  # no report for a while (a model moving in): the estimate grows
    assert control.seconds_left() == pytest.approx(32.0)
    control.progressed(1.5)  # clipped: a whole job, nothing left
    assert control.seconds_left() == 0.0


def test_a_job_stopped_at_a_step_is_marked_halted() -> None:
    control = JobControl()
    report = control.wrap(no_progress)
    report("Stage C (prior)", 1, 4)
    control.cancel()
    assert not control.halted  # pressed, but no step has ended the job yet
    with pytest.raises(Cancelled):
        report("Stage C (prior)", 2, 4)
    assert control.halted


def test_nothing_is_known_before_the_first_job(tiny_cache: Path, tmp_path: Path) -> None:
    clock = Clock()
    st = studio(tiny_cache, tmp_path, clock)
    assert st.queue_wait() == {"running_left_s": None, "average_s": None}
    control = st.start_job("a")
    clock.now += 5
    control.progressed(0.0)
    assert st.queue_wait() == {"running_left_s": None, "average_s": None}  # running, but no rate yet
    clock.now += 5
    control.progressed(0.25)
    assert st.queue_wait() == {"running_left_s": pytest.approx(15.0), "average_s": None}


def test_the_wait_is_the_running_jobs_time_left_and_the_average_of_recent_jobs(
        tiny_cache: Path, tmp_path: Path) -> None:
    clock = Clock()
    st = studio(tiny_cache, tmp_path, clock)
    run(st, clock, "a", 10)
    run(st, clock, "b", 30)
    assert st.queue_wait() == {"running_left_s": None, "average_s": pytest.approx(20.0)}

    running = st.start_job("c")
    clock.now += 4
    # No progress reported (chat, or a tab without the adapter): the average less its time so far.
    assert st.queue_wait()["running_left_s"] == pytest.approx(16.0)
    clock.now += 30
    assert st.queue_wait()["running_left_s"] == 0.0  # past the average: never below 0
    running.progressed(0.0)
    clock.now += 10
    running.progressed(0.5)  # its own rate wins once it has one: half done in 10 s
    assert st.queue_wait()["running_left_s"] == pytest.approx(10.0)

    other = st.start_job("d")  # several running (a queue group of its own): the longest counts
    other.progressed(0.0)
    clock.now += 2
    other.progressed(0.01)
    assert st.queue_wait()["running_left_s"] == pytest.approx(198.0)


def test_stopped_jobs_leave_the_average_alone_and_old_jobs_leave_it(tiny_cache: Path, tmp_path: Path) -> None:
    clock = Clock()
    st = studio(tiny_cache, tmp_path, clock)
    run(st, clock, "a", 10)
    stopped = st.start_job("b")
    clock.now += 1
    st.stop_job("b")
    with pytest.raises(Cancelled):
        stopped.wrap(no_progress)("Stage C (prior)", 1, 4)
    st.finish_job("b", stopped)
    assert st.queue_wait() == {"running_left_s": None, "average_s": pytest.approx(10.0)}

    for _ in range(RECENT_JOBS):
        run(st, clock, "c", 40)
    assert st.queue_wait()["average_s"] == pytest.approx(40.0)  # the 10 s job has left the window
