"""The app's side of ``--cluster``: start or join Ray, deploy the replicas, route jobs to them.

``connect`` runs once at start-up (``Studio`` calls it). ``local`` starts Ray on this machine, with
token authentication on (Ray generates the token) and its dashboard on 127.0.0.1; an address joins
a cluster started with ``ray start`` (the README shows how, and how its token is shared). Either
way the app fails at start-up, naming the address and what to run, when the cluster cannot be
reached or refuses the token.

``ClusterRunner`` gives the registry its ``run`` and ``stream`` for remote jobs. Each job gets an
id and goes to the deployment with ``multiplexed_model_id`` = its family, so Serve prefers a
replica that already holds the family. Progress events call the tab's ``progress`` as in-process;
when that raises ``Cancelled`` (Stop, or the page closed), the runner posts a Stop for the job on
the board and keeps reading, so the backend ends the job itself and what it finished still comes
back. A replica that dies mid-job (killed, OOM-killed, its node gone) gets the job one retry on
another replica, and a clear error if that fails too; Serve restarts the replica. A chat that
had already streamed words is retried too: with its seed fixed up front (``replayable``), the
retry repeats those words, which are checked and skipped, and the reply goes on where it was.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from backends.runtime.errors import Cancelled, StudioError
from backends.runtime.progress import ProgressFn

logger = logging.getLogger(__name__)

APP_NAME = "cascade-studio"
NAMESPACE = "cascade-studio"
#: Seconds a replica's health check may take before Serve restarts it.
HEALTH_S = 10


class ClusterUnavailable(StudioError):
    """The cluster could not be started, reached or authenticated at start-up."""


class ReplicaLost(StudioError):
    """The replica running a job died, and so did the one retry."""


@dataclass(frozen=True)
class ClusterConfig:
    """``--cluster`` and ``--replicas``, and what each replica builds its Studio from."""

    address: str
    replicas: int | None
    #: ``StudioConfig`` fields as plain values, plus ``threads`` (see ``replica.StudioReplica``).
    studio: dict[str, Any]


def _ray() -> Any:
    """Ray, imported with token authentication on unless the environment says otherwise.

    Ray reads ``RAY_AUTH_MODE`` once, when it is first imported, and every process it starts
    inherits it; so every import of Ray here goes through this.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError as error:
        raise ClusterUnavailable("--cluster needs Ray Serve: run `pip install -r requirements-cluster.txt` "
                                 "(launch.sh and launch.bat do it when given --cluster)") from error
    return ray


def attach(studio: Any) -> ClusterRunner:
    """Start or join ``studio.config.cluster`` for this Studio's preset, and route its jobs there.

    The replicas get the Studio's flags (the preset as resolved here, so the UI and the replicas
    agree on what is offered) and this process's torch thread count.
    """
    import torch

    config = studio.config
    replica = {"preset": studio.preset.name, "vram_budget_bytes": config.vram_budget_bytes,
               "offline": config.offline, "threads": torch.get_num_threads(),
               **{key: str(getattr(config, key)) if getattr(config, key) is not None else None
                  for key in ("models_dir", "outputs_dir", "cache_dir")}}
    runner = connect(ClusterConfig(config.cluster or "", config.replicas, replica))
    studio.cluster = runner
    studio.registry.remote = runner
    return runner


