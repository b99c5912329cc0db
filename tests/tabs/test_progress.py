"""One progress bar for the whole job: fractions over every stage, and an estimate of the time left."""

from __future__ import annotations

import re
import time

import pytest

from tabs.common import gradio_progress


class Bar:
    """Stands in for ``gr.Progress``: keeps what the bar was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, str]] = []

    def __call__(self, value: object, desc: str = "", unit: str = "steps") -> None:
        self.calls.append((value, desc))


def test_the_bar_spans_every_stage_in_order() -> None:
    bar = Bar()
    report = gradio_progress(bar, (4, 2, 1))
    for stage, total in (("Stage C (prior)", 4), ("Stage B (decoder)", 2), ("Stage A (decode)", 1)):
        for step in range(1, total + 1):
            report(stage, step, total)
    fractions = [value for value, _ in bar.calls]
    assert fractions == pytest.approx([i / 7 for i in range(1, 8)])
    assert bar.calls[4][1].startswith("Stage B (decoder): step 1/2 · 71% of the job")
    assert bar.calls[-1][1].startswith("Stage A (decode): step 1/1 · 100% of the job")


def test_a_stage_that_reports_another_total_replaces_the_plan() -> None:
    """img2img at strength 0.3 runs 3 of the 10 stage C steps asked for."""
    bar = Bar()
    report = gradio_progress(bar, (10, 2, 1))
    report("Stage C (prior)", 3, 3)
    assert bar.calls[-1][0] == pytest.approx(3 / 6)


def test_the_time_left_is_estimated_once_the_job_has_run_a_while() -> None:
    bar = Bar()
    report = gradio_progress(bar, (4, 4))
    report("Stage C (prior)", 1, 4)
    assert "left" not in bar.calls[-1][1]  # too early to say
    time.sleep(1.05)
    report("Stage C (prior)", 2, 4)
    # A quarter done after 1.05 s or more: three times that is left (more on a slow machine).
    left = re.search(r"about (\d+) s left$", bar.calls[-1][1])
    assert left is not None and 3 <= int(left.group(1)) <= 30, bar.calls[-1][1]


def test_without_a_plan_each_stage_fills_the_bar() -> None:
    bar = Bar()
    gradio_progress(bar)("Video decoding", 2, 5)
    assert bar.calls == [((2, 5), "Video decoding: step 2/5")]


def test_the_fraction_of_the_job_is_handed_on_for_the_queue_wait() -> None:
    """``on_fraction`` gets what the bar shows (the job's ``JobControl.progressed``)."""
    fractions: list[float] = []
    report = gradio_progress(Bar(), (4, 2, 1), on_fraction=fractions.append)
    report("Stage C (prior)", 2, 4)
    report("Stage B (decoder)", 1, 2)
    assert fractions == pytest.approx([2 / 7, 5 / 7])
    without_plan: list[float] = []
    gradio_progress(Bar(), on_fraction=without_plan.append)("Video decoding", 2, 5)
    assert without_plan == pytest.approx([0.4])
