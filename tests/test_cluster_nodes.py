"""``--cluster ADDRESS`` on a cluster of two Ray nodes, started as the README tells LAN users to:
``ray start --head`` for one, ``ray start --address=HEAD:PORT`` for the other, one token for both.
An app whose token is wrong is refused at start-up, and says what to do.

Both nodes run on this machine (CI has no second one), each with one CPU, so each holds one
replica: the app must spread its two replicas over the two nodes, serve from both, and keep
serving when one node goes away mid-way, as a LAN machine that is switched off would.

Each ``ray start --block`` runs in a process group of its own, ended afterwards; no other Ray on
the machine is touched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import psutil
import pytest
from gradio_client import Client

from tests.test_cluster import IMAGE, SYSTEM, replicas, wait_for

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def ray_node(env: dict[str, str], *flags: str) -> Iterator[subprocess.Popen[bytes]]:
    """``ray start ... --block`` in its own process group; the whole group ends on leaving."""
    node = subprocess.Popen([str(RAY), "start", "--num-cpus=1", "--disable-usage-stats", "--block", *flags], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield node
    finally:  # the test is over: no need for Ray's graceful stop (half a minute on CI)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=60)


def nodes_alive(env: dict[str, str], address: str) -> int:
    code = ("import ray\n"
            f"ray.init(address={address!r}, log_to_driver=False)\n"
            "print('ALIVE', sum(1 for n in ray.nodes() if n['Alive']))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    counts = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("ALIVE ")]  # Ray prints too
    return int(counts[-1]) if done.returncode == 0 and counts else 0


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str, Any]]:
    port = free_port()
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_worker_niceness="0")
    address = f"127.0.0.1:{port}"
    with ray_node(env, "--head", f"--port={port}", "--include-dashboard=false"):
        deadline = time.monotonic() + 120
        while not nodes_alive(env, address):
            assert time.monotonic() < deadline, "the Ray head never came up"
            time.sleep(1)
        with ray_node(env, f"--address={address}") as worker:
            wait_for(lambda: nodes_alive(env, address) == 2, "the second node joining the head", 120)
            yield env, address, worker


def test_a_wrong_ray_token_is_refused_at_start_up_with_how_to_fix_it(
        two_nodes: tuple[dict[str, str], str, Any], tmp_path: Path) -> None:
    env, address, _ = two_nodes
    code = ("import app\n"
            f"args = app.parse_args(['--preset', 'tiny', '--cluster', {address!r}, '--outputs', "
            f"{str(tmp_path)!r}], environ={{}})\n"
            "app.build_studio(args)\n")
    wrong = dict(env, RAY_AUTH_TOKEN="wrong-token-" + "1" * 32, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=wrong, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode != 0
    assert f"--cluster {address}: the cluster refused this machine's Ray token" in done.stderr, done.stderr[-3000:]
    assert "ray get-auth-token" in done.stderr and "RAY_AUTH_TOKEN" in done.stderr


@contextlib.contextmanager
def app_process(env: dict[str, str], *argv: str) -> Iterator[str]:
    """``app.py`` in a process of its own, as a user starts it; yields its URL, then stops it.

    Not in this process: Ray reads its token once per process, and an earlier module's local
    cluster may already have set the one it holds.
    """
    port = free_port()
    started = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *argv], cwd=ROOT,
                               env=dict(env, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        def up() -> bool:
            assert started.poll() is None, f"app.py exited: {started.stderr.read()[-3000:] if started.stderr else ''}"
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}config", timeout=5).status_code == 200
            return False

        wait_for(up, "the app serving", 240)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(started.pid, signal.SIGINT)  # as Ctrl+C: the app takes its deployment down
        try:
            started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(started.pid, signal.SIGKILL)
            started.wait(timeout=30)


def test_two_replicas_on_two_nodes_serve_and_outlive_one_node(
        two_nodes: tuple[dict[str, str], str, Any], models_dir: Path, tmp_path: Path) -> None:
    env, address, worker = two_nodes
    argv = ("--preset", "tiny", "--models-dir", str(models_dir), "--outputs", str(tmp_path), "--cluster", address,
            "--replicas", "2")
    with app_process(env, *argv) as url:  # the app's machine holds the cluster's token (env)
        client = Client(url, verbose=False)
        listed = wait_for(lambda: [r for r in replicas(client) if r["state"] == "live"][1:] and replicas(client),
                          "both replicas live")
        assert len({r["node_id"] for r in listed}) == 2, listed  # one on each node
        assert all(psutil.Process(r["pid"]).nice() == 0 for r in listed)  # the README's RAY_worker_niceness=0
        busy = client.submit("Write a long poem about the sea", [], SYSTEM, 0, 1.0, 1500, api_name="/chat")
        chatting = wait_for(lambda: [r["name"] for r in replicas(client) if r["jobs"]], "the chat on a replica")
        image = client.predict(*IMAGE.values(), api_name="/generate_image")
        assert image[0] and image[1]["replica"]["name"] not in chatting  # the other node's replica took it
        assert busy.result(timeout=300)

        os.killpg(worker.pid, signal.SIGKILL)  # the second machine goes away
        wait_for(lambda: nodes_alive(env, address) == 1, "Ray noticing the lost node", 120)
        for seed in (1, 2):  # every job still completes, on the head's replica
            again = client.predict(*dict(IMAGE, seed=seed).values(), api_name="/generate_image")
            assert again[1]["seed"] == seed
        assert client.predict("still there?", [], SYSTEM, 0, 1.0, 8, api_name="/chat")
        def live() -> list[dict[str, Any]]:
            return [r for r in replicas(client) if r["state"] == "live"]

        left = wait_for(lambda: len(live()) == 1 and live(), "the lost node's replica shown as unreachable")
        assert left[0]["node_id"] in {r["node_id"] for r in listed}
