"""Cluster: a fixed mix on Ray Serve replicas, N at once against one, and one request's overhead.

``python -m bench --device cpu --size tiny --scenarios cluster [--quick]`` (issue #17's bench):

* **throughput**: a fixed mix (``MIX``: 2 tiny SVD videos, 4 tiny Stable Cascade images and 2
  chat replies of ``--tokens``; ``--quick``: 2 of each) sent through ``studio.registry`` of a
  ``--cluster local`` Studio, by a thread pool of one worker (one replica busy at a time) and of
  one worker per replica. Goal on the 2-core CPU machine, two replicas of one CPU and one torch
  thread each: >= 1.6x one (80 % scaling). With ``--device cuda`` every GPU gets a replica
  (at least 2 are needed), the mix is repeated per pair of GPUs, and jobs/s are also given per GPU.
* **overhead**: one tiny image through a replica against the same request in-process (a Studio
  without ``--cluster``, same thread count), median of ``--runs``, interleaved; goal <= 1.05x.
  The replica's own compute time (``info["timings"]["total"]``) splits it into compute and the
  rest (routing, progress events, pickling the result); an empty streaming call to the same
  replicas (``ping``) shows how much of the rest is Serve's own.

How it runs, and why:

* One child process (``python -m bench.cluster``) holds the cluster. Ray starts once per process
  and leaves state behind, so the bench process, and the tests that call ``bench.__main__.main``,
  never import Ray; the child writes its figures as JSON for ``run`` to return.
* One cluster of N replicas gives both configurations: "1 replica" is the same warm deployment
  fed one job at a time, which is all a one-replica deployment does (a replica runs one job at a
  time). Starting Ray and two replicas takes about 30 s on the 2-core machine and each replica's
  first job of a family about 10 s (imports), so a cluster per configuration would double that
  and measure the two minutes apart on a shared machine. Here the passes alternate (1, N, N, 1,
  ...), so a neighbour's load hits both alike.
* ``--device cpu`` hides any GPU from the child (``CUDA_VISIBLE_DEVICES=""``): ``--cluster local``
  gives each replica a GPU when there are some, and the tiny preset would run on it.
* Before timing, every family runs on every replica, until the board's ``/status`` shows each
  replica holding it: models load lazily per replica, and the figures are steady-state ones.

The Ray start is retried (``START_ATTEMPTS``) when the child reports that the cluster could not
be started (another session's Ray starting at the same moment); any other failure is raised.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import torch

from bench.common import BenchOptions, device_name, format_table, measure, median

logger = logging.getLogger(__name__)

#: Jobs of a pass, longest first, so that N workers taking the next job when free stay balanced.
MIX: tuple[tuple[str, int], ...] = (("video", 2), ("image", 4), ("chat", 2))
QUICK_MIX: tuple[tuple[str, int], ...] = (("video", 2), ("image", 2), ("chat", 2))
#: Registry family (Serve's multiplexed model id, the components' prefix) and task of each kind.
FAMILY = {"image": "cascade", "chat": "stablelm", "video": "svd"}
TASKS = {"image": "text_to_image", "chat": "chat", "video": "image_to_video"}
#: Issue #17: 2 replicas against 1 on the 2-core CPU machine (80 % scaling), and one request's cost.
GOAL_RATIO = 1.6
GOAL_OVERHEAD = 1.05
#: Replicas on the CPU: the issue's two, one CPU each.
CPU_REPLICAS = 2
#: Warm-up rounds per family before giving up on a replica that never got it.
WARMUP_ROUNDS = 4
#: Seconds to wait for the board to show a warm-up (a replica's status there is at most 1 s old).
BOARD_WAIT_S = 5.0
#: Seconds for two heartbeats, so the placement read at the end follows the last job.
SETTLE_S = 2.0
#: Child attempts when the cluster cannot be started, and the wait between them.
START_ATTEMPTS = 3
START_RETRY_S = 20.0
#: The child's exit status for "the cluster could not be started" (EX_TEMPFAIL): worth a retry.
UNAVAILABLE_EXIT = 75
#: Seconds the child may take: Ray's start, the warm-up and the passes (full CPU run: ~2 min).
CHILD_TIMEOUT_S = 900


# ----- the parent: one child holds the cluster ---------------------------------------------------
def cli_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``python -m bench`` flags this scenario reads beyond ``BenchOptions``."""
    return {"quick": args.quick, "threads": args.threads, "named": args.scenarios_named}


