"""A Ray cluster started with token authentication refuses the app when its token is wrong, and the
app says so at start-up with what to do (``ray get-auth-token``, ``RAY_AUTH_TOKEN``).

Its own module, after ``tests/test_cluster.py``: it starts a head with ``ray start --head --block``
in its own process group and ends the group afterwards, never touching another Ray on the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_wrong_ray_token_is_refused_at_start_up_with_how_to_fix_it(tmp_path: Path) -> None:
    port = free_port()
    token = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="right-token-" + "0" * 32)
    ray = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray), "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                             "--disable-usage-stats", "--block"], env=token, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, "ray start --head exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray head never listened"
                time.sleep(0.5)
        code = ("import app\n"
                f"args = app.parse_args(['--preset', 'tiny', '--cluster', '127.0.0.1:{port}', '--outputs', "
                f"{str(tmp_path)!r}], environ={{}})\n"
                "app.build_studio(args)\n")
        wrong = dict(token, RAY_AUTH_TOKEN="wrong-token-" + "1" * 32, HF_HUB_OFFLINE="1")
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=wrong, capture_output=True, text=True,
                              timeout=240)
        assert done.returncode != 0
        assert f"--cluster 127.0.0.1:{port}: the cluster refused this machine's Ray token" in done.stderr, \
            done.stderr[-3000:]
        assert "ray get-auth-token" in done.stderr and "RAY_AUTH_TOKEN" in done.stderr
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
