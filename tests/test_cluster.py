"""``--cluster local --replicas 2`` on the tiny preset: the same results as in-process, routing by
family, streaming chat, Stop, a replica killed mid-job, and ``/status`` listing the replicas.

One cluster serves the whole module (starting Ray and two replicas takes about half a minute on
the 2-core CI machine); an in-process app on the same tiny models gives the reference results.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import psutil
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.serving import serve_tiny

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are a helpful assistant."
IMAGE = dict(prompt="a red lighthouse", negative_prompt="", width=256, height=256, prior_steps=3, decoder_steps=2,
             prior_guidance=4.0, decoder_guidance=0.0, num_images=1, seed=7)
#: Long enough to be stopped or killed mid-way (hundreds of steps on the tiny models).
LONG = dict(IMAGE, prompt="a long job", width=512, height=512, prior_steps=100, decoder_steps=50, seed=3)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("cluster-inputs") / "photo.png"
    Image.fromarray((np.random.default_rng(2).random((96, 128, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def cluster(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Client, Path]]:
    outputs = tmp_path_factory.mktemp("cluster-outputs")
    with serve_tiny(models_dir, outputs, "--cluster", "local", "--replicas", "2") as (studio, url):
        try:
            yield studio, Client(url, verbose=False), outputs
        finally:
            studio.close()


@pytest.fixture(scope="module")
def local(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with serve_tiny(models_dir, tmp_path_factory.mktemp("local-outputs")) as (_, url):
        yield Client(url, verbose=False)


def replicas(client: Client) -> list[dict[str, Any]]:
    return client.predict(api_name="/status")["replicas"]


def wait_idle(client: Client, what: str = "every replica idle") -> None:
    """Until ``/status`` lists no job: it is up to a second old (a replica's heartbeat), so a job
    that just ended can still be listed, and a test looking for "the replica with a job" would
    find the wrong one."""
    wait_for(lambda: not any(r["jobs"] for r in replicas(client)), what, 30)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def frames(path: str) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(path)


ENDPOINTS: dict[str, Callable[[str], tuple[tuple[Any, ...], Callable[[Any], np.ndarray]]]] = {
    "/generate_image": lambda photo: (tuple(IMAGE.values()), lambda out: pixels(out[0][0]["image"])),
    "/generate_image_sd": lambda photo: (("a lighthouse", "", 256, 256, 2, 3.0, 1, 11, "sdxl"),
                                         lambda out: pixels(out[0][0]["image"])),
    "/image_variation": lambda photo: ((handle_file(photo), "", "", 0, 0, 1, 5),
                                       lambda out: pixels(out[0][0]["image"])),
    "/img2img": lambda photo: ((handle_file(photo), "a red house", "", 0.5, 0, 0, 5),
                               lambda out: pixels(out[0][0]["image"])),
    "/generate_video": lambda photo: ((handle_file(photo), 6, 8, 127, 0.02, 2, 0, 11),
                                      lambda out: frames(out[0]["video"] if isinstance(out[0], dict) else out[0])),
    "/orbit": lambda photo: ((handle_file(photo), "p", 10, 2, 4, "sine", 30), lambda out: pixels(out[1])),
}


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_every_endpoint_gives_the_in_process_result(cluster: tuple[Any, Client, Path], local: Client, photo: str,
                                                     endpoint: str) -> None:
    _, client, _ = cluster
    inputs, read = ENDPOINTS[endpoint](photo)
    remote, expected = client.predict(*inputs, api_name=endpoint), local.predict(*inputs, api_name=endpoint)
    assert np.array_equal(read(remote), read(expected)), f"{endpoint}: the replica's result differs"
    info, reference = remote[-1], expected[-1]
    assert info["replica"]["name"] in {r["name"] for r in replicas(client)}
    assert set(info) - {"replica"} == set(reference) and info.get("seed") == reference.get("seed")


def test_chat_streams_and_equals_the_in_process_reply(cluster: tuple[Any, Client, Path], local: Client) -> None:
    _, client, _ = cluster
    job = client.submit("Write a poem about the sea", [], SYSTEM, 0, 1.0, 300, api_name="/chat")
    updates = list(job)
    assert len(updates) >= 3 and all(later.startswith(earlier) for earlier, later in zip(updates, updates[1:]))
    assert job.result() == local.predict("Write a poem about the sea", [], SYSTEM, 0, 1.0, 300, api_name="/chat")


def test_stop_ends_a_streaming_chat_on_its_replica(cluster: tuple[Any, Client, Path]) -> None:
    _, client, _ = cluster
    job = client.submit("Write a very long story about the sea", [], SYSTEM, 0.7, 0.95, 2000, api_name="/chat")
    # Streaming has begun: a replica runs the chat. (Polling /status for it could miss a reply that
    # ends between two heartbeats on a fast machine.)
    wait_for(lambda: job.outputs(), "the first words of the chat", 120)
    job.cancel()
    wait_for(lambda: job.done(), "the chat ending after Stop", 30)
    wait_idle(client, "every replica idle after Stop")
    assert client.predict("Hello", [], SYSTEM, 0, 1.0, 8, api_name="/chat")


def test_progress_reaches_the_client_while_a_replica_works(cluster: tuple[Any, Client, Path]) -> None:
    _, client, _ = cluster
    job = client.submit(*dict(LONG, prior_steps=40, decoder_steps=10).values(), api_name="/generate_image")
    seen = wait_for(lambda: job.status().progress_data, "a progress update from the replica's job", 120)
    assert 0 < seen[0].progress <= 1 and "step" in seen[0].desc  # the tab's own bar text, from the replica
    assert job.result(timeout=300)[1]["seed"] == LONG["seed"]


def test_a_second_image_goes_to_the_replica_holding_cascade(cluster: tuple[Any, Client, Path]) -> None:
    _, client, _ = cluster
    first = client.predict(*IMAGE.values(), api_name="/generate_image")[1]["replica"]["name"]
    second = client.predict(*dict(IMAGE, seed=8).values(), api_name="/generate_image")[1]["replica"]["name"]
    assert first == second
    holders = [r["name"] for r in replicas(client)
               if any(m["name"].startswith("cascade.") and m["placement"] != "disk" for m in r["models"])]
    assert first in holders


def test_status_lists_both_replicas_and_unload_reaches_them(cluster: tuple[Any, Client, Path]) -> None:
    _, client, _ = cluster
    found = wait_for(lambda: [r for r in replicas(client) if r["state"] == "live"], "two live replicas")
    assert len(found) == 2
    for entry in found:
        assert {"name", "node", "pid", "device", "vram_total", "vram_free", "models"} <= set(entry)
        assert entry["device"] == "cpu" and entry["pid"] != os.getpid()
        assert psutil.Process(entry["pid"]).nice() == 0  # not Ray's nice 15 for workers: they are the app's work
    client.predict("cascade", api_name="/unload")
    wait_for(lambda: all(m["placement"] == "disk" for r in replicas(client) for m in r["models"]
                         if m["name"].startswith("cascade.")), "cascade unloaded on every replica", 20)


def test_stop_ends_the_remote_job_and_saves_nothing(cluster: tuple[Any, Client, Path]) -> None:
    _, client, outputs = cluster
    client.predict(*IMAGE.values(), api_name="/generate_image")  # loaded: what follows times the stop
    wait_idle(client)
    before = set(outputs.rglob("*.png"))
    job = client.submit(*LONG.values(), api_name="/generate_image")
    busy = wait_for(lambda: [r for r in replicas(client) if r["jobs"]], "the long job running on a replica")
    job.cancel()
    wait_for(lambda: not any(r["jobs"] for r in replicas(client) if r["name"] == busy[0]["name"]),
             "the replica's job ended after Stop", 30)
    gallery, info = client.predict(*dict(IMAGE, seed=9).values(), api_name="/generate_image")
    assert info["seed"] == 9 and set(outputs.rglob("*.png")) - before == {Path(info["files"][0])}


def test_a_replica_killed_mid_chat_goes_on_with_the_reply_on_the_other(cluster: tuple[Any, Client, Path],
                                                                       local: Client,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    _, client, _ = cluster
    caplog.set_level(logging.WARNING, logger="backends.cluster.front")
    client.predict("Hello", [], SYSTEM, 0.7, 0.95, 8, api_name="/chat")  # the model loaded on some replica
    wait_idle(client)  # the short chat gone from /status before the image's replica is looked for
    image = client.submit(*LONG.values(), api_name="/generate_image")  # keeps one replica busy
    busy = wait_for(lambda: [r for r in replicas(client) if r["jobs"]], "the long image on a replica")[0]
    talker = next(r for r in replicas(client) if r["state"] == "live" and r["name"] != busy["name"])
    # Greedy, so that the reply is long (a sampled one can end at any token) and has a reference;
    # a sampled chat's seed, fixed for the retry, is tests/backends/cluster/test_retry.py's.
    inputs = ("Write a long poem about the sea", [], SYSTEM, 0, 1.0, 1500)
    chat = client.submit(*inputs, api_name="/chat")
    shown = wait_for(lambda: job_text(chat), "the first words of the chat", 120)  # on the free replica
    os.kill(talker["pid"], signal.SIGKILL)
    reply = chat.result(timeout=300)
    assert reply.startswith(shown) and len(reply) > len(shown), (shown[-40:], reply[:80])
    assert reply == local.predict(*inputs, api_name="/chat")  # nothing lost or shown twice at the seam
    assert any("retrying once on another, replaying" in r.getMessage() for r in caplog.records)  # killed mid-reply
    assert image.result(timeout=300)[1]["seed"] == LONG["seed"]
    wait_for(lambda: len([r for r in replicas(client) if r["state"] == "live" and r["pid"] != talker["pid"]]) == 2,
             "Serve restarting the killed replica", 120)


def job_text(job: Any) -> str:
    outputs = job.outputs()
    return outputs[-1] if outputs and isinstance(outputs[-1], str) else ""


def test_a_replica_killed_mid_job_errs_or_retries_and_comes_back(cluster: tuple[Any, Client, Path]) -> None:
    _, client, _ = cluster
    wait_idle(client)
    job = client.submit(*dict(LONG, prior_steps=60, decoder_steps=20).values(), api_name="/generate_image")
    busy = wait_for(lambda: [r for r in replicas(client) if r["jobs"]], "the job running on a replica")[0]
    os.kill(busy["pid"], signal.SIGKILL)
    try:
        gallery, info = job.result(timeout=300)
        assert info["replica"]["name"] != busy["name"]  # retried on the other replica
    except Exception as error:  # noqa: BLE001 - the other allowed outcome: a clear error
        assert "replica running this" in str(error) and "restarting it" in str(error), str(error)
    gallery, info = client.predict(*dict(IMAGE, seed=10).values(), api_name="/generate_image")
    assert info["seed"] == 10
    wait_for(lambda: len([r for r in replicas(client) if r["state"] == "live" and r["pid"] != busy["pid"]]) == 2,
             "Serve restarting the killed replica", 120)


def test_the_embedded_app_never_imports_ray(models_dir: Path, tmp_path: Path) -> None:
    code = ("import sys, app\n"
            f"args = app.parse_args(['--preset', 'tiny', '--models-dir', {str(models_dir)!r}, '--outputs', "
            f"{str(tmp_path)!r}], environ={{}})\n"
            "app.build_ui(app.build_studio(args))\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'backends.cluster'))))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_an_unreachable_cluster_fails_at_start_up_naming_it(tmp_path: Path) -> None:
    code = ("import app\n"
            "args = app.parse_args(['--preset', 'tiny', '--cluster', '127.0.0.1:9', '--outputs', "
            f"{str(tmp_path)!r}], environ={{}})\n"
            "app.build_studio(args)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode != 0
    assert "--cluster 127.0.0.1:9" in done.stderr and "ray start --head" in done.stderr, done.stderr[-3000:]


def test_replicas_needs_the_cluster_flag(capsys: pytest.CaptureFixture[str]) -> None:
    import app

    with pytest.raises(SystemExit):
        app.parse_args(["--replicas", "2"], environ={})
    assert "--replicas: needs --cluster" in capsys.readouterr().err