def replica_count(device: torch.device) -> int:
    """Replicas to start: two on the CPU, one per GPU on CUDA (0 when there is only one GPU)."""
    if device.type != "cuda":
        return CPU_REPLICAS
    count = torch.cuda.device_count()
    return count if count >= 2 else 0


def run(options: BenchOptions, *, quick: bool = False, threads: int = 1, named: bool = True) -> dict[str, Any]:
    """Run the child and return its figures; skipped unless named (it starts Ray).

    Raises:
        SystemExit: ``--size real`` (the mix is the tiny models').
        RuntimeError: the child failed, or the cluster could not be started ``START_ATTEMPTS`` times.
    """
    base: dict[str, Any] = {"scenario": "cluster", "device": device_name(options.device), "size": options.size}
    if not named:
        return {**base, "skipped": "starts a Ray cluster; name it (--scenarios cluster) to run it"}
    if options.size != "tiny":
        raise SystemExit("--size real: the cluster scenario runs the tiny models only; use --size tiny")
    replicas = replica_count(options.device)
    if not replicas:
        return {**base, "skipped": "--device cuda needs 2 or more GPUs (one replica each); found 1. "
                                   "--device cpu runs 2 CPU replicas"}
    from backends.families import TINY

    for kind, _ in MIX:  # built here, once, rather than by every replica at the same time
        TINY.ensure(FAMILY[kind], options.cache_dir)
    for attempt in range(1, START_ATTEMPTS + 1):
        figures = run_child(options, replicas, quick, threads)
        if figures is not None:
            return {**base, **figures}
        if attempt < START_ATTEMPTS:
            logger.warning("cluster: Ray could not be started (attempt %d of %d); retrying in %.0f s",
                           attempt, START_ATTEMPTS, START_RETRY_S)
            time.sleep(START_RETRY_S)
    raise RuntimeError(f"cluster: Ray could not be started in {START_ATTEMPTS} attempts (the child's log says why)")


def run_child(options: BenchOptions, replicas: int, quick: bool, threads: int) -> dict[str, Any] | None:
    """One ``python -m bench.cluster`` child; its figures, or None when the cluster did not start."""
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if options.device.type == "cpu" else {})}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as folder:
        out = Path(folder) / "cluster.json"
        command = [sys.executable, "-m", "bench.cluster", "--replicas", str(replicas),
                   "--device", options.device.type, "--threads", str(threads), "--tokens", str(options.tokens),
                   "--runs", str(options.runs), "--warmup", str(options.warmup),
                   "--cache-dir", str(options.cache_dir), "--out", str(out)] + (["--quick"] if quick else [])
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env,
                              cwd=Path(__file__).resolve().parent.parent)
        if done.returncode == UNAVAILABLE_EXIT:
            logger.warning("cluster child: %s", (done.stderr.strip().splitlines() or ["no output"])[-1])
            return None
        if done.returncode != 0 or not out.is_file():
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"cluster: the child exited {done.returncode} without figures:\n{tail}")
        return json.loads(out.read_text(encoding="utf-8"))


# ----- the child: the cluster, warmed up and timed -------------------------------------------------
def build_requests(options: BenchOptions, studio: Any) -> dict[str, Any]:
    """The registry request of each kind: the tiny preset's image and a short video (as the other
    scenarios), and a seeded chat reply of ``--tokens``."""
    from backends.stablelm.requests import ChatRequest
    from bench.chat import MESSAGE
    from bench.models import image_request, video_request

    defaults = studio.registry.preset.stablelm.defaults
    chat = ChatRequest.build(MESSAGE, [], None, defaults.temperature, defaults.top_p, options.tokens, seed=1)
    return {"image": image_request(options), "chat": chat, "video": video_request(options)}