def connect(config: ClusterConfig) -> ClusterRunner:
    """Start (``local``) or join the cluster, deploy the replicas and the board; the runner for jobs.

    Raises:
        ClusterUnavailable: Ray is missing, the address cannot be reached, or the token is refused.
    """
    ray = _ray()
    from ray import serve
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from backends.cluster.board import NAME, Board
    from backends.cluster.replica import deployment_class

    local = config.address == "local"
    if not local:
        _reachable(config.address)
    if local:
        # Ray starts its workers at nice 15, below everything else on the machine: a replica then
        # waits whenever the app (or GCS, or a browser) wants a core, and its GPU idles meanwhile.
        # The replicas are the app's real work. Measured on the 2-core machine, one tiny image
        # through a replica: 1.09-1.14x in-process at nice 15, 1.05-1.06x at 0.
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        if local:
            gpus = _local_gpus()
            cpus = max(os.cpu_count() or 1, config.replicas or 1)
            # address="local": always a new cluster of our own, never one a `ray start` left running.
            ray.init(address="local", namespace=NAMESPACE, num_cpus=cpus, num_gpus=gpus, include_dashboard=False,
                     dashboard_host="127.0.0.1", log_to_driver=False)
        else:
            ray.init(address=config.address, namespace=NAMESPACE, log_to_driver=False)
    except Exception as error:  # noqa: BLE001 - Ray raises many kinds; each means the same to the user
        raise ClusterUnavailable(_unreachable(config.address, error)) from error
    gpus = int(ray.cluster_resources().get("GPU", 0))
    replicas = config.replicas or max(1, gpus)
    per_replica = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    # On the app's own node, which lives as long as the app: a board on a LAN machine that is
    # switched off would take /status and Stop with it. Restarted should it die anyway; the
    # replicas' next heartbeats (within a second) fill it again.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    board = ray.remote(Board).options(name=NAME, get_if_exists=True, num_cpus=0, max_restarts=-1,
                                      scheduling_strategy=here).remote()
    deployment = serve.deployment(
        deployment_class(), name="StudioReplica", num_replicas=replicas, max_ongoing_requests=1,
        ray_actor_options=per_replica, health_check_timeout_s=HEALTH_S, graceful_shutdown_timeout_s=5)
    serve.start(proxy_location="Disabled")  # no HTTP proxy: the app is the only way in
    handle = serve.run(deployment.bind(config.studio), name=APP_NAME, route_prefix=None)
    logger.info("cluster %s: %d replica(s), %s each", "on this machine" if local else config.address,
                replicas, "one GPU" if gpus else "one CPU")
    return ClusterRunner(handle, board, replicas)


