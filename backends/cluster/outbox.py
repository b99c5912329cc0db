"""A replica job's events on their way to the app: gathered into a few messages a second.

Each message through Serve's stream costs the two processes about 0.6 ms of Python
(serializing, routing, the app's reading), beside the jobs on the same cores. Sent one per token
or step, a 128-token tiny reply took 0.17 s through a replica against 0.08 s in-process, and two
replicas at once fought the app for the 2-core machine's cores. So a message goes:

* at once for a job's first chat piece (the time to the first word is what a user feels), and
  for its result or error (a finished job never waits);
* else ``ITEM_S`` after the last message, if it holds chat pieces: the Chat tab shows one update
  per ``tabs.chat.UPDATE_INTERVAL_S`` (0.03 s) anyway;
* else (progress alone) ``PROGRESS_S`` after the last one, or after the job began: ten updates a
  second still move a bar smoothly, and a tiny image (0.13 s) costs one progress message, not
  seven.

Every event arrives, in order. The job's thread hands events to the event loop one by one, but
the loop's reader is woken only when that changes when the next message is due, not for every
token. Written here because neither Serve nor asyncio batches a stream by time this way.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

#: Seconds a message waits for more events: with chat pieces among them, and progress alone.
ITEM_S = 0.03
PROGRESS_S = 0.1

Event = tuple[Any, ...]


def _final(event: Event | None) -> bool:
    return event is None or event[0] in ("result", "error")


class Outbox:
    """One job's events (``None`` ends them), from any thread, read as messages on ``loop``.

    Build it on the loop (in the coroutine that reads it).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._last = loop.time()  # when the last message went (at first: when the job began)
        self._pending: list[Event | None] = []
        self._pieces = False  # chat pieces among the pending events
        self._pieces_sent = False
        self._wake = asyncio.Event()

    def put(self, event: Event | None) -> None:
        """Hand over one event (thread-safe)."""
        self._loop.call_soon_threadsafe(self._arrive, event)

    def _arrive(self, event: Event | None) -> None:
        was_empty = not self._pending
        self._pending.append(event)
        piece = event is not None and event[0] == "item"
        shortens = piece and not self._pieces  # a first piece: due now, or ITEM_S instead of PROGRESS_S
        self._pieces = self._pieces or piece
        if was_empty or shortens or _final(event):
            self._wake.set()

    def _due(self) -> float | None:
        """Seconds until the pending events must go (0: now); None when there are none."""
        if not self._pending:
            return None
        if _final(self._pending[-1]) or (self._pieces and not self._pieces_sent):
            return 0.0
        return max(0.0, self._last + (ITEM_S if self._pieces else PROGRESS_S) - self._loop.time())

    async def messages(self) -> AsyncIterator[list[Event]]:
        """The events, a list per message, until the ``None`` that ends them."""
        while True:
            due = self._due()
            while due is None or due > 0:
                self._wake.clear()
                if due is None:
                    await self._wake.wait()
                else:
                    try:
                        await asyncio.wait_for(self._wake.wait(), due)
                    except asyncio.TimeoutError:
                        pass
                due = self._due()
            batch, self._pending = self._pending, []
            self._last = self._loop.time()
            self._pieces_sent = self._pieces_sent or self._pieces
            self._pieces = False
            sent = [event for event in batch if event is not None]
            if sent:
                yield sent
            if batch[-1] is None:
                return
