"""How a replica groups a job's events into Serve messages (``backends.cluster.outbox``).

No Ray here: an ``Outbox`` lives on a plain event loop, fed from a thread as a replica's job
feeds it. The ordering checks hand every event over before reading, so they do not depend on
timing; the timed ones bound the count of messages from above (a window can only merge more on a
slow machine) or wait far less than a window.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from backends.cluster.outbox import ITEM_S, PROGRESS_S, Outbox


def progress(step: int) -> tuple[Any, ...]:
    return ("progress", "step", step, 100)


def item(text: str) -> tuple[Any, ...]:
    return ("item", text)


async def collect(events: list[tuple[Any, ...] | None], gaps: float = 0.0) -> tuple[list[list[tuple[Any, ...]]],
                                                                                  list[float]]:
    """Hand ``events`` over (all at once, or from a thread ``gaps`` seconds apart); the messages
    and when each came, in seconds since the job began."""
    loop = asyncio.get_running_loop()
    outbox = Outbox(loop)
    started = loop.time()

    def feed() -> None:
        for event in events:
            outbox.put(event)
            time.sleep(gaps)

    feeder = threading.Thread(target=feed) if gaps else None
    if feeder is None:
        for event in events:
            outbox.put(event)
    else:
        feeder.start()
    messages, times = [], []
    async for message in outbox.messages():
        messages.append(message)
        times.append(loop.time() - started)
    if feeder is not None:
        feeder.join()
    return messages, times


def test_every_event_arrives_once_in_order_and_the_end_is_not_sent() -> None:
    events = [progress(1), item("a"), progress(2), item("b"), item("c"), ("result", 42), None]
    messages, _ = asyncio.run(collect(events))
    assert [event for message in messages for event in message] == events[:-1]
    assert all(messages)  # no empty message


def test_steps_that_are_all_ready_travel_with_the_result_as_one_message() -> None:
    events = [progress(step) for step in range(10)] + [("result", "picture"), None]
    messages, _ = asyncio.run(collect(events))
    assert messages == [events[:-1]]


def test_pieces_that_are_ready_together_go_together() -> None:
    events = [progress(0), item("Hel"), item("lo"), item(","), item(" you"), None]
    messages, _ = asyncio.run(collect(events))
    assert messages == [events[:-1]]


def test_the_first_chat_piece_goes_at_once() -> None:
    messages, times = asyncio.run(collect([progress(0), item("Hi"), item("!"), None], gaps=0.02))
    assert messages[0] == [progress(0), item("Hi")] and times[0] < PROGRESS_S * 0.8, times  # not the progress window


def test_a_finished_job_does_not_wait_for_the_window() -> None:
    started = time.monotonic()
    messages, times = asyncio.run(collect([progress(1), ("result", 1), None], gaps=0.005))
    assert [event for message in messages for event in message] == [progress(1), ("result", 1)]
    assert times[-1] < PROGRESS_S * 0.8 and time.monotonic() - started < PROGRESS_S


def test_steady_steps_send_at_most_one_message_per_window() -> None:
    steps = 40  # one every 10 ms: 0.4 s, about four progress windows
    messages, times = asyncio.run(collect([progress(s) for s in range(steps)] + [("result", 0), None], gaps=0.01))
    assert sum(map(len, messages)) == steps + 1
    assert 2 <= len(messages) <= 0.4 / PROGRESS_S + 2, times
    assert all(later - earlier >= PROGRESS_S * 0.9 for earlier, later in zip(times, times[1:-1])), times


def test_a_streaming_reply_sends_its_pieces_a_window_apart() -> None:
    pieces = 30  # one every 5 ms: 0.15 s, five chat windows
    messages, times = asyncio.run(collect([item(str(n)) for n in range(pieces)] + [None], gaps=0.005))
    assert messages[0] == [item("0")]  # the first word at once
    assert sum(map(len, messages)) == pieces
    assert len(messages) <= 0.15 / ITEM_S + 3, times
    assert all(later - earlier >= ITEM_S * 0.9 for earlier, later in zip(times, times[1:-1])), times
