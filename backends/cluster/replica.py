"""The Ray Serve deployment: one replica per device, each with its own Studio.

A replica builds a ``Studio`` from the app's flags (preset, budget, model folders) for the one
device Ray gave it (``num_gpus=1`` sets ``CUDA_VISIBLE_DEVICES``, so it is ``cuda:0`` there; on a
CPU-only machine, ``num_cpus=1``). Its registry and memory manager are the embedded app's own, so
placement, the OOM retry, downloads and the backends behave exactly as in-process.

Routing uses Serve's model multiplexing with the family name as the model id: ``family`` builds
the family's backend (no weights yet) and Serve then prefers this replica for that family's
requests, falling back to any replica with room when none that holds it is free.

``run`` is a streaming method: its events are ``("progress", stage, step, total)`` for every
step, ``("item", chunk)`` for each chunk of a streaming task (chat), and at the end
``("result", r)`` or ``("error", e)``; it yields them in lists, a few a second
(``backends.cluster.outbox``). Errors travel as values, not as Ray task errors, so the app
re-raises the very ``StudioError`` the backend raised (an ``InputError`` still names its
field). Jobs run one at a time on one worker thread: the device is never shared by two jobs, as
in-process.

Stop reaches a running job through the board (``backends.cluster.board``): the heartbeat
thread, waiting there, is answered at once and sets the job's flag, and the job's next progress
report raises ``Cancelled`` inside the backend, which keeps finished images as it does
in-process. A cancelled request (a closed client) sets the same flag.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from backends.cluster.outbox import Outbox
from backends.runtime.errors import Cancelled, StudioError

logger = logging.getLogger(__name__)

#: Seconds a heartbeat waits on the board for a Stop or unload request (then it sends a fresh
#: status and waits again): how old ``/status`` can be, not how long Stop takes.
BEAT_S = 1.0


def portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (what the app re-raises), else a ``StudioError`` saying what it was."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any failure to pickle means: send its text instead
        return StudioError(f"{type(error).__name__}: {error}")


class StudioReplica:
    """A Serve replica: a Studio on one device, serving jobs as event streams."""

    def __init__(self, config: dict[str, Any]) -> None:
        """Build the Studio (no model loads) and start the heartbeat.

        Args:
            config: ``StudioConfig`` fields as plain values, plus ``threads`` (torch intra-op
                threads, the app's own count, so seeds give the same pixels as in-process).
        """
        import torch

        from backends.families import FAMILIES
        from backends.runtime.studio import Studio, StudioConfig

        torch.set_num_threads(int(config["threads"]))
        fields = {key: config[key] for key in ("preset", "vram_budget_bytes", "offline")}
        paths = {key: Path(config[key]) if config[key] is not None else None
                 for key in ("models_dir", "outputs_dir", "cache_dir")}
        self.studio = Studio(StudioConfig(**fields, **paths), FAMILIES)  # type: ignore[arg-type]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-job")
        self._jobs: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.replica_id = _replica_id()
        import ray

        self.node = ray.util.get_node_ip_address()
        self._heartbeat = threading.Thread(target=self._beat_forever, name="studio-heartbeat", daemon=True)
        self._heartbeat.start()
        logger.info("replica %s ready: preset %s on %s", self.replica_id, self.studio.preset.name, self.studio.device)

    # ----- routing ----------------------------------------------------------------------------
    async def family(self, family: str) -> str:
        """Make ``family``'s backend (cheap: no weights) so this replica is preferred for it."""
        self.studio.registry.backend(family)
        return family

    async def ping(self) -> AsyncIterator[list[tuple[Any, ...]]]:
        """One empty message, as ``run`` streams them: what a call costs before any work (the
        cluster bench's floor for its overhead figure)."""
        yield []

    # ----- jobs ---------------------------------------------------------------------------------
    async def run(self, job: str, task: str, request: Any, streaming: bool) -> AsyncIterator[list[tuple[Any, ...]]]:
        """Run ``task`` on this replica's registry, yielding its events (see the module docstring)."""
        from ray import serve

        await self._multiplexed(serve.get_multiplexed_model_id())
        outbox = Outbox(asyncio.get_running_loop())
        stop = threading.Event()
        with self._lock:
            self._jobs[job] = stop

        def progress(stage: str, step: int, total: int) -> None:
            if stop.is_set():
                raise Cancelled("Stopped by the user.")
            outbox.put(("progress", stage, step, total))

        def work() -> None:
            try:
                if streaming:
                    for item in self.studio.registry.stream(task, request, progress):
                        outbox.put(("item", item))
                        if stop.is_set():
                            break
                else:
                    result = self.studio.registry.run(task, request, progress)
                    if isinstance(getattr(result, "info", None), dict):
                        result.info["replica"] = {"name": self.replica_id, "node": self.node}
                    outbox.put(("result", result))
            except BaseException as error:  # noqa: BLE001 - every failure goes back to the app
                outbox.put(("error", portable(error)))
            finally:
                outbox.put(None)

        asyncio.get_running_loop().run_in_executor(self._pool, work)
        try:
            async for batch in outbox.messages():
                yield batch
        finally:
            stop.set()  # a cancelled request (the client went away) ends the job at its next step
            with self._lock:
                self._jobs.pop(job, None)

    # ----- status and requests from the board ------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """This replica's entry in ``/status``: name, node, pid, device, live memory, its models."""
        import ray

        own = self.studio.status()
        return {"name": self.replica_id, "node": self.node,
                "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "device": own["device"], "vram_total": own["vram_total"], "vram_free": own["vram_free"],
                "preset": own["preset"], "models": own["models"]}

    def _beat_forever(self) -> None:
        import ray

        from backends.cluster.board import NAME

        board = None
        while True:
            try:
                board = board or ray.get_actor(NAME)
                with self._lock:
                    running = list(self._jobs)
                # A long poll (``board.Board.beat``): it returns at once when a request is posted.
                asks = ray.get(board.beat.remote(self.replica_id, self.status(), running, BEAT_S),
                               timeout=BEAT_S + 10)
                self._apply(asks)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the replica keeps serving
                logger.debug("heartbeat failed", exc_info=True)
                board = None
                threading.Event().wait(BEAT_S)

    def _apply(self, asks: dict[str, list[str]]) -> None:
        with self._lock:
            for job in asks.get("stop", []):
                if job in self._jobs:
                    self._jobs[job].set()
        for name in asks.get("unload", []):
            try:
                self.studio.unload(name)
            except StudioError as error:
                logger.warning("unload %s on %s: %s", name, self.replica_id, error)

    _multiplexed: Callable[..., Any]


def _replica_id() -> str:
    from ray import serve

    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside Serve (tests of this class alone)
        return f"pid-{os.getpid()}"


def deployment_class() -> type:
    """``StudioReplica`` with Serve's multiplexing wrapper on ``family``, made when Ray is imported."""
    from ray import serve

    from backends.families import FAMILIES

    class Replica(StudioReplica):
        @serve.multiplexed(max_num_models_per_replica=len(FAMILIES))
        async def _multiplexed(self, family: str) -> str:
            return await self.family(family)

    Replica.__name__ = Replica.__qualname__ = "StudioReplica"
    return Replica