def run_job(studio: Any, kind: str, request: Any) -> dict[str, Any]:
    """One job through the registry: its seconds, the replica that ran it (chat: None, its chunks
    do not say) and whether it completed (pictures, frames, or a reply with tokens)."""
    from bench.models import no_progress

    started = time.perf_counter()
    if kind == "chat":
        stats = None
        for chunk in studio.registry.stream(TASKS[kind], request, no_progress):
            stats = chunk.stats or stats
        completed, replica = stats is not None and stats.tokens > 0, None
    else:
        result = studio.registry.run(TASKS[kind], request, no_progress)
        completed = bool(result.images if kind == "image" else result.frames)
        replica = result.info.get("replica", {}).get("name")
    return {"kind": kind, "seconds": round(time.perf_counter() - started, 4), "replica": replica,
            "completed": completed}


def run_mix(studio: Any, order: Sequence[str], requests: dict[str, Any], workers: int) -> dict[str, Any]:
    """Submit ``order`` to a pool of ``workers`` threads; the wall time and every job's record."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-mix") as pool:
        started = time.perf_counter()
        futures = [pool.submit(run_job, studio, kind, requests[kind]) for kind in order]
        jobs = [future.result() for future in futures]
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "jobs": jobs}


def holders(studio: Any, family: str) -> set[str]:
    """Live replicas whose models include a loaded component of ``family`` (the board's view)."""
    return {r["name"] for r in studio.status()["replicas"] if r["state"] == "live" and any(
        m["name"].startswith(f"{family}.") and m["placement"] != "disk" for m in r["models"])}


def warm_up(studio: Any, requests: dict[str, Any], replicas: int) -> None:
    """Run each family on every replica: rounds of one job per replica at once (a busy replica
    takes no second job) until the board shows every replica holding the family.

    Raises:
        RuntimeError: a family did not reach every replica in ``WARMUP_ROUNDS`` rounds.
    """
    for kind, _ in MIX:
        found: set[str] = set()
        for _ in range(WARMUP_ROUNDS):
            run_mix(studio, [kind] * replicas, requests, replicas)
            deadline = time.monotonic() + BOARD_WAIT_S
            while len(found := holders(studio, FAMILY[kind])) < replicas and time.monotonic() < deadline:
                time.sleep(0.25)
            if len(found) >= replicas:
                break
        else:
            raise RuntimeError(f"warm-up: {FAMILY[kind]} reached {len(found)} of {replicas} replicas "
                               f"in {WARMUP_ROUNDS} rounds ({', '.join(sorted(found)) or 'none'})")


def summarize(passes: list[dict[str, Any]], busy: int, deployment: int) -> dict[str, Any]:
    """One configuration's figures from its timed passes."""
    seconds = [p["seconds"] for p in passes]
    jobs = [job for p in passes for job in p["jobs"]]
    per_pass = len(passes[0]["jobs"])
    by_replica: dict[str, int] = {}
    for job in jobs:
        if job["replica"] is not None:
            by_replica[job["replica"]] = by_replica.get(job["replica"], 0) + 1
    rate = per_pass / median(seconds)
    return {"replicas": busy, "deployment_replicas": deployment, "median_s": median(seconds),
            "runs_s": [round(s, 4) for s in seconds], "jobs_per_pass": per_pass, "passes": len(passes),
            "jobs_run": len(jobs), "completed": sum(job["completed"] for job in jobs),
            "jobs_per_s": rate, "jobs_per_s_per_replica": rate / busy,
            "job_median_s": {kind: median([j["seconds"] for j in jobs if j["kind"] == kind])
                             for kind in sorted({j["kind"] for j in jobs})},
            "jobs_by_replica": dict(sorted(by_replica.items())), "replicas_used": sorted(by_replica),
            "unattributed_jobs": sum(job["replica"] is None for job in jobs)}


def measure_cluster(options: BenchOptions, replicas: int, quick: bool) -> dict[str, Any]:
    """Start the cluster, warm every replica, time the passes and the overhead; always close it."""
    from backends.families import FAMILIES
    from backends.runtime.studio import Studio, StudioConfig
    from bench.models import no_progress

    fields: dict[str, Any] = dict(preset="tiny", cache_dir=options.cache_dir, models_dir=None,
                                  outputs_dir=options.cache_dir / "bench-outputs", offline=True)
    local = Studio(StudioConfig(**fields), FAMILIES)
    requests = build_requests(options, local)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-in-process") as side:
        # The in-process models load (mostly imports: 3-9 s here) while Ray starts, not after.
        loading = side.submit(run_job, local, "image", requests["image"])
        started = time.perf_counter()
        studio = Studio(StudioConfig(**fields, cluster="local", replicas=replicas), FAMILIES)
        from backends.cluster.front import attach  # the child alone imports Ray

        runner = attach(studio)
        startup = time.perf_counter() - started
    try:
        loading.result()
        started = time.perf_counter()
        warm_up(studio, requests, replicas)
        warmup = time.perf_counter() - started
        repeat = max(1, replicas // CPU_REPLICAS)  # a pair of GPUs per copy of the mix
        order = [kind for kind, count in (QUICK_MIX if quick else MIX) for _ in range(count * repeat)]
        passes: dict[int, list[dict[str, Any]]] = {1: [], replicas: []}
        for index in range(options.warmup + options.runs):
            for workers in ((1, replicas) if index % 2 == 0 else (replicas, 1)):
                outcome = run_mix(studio, order, requests, workers)
                if index >= options.warmup:
                    passes[workers].append(outcome)
        one, many = summarize(passes[1], 1, replicas), summarize(passes[replicas], replicas, replicas)

        compute: dict[str, list[float]] = {"replica": [], "in_process": []}

        def image(where: Any, name: str) -> None:
            result = where.registry.run("text_to_image", requests["image"], no_progress)
            compute[name].append(result.info["timings"]["total"])

        overhead = measure({"replica": lambda: image(studio, "replica"),
                            "in_process": lambda: image(local, "in_process")}, options)
        pings = dataclasses.replace(options, runs=options.runs * 4)  # a few ms each: more runs, a steadier median
        floor = measure({"ping": lambda: list(runner.handle.options(stream=True).ping.remote())}, pings)
        time.sleep(SETTLE_S)  # a fresh beat from every replica after the last job
        placement = [{"name": r["name"], "pid": r["pid"], "node": r["node"], "device": r["device"],
                      "state": r["state"], "models": {m["name"]: m["placement"] for m in r["models"]}}
                     for r in studio.status()["replicas"]]
    finally:
        studio.close()
    ratio = many["jobs_per_s"] / one["jobs_per_s"]
    remote_compute = median(compute["replica"][-options.runs:])
    return {
        "replicas": replicas, "threads": torch.get_num_threads(), "runs": options.runs, "warmup": options.warmup,
        "quick": quick, "replica_device": sorted({p["device"] for p in placement}),
        "mix": {"counts": {kind: order.count(kind) for kind, _ in MIX}, "order": order,
                "requests": describe(requests)},
        "startup_s": round(startup, 2), "warmup_s": round(warmup, 2), "configurations": [one, many],
        "throughput_ratio": ratio, "goal_throughput_ratio_min": GOAL_RATIO * replicas / CPU_REPLICAS,
        "scaling_efficiency": ratio / replicas,
        "overhead": {**overhead, "ratio": overhead["replica"]["median_s"] / overhead["in_process"]["median_s"],
                     "goal_ratio_max": GOAL_OVERHEAD, "replica_compute_s": remote_compute,
                     "in_process_compute_s": median(compute["in_process"][-options.runs:]),
                     "transport_s": overhead["replica"]["median_s"] - remote_compute,
                     "serve_call_s": floor["ping"]["median_s"]},
        "placement": placement,
    }


def describe(requests: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The mix's requests, as the JSON shows them."""
    image, video, chat = requests["image"], requests["video"], requests["chat"]
    return {"image": {key: getattr(image, key) for key in ("width", "height", "prior_steps", "decoder_steps",
                                                           "num_images")},
            "video": {"width": video.image.width, "height": video.image.height, "num_frames": video.num_frames,
                      "steps": video.steps},
            "chat": {"max_new_tokens": chat.max_new_tokens}}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The child: ``python -m bench.cluster --replicas N --out cluster.json`` (``run`` starts it)."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster",
                                     description="Time the cluster scenario on one Ray cluster; write JSON.")
    parser.add_argument("--replicas", type=int, default=CPU_REPLICAS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("STUDIO_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)  # before the Studio: each replica takes this count
    options = BenchOptions(device=torch.device(args.device), size="tiny", runs=args.runs, warmup=args.warmup,
                           tokens=args.tokens, cache_dir=args.cache_dir)
    from backends.cluster.front import ClusterUnavailable

    try:
        result = measure_cluster(options, args.replicas, args.quick)
    except ClusterUnavailable as error:
        logger.error("%s", error)
        raise SystemExit(UNAVAILABLE_EXIT) from error
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def report(result: dict[str, Any]) -> str:
    """The printed table, or the reason it was skipped."""
    if result.get("skipped"):
        return f"cluster: skipped ({result['skipped']})"
    counts = ", ".join(f"{n} {kind}" for kind, n in result["mix"]["counts"].items())
    rows = [["configuration", "seconds (median)", "jobs/s", "jobs/s per replica", "completed", "jobs by replica"]]
    for c in result["configurations"]:
        name = f"{c['replicas']} replica{'s' if c['replicas'] > 1 else ''} at once"
        spread = ", ".join(f"{replica}: {n}" for replica, n in c["jobs_by_replica"].items())
        rows.append([name, f"{c['median_s']:.3f}", f"{c['jobs_per_s']:.2f}", f"{c['jobs_per_s_per_replica']:.2f}",
                     f"{c['completed']} of {c['jobs_run']}", f"{spread} (+{c['unattributed_jobs']} chat)"])
    o = result["overhead"]
    head = (f"cluster: mix of {counts} on {result['replicas']} replicas ({', '.join(result['replica_device'])}, "
            f"{result['threads']} torch thread{'s' if result['threads'] != 1 else ''} each); median of "
            f"{result['runs']} passes; start {result['startup_s']:.0f} s, warm-up {result['warmup_s']:.0f} s")
    lines = [head, format_table(rows),
             f"throughput {result['replicas']} replicas / 1: {result['throughput_ratio']:.2f}x "
             f"(goal >= {result['goal_throughput_ratio_min']:.1f}; scaling {result['scaling_efficiency']:.0%})",
             f"overhead, one tiny image: through a replica {o['replica']['median_s']:.3f} s (its compute "
             f"{o['replica_compute_s']:.3f} s) against in-process {o['in_process']['median_s']:.3f} s "
             f"(compute {o['in_process_compute_s']:.3f} s): {o['ratio']:.2f}x (goal <= {o['goal_ratio_max']}); "
             f"transport {o['transport_s'] * 1000:.1f} ms, of which an empty Serve call "
             f"{o['serve_call_s'] * 1000:.1f} ms"]
    for replica in result["placement"]:
        loaded = sorted(name for name, place in replica["models"].items() if place != "disk")
        families = sorted({name.split(".")[0] for name in loaded})
        lines.append(f"replica {replica['name']} (pid {replica['pid']}, {replica['device']}, {replica['state']}): "
                     f"{len(loaded)} of {len(replica['models'])} components loaded ({', '.join(families) or '-'})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
