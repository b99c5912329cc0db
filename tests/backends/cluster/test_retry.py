"""A job whose replica dies is retried once (``backends.cluster.front.ClusterRunner``), a chat
included: the retry must repeat the words already shown, which are skipped.

A fake Serve handle stands in for the replicas: each call returns the next scripted stream of
event batches, which may end with the Ray error a dead replica gives. Ray's error classes come
through ``front.lost_errors``, never a plain ``import ray``: Ray fixes its auth mode when first
imported, and the cluster tests later in this process need it imported with the app's. The real thing (a replica
killed mid-chat) is ``tests/test_cluster.py``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from backends.cluster.front import ClusterRunner, ReplicaLost, lost_errors, replayable
from backends.stablelm.backend import ChatChunk
from backends.stablelm.requests import ChatRequest

DIES = object()  # in a script: the replica dies here


class Stream:
    """One call's event stream: ``batches`` in order, or the dead replica's error at ``DIES``."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches
        self.cancelled = False

    def __iter__(self) -> Iterator[list[tuple[Any, ...]]]:
        for batch in self.batches:
            if batch is DIES:
                raise lost_errors()[0]()  # ActorDiedError; Ray imported as the app imports it
            yield batch

    def cancel(self) -> None:
        self.cancelled = True


class Handle:
    """``handle.options(...).run.remote(job, task, request, streaming)``, answered from a script."""

    def __init__(self, *streams: Stream) -> None:
        self.streams = list(streams)
        self.requests: list[Any] = []

    def options(self, **_: Any) -> "Handle":
        return self

    @property
    def run(self) -> "Handle":
        return self

    def remote(self, job: str, task: str, request: Any, streaming: bool) -> Stream:
        self.requests.append(request)
        return self.streams.pop(0)


class Board:
    class stop:  # noqa: N801 - as Ray spells an actor method
        @staticmethod
        def remote(job: str) -> None:
            raise AssertionError("nothing here presses Stop")


def pieces(*texts: str) -> list[tuple[Any, ...]]:
    return [("item", ChatChunk(text=text)) for text in texts]


def stream(handle: Handle, shown: list[str] | None = None) -> list[str]:
    """A sampled chat through the runner; its pieces' text (also kept in ``shown`` as they come)."""
    runner = ClusterRunner(handle, Board(), 2)
    request = ChatRequest.build("Tell me a story", [], None, 0.7, 0.95, 64)
    shown = [] if shown is None else shown
    for chunk in runner.stream("stablelm", "chat", request, lambda *_: None):
        shown.append(chunk.text)
    return shown


def test_a_chat_whose_replica_dies_goes_on_where_it_was_on_another() -> None:
    first = Stream([pieces("Once"), pieces(" upon"), DIES])
    retry = Stream([pieces("Once", " upon", " a"), pieces(" time", ".")])
    handle = Handle(first, retry)
    assert stream(handle) == ["Once", " upon", " a", " time", "."]  # each piece shown once
    sent, again = handle.requests
    assert sent.seed is not None and again == sent  # the seed was fixed before the first call
    assert first.cancelled and retry.cancelled


def test_a_retry_that_does_not_repeat_the_words_shown_is_a_clear_error() -> None:
    handle = Handle(Stream([pieces("Once", " upon"), DIES]), Stream([pieces("Once", " there")]))
    shown: list[str] = []
    with pytest.raises(ReplicaLost, match="did not repeat the words already shown"):
        stream(handle, shown)
    assert shown == ["Once", " upon"]


def test_a_retry_that_ends_short_of_the_words_shown_is_a_clear_error() -> None:
    handle = Handle(Stream([pieces("Once", " upon"), DIES]), Stream([pieces("Once")]))
    with pytest.raises(ReplicaLost, match="ended before the words already shown"):
        stream(handle)


def test_a_second_lost_replica_is_a_clear_error_naming_the_task() -> None:
    handle = Handle(Stream([pieces("Once"), DIES]), Stream([DIES]))
    with pytest.raises(ReplicaLost, match="replica running this chat job stopped .ActorDiedError.*Try again"):
        stream(handle)


def test_an_image_job_is_retried_from_the_start() -> None:
    handle = Handle(Stream([[("progress", "prior", 1, 4)], DIES]),
                    Stream([[("progress", "prior", 1, 4)], [("result", "picture")]]))
    steps: list[tuple[Any, ...]] = []
    result = ClusterRunner(handle, Board(), 2).run("cascade", "text_to_image", "request",
                                                   lambda *event: steps.append(event))
    assert result == "picture" and handle.requests == ["request", "request"]
    assert steps == [("prior", 1, 4), ("prior", 1, 4)]


@dataclass(frozen=True)
class Seeded:
    prompt: str
    seed: int | None = None


def test_only_a_seed_left_to_chance_is_drawn() -> None:
    drawn = replayable(Seeded("a"))
    assert isinstance(drawn.seed, int) and drawn.prompt == "a"
    assert replayable(Seeded("a", seed=5)) == Seeded("a", seed=5)
    assert replayable("no fields") == "no fields"
    assert replayable(Seeded("a")).seed != replayable(Seeded("a")).seed  # drawn afresh, as the backend would
