"""The board: where replicas post their status and pick up Stop and unload requests.

A Serve handle routes each call to some replica, never to a chosen one, so neither "what does
every replica hold" nor "stop job J on whichever replica runs it" can be a deployment method.
Each replica's heartbeat thread (``replica.Heartbeat``) calls ``beat`` twice a second with its
status and its running jobs, and gets back the Stop and unload requests meant for it. The app
reads ``snapshot`` for ``/status`` and posts requests with ``stop`` and ``unload``.

One instance per cluster, a named Ray actor (``NAME``) the app creates and the replicas look up.
Plain Python state: Ray runs an actor's methods one at a time.
"""

from __future__ import annotations

import time
from typing import Any

NAME = "cascade-studio-board"
#: A replica not heard from for this long is shown as ``unreachable`` (its process died or hangs).
STALE_S = 3.0
#: ... and after this long it is forgotten (Serve has replaced it by then).
FORGET_S = 60.0


class Board:
    """Replica status and pending requests, by replica id."""

    def __init__(self) -> None:
        self._status: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, float] = {}
        self._jobs: dict[str, set[str]] = {}
        self._stops: set[str] = set()
        self._unloads: dict[str, list[str]] = {}

    def beat(self, replica: str, status: dict[str, Any], jobs: list[str]) -> dict[str, list[str]]:
        """A replica's heartbeat: its status and running job ids in, its pending requests out."""
        self._status[replica] = status
        self._seen[replica] = time.monotonic()
        self._jobs[replica] = set(jobs)
        stops = sorted(self._stops & self._jobs[replica])
        self._stops -= set(stops)
        return {"stop": stops, "unload": self._unloads.pop(replica, [])}

    def stop(self, job: str) -> None:
        """Ask whichever replica runs ``job`` to stop it at its next step."""
        self._stops.add(job)

    def unload(self, name: str, replica: str | None = None) -> list[str]:
        """Queue an unload of ``name`` on one replica, or on every live one; returns their ids."""
        targets = [replica] if replica is not None else [r for r in self._status if self._live(r)]
        for target in targets:
            self._unloads.setdefault(target, []).append(name)
        return targets

    def snapshot(self) -> list[dict[str, Any]]:
        """Every replica heard from lately, with ``state`` live or unreachable and ``seen_s`` ago."""
        now = time.monotonic()
        for replica in [r for r, seen in self._seen.items() if now - seen > FORGET_S]:
            for table in (self._status, self._seen, self._jobs, self._unloads):
                table.pop(replica, None)
        return [{**self._status[r], "state": "live" if self._live(r) else "unreachable",
                 "seen_s": round(now - self._seen[r], 2), "jobs": sorted(self._jobs.get(r, ()))}
                for r in sorted(self._status)]

    def _live(self, replica: str) -> bool:
        return time.monotonic() - self._seen.get(replica, float("-inf")) <= STALE_S