def _reachable(address: str, timeout: float = 3.0) -> None:
    """Fail at once when nothing listens at ``address`` (``ray.init`` would retry for minutes).

    ``auto`` is left to Ray (it reads the local cluster's address file); ``ray://host:port`` and
    ``host[:port]`` (the GCS, 6379 by default) are tried with one TCP connection.
    """
    import socket

    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":") if ":" in target else (target, "", "6379")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as error:
        raise ClusterUnavailable(_unreachable(address, error)) from error


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _unreachable(address: str, error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    chain, seen = [], error
    while seen is not None and len(chain) < 8:  # Ray words a refused token only deep in the chain
        chain.append(str(seen).lower())
        seen = seen.__cause__ or seen.__context__
    if any("invalidauthtoken" in part or "authentication token" in part for part in chain):
        return (f"--cluster {address}: the cluster refused this machine's Ray token ({type(error).__name__}). "
                "Copy the head's "
                "token (`ray get-auth-token` there) into RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH here, with "
                "RAY_AUTH_MODE=token (README: Several GPUs or machines).")
    return (f"--cluster {address}: cannot reach a Ray cluster there ({text}). Start one with `ray start --head` "
            "on the head machine and `ray start --address=HEAD:6379` on the others, or use --cluster local.")


_NEW = object()  # a retried stream is past the items already delivered


def lost_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for a call whose replica died under it (killed, OOM-killed, its node gone)."""
    _ray()
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return (ActorDiedError, ActorUnavailableError, RayActorError)


def replayable(request: Any) -> Any:
    """``request`` with a seed drawn here if it leaves its seed to chance (a sampled chat).

    A stream that loses its replica is run again on another and the pieces already shown are
    skipped, which needs the same pieces: the same seed (and the same thread count, which every
    replica has). The seed is drawn as the backend would draw it, so replies vary as before.
    """
    fields = {field.name for field in dataclasses.fields(request)} if dataclasses.is_dataclass(request) else set()
    if "seed" in fields and getattr(request, "seed") is None:
        return dataclasses.replace(request, seed=secrets.randbelow(2**63))
    return request


class ClusterRunner:
    """Runs the registry's jobs on the replicas (``Registry.remote``)."""

    def __init__(self, handle: Any, board: Any, replicas: int) -> None:
        self.handle = handle
        self.board = board
        self.replicas = replicas

    def run(self, family: str, task: str, request: Any, progress: ProgressFn) -> Any:
        """Run a task remotely; its result, as ``Registry.run`` returns it."""
        for event in self._events(family, task, request, progress, streaming=False):
            if event[0] == "result":
                return event[1]
        raise ReplicaLost(f"{task}: the replica ended the job without a result")

    def stream(self, family: str, task: str, request: Any, progress: ProgressFn) -> Iterator[Any]:
        """Run a streaming task remotely; its chunks, as ``Registry.stream`` yields them."""
        for event in self._events(family, task, request, progress, streaming=True):
            if event[0] == "item":
                yield event[1]

    def _events(self, family: str, task: str, request: Any, progress: ProgressFn,
                streaming: bool) -> Iterator[tuple[Any, ...]]:
        lost = lost_errors()
        what = task.replace("_", " ")
        if streaming:
            request = replayable(request)
        delivered: list[Any] = []  # a stream's items so far: a retry must give these again first
        for attempt in (1, 2):
            job = uuid.uuid4().hex
            events = self.handle.options(multiplexed_model_id=family, stream=True).run.remote(
                job, task, request, streaming)
            replay = iter(list(delivered))
            try:
                for event in self._read(job, events, progress):
                    if event[0] == "item":
                        shown = next(replay, _NEW)
                        if shown is not _NEW:
                            if event[1] != shown:
                                raise ReplicaLost(f"The replica running this {what} stopped, and the retry on "
                                                  "another replica did not repeat the words already shown. Try "
                                                  "again; the other replicas keep serving.")
                            continue
                        delivered.append(event[1])
                    yield event
                if next(replay, _NEW) is not _NEW:
                    raise ReplicaLost(f"The replica running this {what} stopped, and the retry on another replica "
                                      "ended before the words already shown. Try again.")
                return
            except lost as error:
                if attempt == 2:
                    raise ReplicaLost(f"The replica running this {what} job stopped ({type(error).__name__}); the "
                                      "cluster is restarting it. Try again in a minute; the other replicas keep "
                                      "serving.") from error
                logger.warning("replica lost during %s (%s); retrying once on another%s", task,
                               type(error).__name__, f", replaying {len(delivered)} pieces" if delivered else "")
            finally:
                events.cancel()

    def _read(self, job: str, events: Any, progress: ProgressFn) -> Iterator[tuple[Any, ...]]:
        stopping = False
        for event in (event for batch in events for event in batch):
            kind = event[0]
            if kind == "progress":
                if stopping:
                    continue
                try:
                    progress(*event[1:])
                except Cancelled:
                    stopping = True  # the replica ends the job; what it finished still comes back
                    self.board.stop.remote(job)
            elif kind == "error":
                raise event[1]
            else:
                yield event

    # ----- /status and unload -----------------------------------------------------------------
    def replicas_status(self) -> list[dict[str, Any]]:
        """Every replica's status from the board (``board.Board.snapshot``); none while it restarts.

        The board is restarted should its node die; until the replicas' next heartbeats reach the
        new one, ``/status`` lists no replicas rather than failing.
        """
        import ray
        from ray.exceptions import RayError

        try:
            return ray.get(self.board.snapshot.remote(), timeout=10)
        except RayError as error:
            logger.warning("the cluster's status board did not answer (%s); listing no replicas", type(error).__name__)
            return []

    def unload(self, name: str, replica: str | None = None) -> list[str]:
        """Ask one replica, or every live one, to unload ``name``; the replicas asked."""
        import ray

        return ray.get(self.board.unload.remote(name, replica), timeout=10)

    def close(self) -> None:
        """Take the deployment down and leave Ray (a local cluster stops with it)."""
        import ray
        from ray import serve

        try:
            serve.delete(APP_NAME)
        finally:
            ray.shutdown()
