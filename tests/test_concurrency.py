"""Eight users at once: every job completes, with its own result, while the GPU queue runs one at a time.

Each request runs twice: once among seven others (eight gradio_client Clients, so eight sessions,
all submitted together) and once alone on a fresh client afterwards. Equal pixels and equal chat
text are the proof that no user received another user's result or shared sampler state: any
cross-talk would show up as a difference from the solo run, or as a match with someone else's.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import imageio_ffmpeg
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.utils import Status
from PIL import Image

logger = logging.getLogger(__name__)

#: Per-wave limit. The tiny models answer in well under a second each once built, so eight
#: queued jobs finish in a few seconds even on two busy cores; the rest is head-room for CI.
WAVE_TIMEOUT_S = 60
SYSTEM = "You are a helpful assistant."


@dataclass
class Request:
    """One user's call: the endpoint, its inputs in DESIGN.md's order, and what to check it by."""

    endpoint: str
    inputs: list[Any]
    seed: int | None = None
    prompt: str | None = None
    observed_ranks: list[int] = field(default_factory=list)
    observed_sizes: list[int] = field(default_factory=list)


def image_request(prompt: str, seed: int) -> Request:
    return Request("/generate_image", [prompt, "", 256, 256, 3, 2, 4.0, 0.0, 1, seed], seed=seed, prompt=prompt)


def chat_request(message: str) -> Request:
    # Temperature 0 is greedy decoding (backends/stablelm/requests.py), so a reply depends only on its inputs.
    return Request("/chat", [message, [], SYSTEM, 0, 1.0, 48], prompt=message)


def video_request(picture: Path, seed: int) -> Request:
    return Request("/generate_video", [handle_file(str(picture)), 4, 8, 127, 0.02, 2, 0, seed], seed=seed)


def wave(picture: Path) -> list[Request]:
    """Three images, three chats and two videos, every one with distinct inputs."""
    return [image_request("a red lighthouse on a cliff", 101), chat_request("Tell me about the sea"),
            video_request(picture, 11), image_request("a blue whale in deep water", 202),
            chat_request("What is a lighthouse?"), video_request(picture, 12),
            image_request("a green forest at dawn", 303), chat_request("Name three colours")]


def content(request: Request, result: Any) -> Any:
    """What a result shows the user: pixels, decoded video frames, or the reply text."""
    if request.endpoint == "/generate_image":
        gallery, _ = result
        return np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    if request.endpoint == "/generate_video":
        video, _ = result
        reader = imageio_ffmpeg.read_frames(video["video"] if isinstance(video, dict) else video)
        width, height = next(reader)["size"]
        return np.stack([np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader])
    return result


def same(a: Any, b: Any) -> bool:
    return np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


def saved_files(request: Request, result: Any) -> list[Path]:
    if request.endpoint == "/chat":
        return []
    files = result[1]["files"]
    return [Path(p) for p in (files.values() if isinstance(files, dict) else files)]


def check_own_info(request: Request, result: Any) -> None:
    """The info names this request's seed and prompt, and so does the saved image's text chunk."""
    if request.endpoint == "/chat":
        assert isinstance(result, str) and result
        return
    info = result[1]
    assert info["seed"] == request.seed
    if request.prompt is not None:
        assert info["prompt"] == request.prompt
        with Image.open(saved_files(request, result)[0]) as png:
            assert png.text["parameters"].splitlines()[0] == request.prompt
            assert f"Seed: {request.seed}" in png.text["parameters"]


def run_concurrently(url: str, requests: list[Request]) -> tuple[list[Any], float]:
    """Submit every request from its own Client at once; watch the queue until all are done."""
    clients = [Client(url, verbose=False) for _ in requests]  # connect first: submit together
    assert len({c.session_hash for c in clients}) == len(clients)
    started = time.monotonic()
    jobs = [c.submit(*r.inputs, api_name=r.endpoint) for c, r in zip(clients, requests)]
    while not all(job.done() for job in jobs):
        assert time.monotonic() - started < WAVE_TIMEOUT_S, "the concurrent wave did not finish in time"
        for job, request in zip(jobs, requests):
            status = job.status()
            if status.code == Status.IN_QUEUE and status.rank is not None:
                request.observed_ranks.append(status.rank)
                request.observed_sizes.append(status.queue_size or 0)
        time.sleep(0.005)
    elapsed = time.monotonic() - started
    for job in jobs:
        assert job.status().code == Status.FINISHED and job.status().success, job.exception()
    return [job.result() for job in jobs], elapsed


def test_eight_clients_at_once_each_get_their_own_result(
        launch_app: Callable[..., str], tmp_path: Path, tally: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # our uploads only, not /tmp/gradio
    url = launch_app()
    picture = tmp_path / "picture.png"
    Image.fromarray((np.random.default_rng(3).random((64, 64, 3)) * 255).astype(np.uint8)).save(picture)
    requests = wave(picture)

    together, elapsed = run_concurrently(url, requests)
    solo_client = Client(url, verbose=False)
    alone = [solo_client.predict(*r.inputs, api_name=r.endpoint) for r in requests]

    solo = [content(r, result) for r, result in zip(requests, alone)]
    for i, j in itertools.combinations(range(len(solo)), 2):
        if requests[i].endpoint == requests[j].endpoint:  # distinct inputs must give distinct outputs,
            assert not same(solo[i], solo[j]), (i, j)     # or the cross-talk check below proves nothing
    crosstalk: dict[str, int] = {}
    for index, (request, result) in enumerate(zip(requests, together)):
        check_own_info(request, result)
        shown = content(request, result)
        others = [solo[k] for k in range(len(solo)) if k != index and requests[k].endpoint == request.endpoint]
        wrong = not same(shown, solo[index]) or any(same(shown, other) for other in others)
        crosstalk[request.endpoint] = crosstalk.get(request.endpoint, 0) + int(wrong)
    assert sum(crosstalk.values()) == 0, crosstalk

    # The GPU queue (concurrency_id "gpu", limit 1) runs one job at a time, so the others wait
    # and gradio tells each client where it stands.
    queued = {id(r) for r in requests if any(rank > 0 for rank in r.observed_ranks)}
    assert queued, "no client was told a queue position while waiting"
    assert max(size for r in requests for size in r.observed_sizes) >= 2

    # Nothing lost: every file each info names exists, and the outputs hold exactly those.
    outputs = tmp_path / "outputs"
    named = [path for r, result in zip(requests * 2, together + alone) for path in saved_files(r, result)]
    assert all(path.is_file() and path.stat().st_size > 0 for path in named)
    on_disk = [path for path in outputs.rglob("*") if path.is_file()]
    assert sorted(on_disk) == sorted(named) and len(set(named)) == len(named) == 2 * (3 * 1 + 2 * 2)
    assert not [p for p in outputs.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]

    for endpoint in crosstalk:
        mine = [r for r in requests if r.endpoint == endpoint]
        tally.add("concurrency", endpoint, clients=len(mine), completed=len(mine), crosstalk=crosstalk[endpoint],
                  told_queue_position=sum(id(r) in queued for r in mine))
    logger.info("%d concurrent clients finished in %.1f s", len(requests), elapsed)
