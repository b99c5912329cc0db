"""The cluster's status board (``backends.cluster.board``) as plain Python: Ray only hosts it.

``Board.beat`` is a long poll, so these run it on an asyncio loop, as Ray's async actor does.
The clock is the module's ``time.monotonic``, moved by hand where a test needs time to pass.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from backends.cluster import board as board_module
from backends.cluster.board import FORGET_S, STALE_S, Board

STATUS = {"name": "r1", "device": "cpu", "models": []}


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_a_beat_with_nothing_to_hand_back_waits_its_time() -> None:
    async def beat() -> tuple[dict[str, list[str]], float]:
        started = time.monotonic()
        asks = await Board().beat("r1", STATUS, [], wait=0.2)
        return asks, time.monotonic() - started

    asks, waited = run(beat())
    assert asks == {"stop": [], "unload": []} and 0.18 <= waited < 2.0


def test_a_stop_answers_the_waiting_beat_of_the_replica_running_the_job_at_once() -> None:
    async def scene() -> tuple[dict[str, list[str]], dict[str, list[str]], float]:
        board = Board()
        running = asyncio.ensure_future(board.beat("r1", STATUS, ["job-a"], wait=30))
        other = asyncio.ensure_future(board.beat("r2", STATUS, ["job-b"], wait=30))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await board.stop("job-a")
        return await running, await other, time.monotonic() - started

    mine, theirs, took = run(scene())
    assert mine == {"stop": ["job-a"], "unload": []}
    assert theirs == {"stop": [], "unload": []}  # woken too (it might have had the job), asked nothing
    assert took < 5.0  # not the 30 s wait


def test_a_stop_for_a_job_begun_since_the_beat_reaches_the_next_beat() -> None:
    async def scene() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        board = Board()
        waiting = asyncio.ensure_future(board.beat("r1", STATUS, [], wait=30))
        await asyncio.sleep(0.05)
        await board.stop("job-new")
        first = await waiting
        return first, await board.beat("r1", STATUS, ["job-new"], wait=30)

    first, second = run(scene())
    assert first == {"stop": [], "unload": []} and second == {"stop": ["job-new"], "unload": []}


def test_a_stop_is_handed_out_once() -> None:
    async def scene() -> list[dict[str, list[str]]]:
        board = Board()
        await board.stop("job-a")
        return [await board.beat("r1", STATUS, ["job-a"]), await board.beat("r1", STATUS, ["job-a"])]

    assert run(scene()) == [{"stop": ["job-a"], "unload": []}, {"stop": [], "unload": []}]


def test_unload_reaches_every_live_replica_and_wakes_a_waiting_one() -> None:
    async def scene() -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
        board = Board()
        await board.beat("r2", STATUS, [])
        waiting = asyncio.ensure_future(board.beat("r1", STATUS, [], wait=30))
        await asyncio.sleep(0.05)
        targets = await board.unload("cascade.prior")
        return targets, await asyncio.wait_for(waiting, 5), await board.beat("r2", STATUS, [])

    targets, r1, r2 = run(scene())
    assert sorted(targets) == ["r1", "r2"]
    assert r1["unload"] == ["cascade.prior"] and r2["unload"] == ["cascade.prior"]


def test_snapshot_shows_stale_replicas_unreachable_and_forgets_old_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(board_module.time, "monotonic", lambda: now[0])
    board = Board()
    run(board.beat("r1", {**STATUS, "name": "r1"}, ["job-a"]))
    run(board.beat("r2", {**STATUS, "name": "r2"}, []))
    run(board.stop("never-claimed"))
    now[0] += STALE_S / 2
    run(board.beat("r2", {**STATUS, "name": "r2"}, []))
    assert [(r["name"], r["state"], r["jobs"]) for r in run(board.snapshot())] == [("r1", "live", ["job-a"]),
                                                                              ("r2", "live", [])]
    now[0] += STALE_S
    assert [(r["name"], r["state"]) for r in run(board.snapshot())] == [("r1", "unreachable"), ("r2", "live")]
    now[0] += FORGET_S
    # A job id seen again long after its Stop went unclaimed (its job had ended) is not stopped.
    assert run(board.beat("r2", {**STATUS, "name": "r2"}, ["never-claimed"]))["stop"] == []
    assert [r["name"] for r in run(board.snapshot())] == ["r2"]
