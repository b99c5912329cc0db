"""Memory manager policy, driven by a fake probe and small CPU modules."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from backends.runtime.errors import OutOfMemory, UnknownNameError
from backends.runtime.memory import MemoryManager
from backends.runtime.offload import module_bytes
from backends.runtime.placement import MemoryMode
from backends.runtime.probe import GB, FakeProbe, parse_budget_gb

MB = 2**20


def linear(size_mb: float) -> nn.Module:
    """A module of about ``size_mb`` MB in float32 (one square Linear layer)."""
    side = int((size_mb * MB / 4) ** 0.5)
    torch.manual_seed(0)
    return nn.Linear(side, side, bias=False)


def blocks(count: int, size_mb: float) -> nn.Module:
    """``count`` layers of ``size_mb`` each: streaming needs only one of them at a time."""
    torch.manual_seed(0)
    return nn.Sequential(*(linear(size_mb) for _ in range(count)))


def manager_with(budget_mb: float, sizes: dict[str, float], probe: FakeProbe | None = None) -> MemoryManager:
    probe = probe or FakeProbe(device_total=64 * GB)
    manager = MemoryManager(probe, "cpu", budget_bytes=int(budget_mb * MB), reserve_bytes=0)
    for name, size in sizes.items():
        manager.register(name, lambda size=size: linear(size))
    return manager


def placements(manager: MemoryManager) -> dict[str, str]:
    return {s.name: s.placement for s in manager.statuses()}


def touch(manager: MemoryManager, *names: str) -> None:
    for name in names:
        with manager.use(name) as module:
            module(torch.ones(1, module.in_features))


def test_registered_components_start_on_disk_and_fit_when_budget_allows() -> None:
    manager = manager_with(100, {"a": 4, "b": 4})
    assert placements(manager) == {"a": "disk", "b": "disk"}
    touch(manager, "a", "b")
    assert placements(manager) == {"a": "gpu", "b": "gpu"}
    sizes = {s.name: s.bytes for s in manager.statuses()}
    assert sizes["a"] == pytest.approx(4 * MB, rel=0.01)


def test_least_recently_used_is_evicted_to_cpu() -> None:
    # 10 MB budget minus 5 % reserve holds two 4 MB components, not three.
    manager = manager_with(10, {"a": 4, "b": 4, "c": 4})
    touch(manager, "a", "b", "c")
    assert placements(manager) == {"a": "cpu", "b": "gpu", "c": "gpu"}
    touch(manager, "b", "a")  # b is now more recent than c, so c goes
    assert placements(manager) == {"a": "gpu", "b": "gpu", "c": "cpu"}
    assert manager.component("c").loads == 1  # evicted copies are reused, not reloaded


def test_working_memory_counts_towards_the_need() -> None:
    manager = manager_with(10, {"a": 4, "b": 4})
    touch(manager, "a")
    with manager.use("b", working_bytes=3 * MB):
        assert placements(manager)["a"] == "cpu"


def test_a_resident_component_still_gets_room_for_a_bigger_working_set() -> None:
    manager = manager_with(10, {"a": 4, "b": 4})
    touch(manager, "a", "b")
    with manager.use("b", working_bytes=3 * MB):  # b stays; a must go to make 3 MB of room
        assert placements(manager) == {"a": "cpu", "b": "gpu"}


def test_a_resident_component_whose_working_set_no_longer_fits_beside_it_streams() -> None:
    # 4 blocks of 1 MB, resident in a 6 MB budget (5 % reserve). A later use asks for 3 MB of
    # working memory: 4 + 3 + 0.3 does not fit, so it streams (1 + 3 + 0.3 does), computes the
    # same, and goes back to RAM afterwards, as a component placed afresh would.
    manager = manager_with(6, {})
    manager.register("big", lambda: blocks(4, 1))
    reference = blocks(4, 1)
    x = torch.randn(2, reference[0].in_features)
    with manager.use("big"):
        assert placements(manager)["big"] == "gpu"
    with manager.use("big", working_bytes=3 * MB) as module:
        assert placements(manager)["big"] == "offload"
        assert torch.equal(module(x), reference(x))
    assert placements(manager)["big"] == "cpu"
    assert manager.component("big").loads == 1


def test_a_resident_component_whose_working_set_cannot_fit_even_streamed_is_refused() -> None:
    manager = manager_with(6, {})
    manager.register("big", lambda: blocks(4, 1))
    with manager.use("big"):
        pass
    with pytest.raises(OutOfMemory, match=r"big needs 7\.\d MB even when streamed"):
        with manager.use("big", working_bytes=6 * MB):
            pass


def test_gpu_mode_refuses_a_working_set_that_does_not_fit_beside_a_resident_component() -> None:
    manager = manager_with(6, {})
    manager.register("big", lambda: blocks(4, 1))

    def job() -> None:
        with manager.use("big"):
            pass
        with manager.use("big", working_bytes=3 * MB):
            pass

    with pytest.raises(OutOfMemory, match=r"big is on the device but this use needs 3\.\d MB .*memory mode gpu"):
        manager.run(job, mode="gpu")


def test_working_memory_may_be_computed_from_the_loaded_module() -> None:
    manager = manager_with(10, {"a": 4, "b": 4})
    touch(manager, "a")
    with manager.use("b", working_bytes=lambda module: module.in_features * 3 * 1024):
        assert placements(manager)["a"] == "cpu"  # 1024 features x 3 KB = 3 MB pushes a out


def test_live_free_memory_below_budget_forces_eviction() -> None:
    probe = FakeProbe(device_total=64 * GB)
    manager = manager_with(100, {"a": 4, "b": 4, "c": 4}, probe)
    touch(manager, "a", "b")
    # Another process grabs memory: the live reading (which includes our own residents) drops to
    # 2 MB. c needs 4 MB + a 5 MB reserve, so both a and b must go although the budget has room.
    probe.device_free = 2 * MB
    touch(manager, "c")
    assert placements(manager) == {"a": "cpu", "b": "cpu", "c": "gpu"}


def test_evicted_component_is_dropped_when_ram_is_short() -> None:
    probe = FakeProbe(device_total=64 * GB)
    manager = manager_with(10, {"a": 4, "b": 4}, probe)

    def load_c_filling_ram() -> nn.Module:
        probe.ram_free = manager.ram_margin_bytes // 2  # loading c used up the RAM
        return linear(4)

    manager.register("c", load_c_filling_ram)
    touch(manager, "a", "b", "c")
    assert placements(manager) == {"a": "disk", "b": "gpu", "c": "gpu"}
    probe.ram_free = 32 * GB
    touch(manager, "a")
    assert manager.component("a").loads == 2


def test_component_too_big_alone_runs_in_offload_mode_and_computes_the_same() -> None:
    manager = manager_with(3, {})
    manager.register("big", lambda: blocks(4, 1))
    reference = blocks(4, 1)
    x = torch.randn(2, reference[0].in_features)
    with manager.use("big") as module:
        assert placements(manager)["big"] == "offload"
        assert manager.component("big").home.streaming
        assert torch.equal(module(x), reference(x))
    assert placements(manager)["big"] == "cpu"
    assert not manager.component("big").home.streaming


def test_component_too_big_even_streamed_fails_with_the_numbers() -> None:
    manager = manager_with(1, {"big": 4})
    with pytest.raises(OutOfMemory, match=r"big needs 4\.\d MB even when streamed .*budget is 1\.0 MB"):
        with manager.use("big"):
            pass


def test_gpu_mode_refuses_to_stream() -> None:
    manager = manager_with(3, {"big": 4})
    with pytest.raises(OutOfMemory, match="memory mode gpu"):
        manager.run(lambda: touch(manager, "big"), mode="gpu")


def test_offload_mode_returns_each_component_to_ram_after_use() -> None:
    manager = manager_with(100, {"a": 4, "b": 4})
    manager.run(lambda: touch(manager, "a", "b"), mode=MemoryMode.OFFLOAD)
    assert placements(manager) == {"a": "cpu", "b": "cpu"}


def test_oom_during_a_run_retries_once_in_the_next_lower_mode() -> None:
    manager = manager_with(100, {"a": 4, "b": 4})
    touch(manager, "b")
    manager.faults.arm("a", times=1)
    modes: list[MemoryMode] = []

    def job() -> str:
        modes.append(manager.mode)
        touch(manager, "a")
        return "done"

    assert manager.run(job, mode="auto") == "done"
    assert modes == [MemoryMode.AUTO, MemoryMode.OFFLOAD]
    assert placements(manager)["b"] == "cpu"  # the retry evicted the others
    assert manager.mode is MemoryMode.AUTO


def test_the_retry_is_counted_and_visible_to_the_job() -> None:
    manager = manager_with(100, {"a": 4})
    manager.faults.arm("a", times=1)
    seen: list[MemoryMode | None] = []

    def job() -> None:
        seen.append(manager.retried_from())
        touch(manager, "a")

    manager.run(job)
    assert seen == [None, MemoryMode.AUTO]  # the second attempt knows it is the retry, and of what
    assert (manager.oom_retries, manager.oom_failures, manager.faults.pending("a")) == (1, 0, 0)
    assert manager.retried_from() is None  # between jobs
    manager.faults.arm("a", times=2)
    with pytest.raises(OutOfMemory, match="out of memory|Out of device memory"):
        manager.run(job)
    assert (manager.oom_retries, manager.oom_failures) == (2, 1)


def test_the_oom_message_says_what_to_do() -> None:
    manager = manager_with(100, {"a": 4})
    manager.faults.arm("a", times=2)
    with pytest.raises(OutOfMemory) as caught:
        manager.run(lambda: touch(manager, "a"), what="Stable Cascade text-to-image")
    message = str(caught.value)
    assert message.startswith("Out of device memory running Stable Cascade text-to-image (tried auto then offload")
    assert "Try a smaller request" in message and "--preset lite or cpu" in message
    assert "still running" in message


def test_a_stream_retried_after_an_early_oom_is_counted_and_knows_it() -> None:
    manager = manager_with(100, {"a": 4})
    manager.faults.arm("a", times=1)

    def tokens():
        with manager.use("a"):
            yield manager.retried_from()

    assert list(manager.stream(tokens)) == [MemoryMode.AUTO]
    assert (manager.oom_retries, manager.oom_failures) == (1, 0)
    manager.faults.arm("a", times=2)
    with pytest.raises(OutOfMemory, match="tried auto then offload"):
        list(manager.stream(tokens))
    assert (manager.oom_retries, manager.oom_failures) == (2, 1)
    assert manager.run(lambda: "serving") == "serving"


def test_second_oom_gives_a_clear_error_and_leaves_nothing_half_placed() -> None:
    manager = manager_with(100, {"a": 4, "b": 4})
    manager.faults.arm("a", times=2)
    with pytest.raises(OutOfMemory, match="tried auto then offload mode"):
        manager.run(lambda: touch(manager, "b", "a"), mode="auto", what="test job")
    for comp in (manager.component("a"), manager.component("b")):
        assert comp.placement.value in ("cpu", "disk")
        assert comp.in_use == 0
        assert comp.home is None or not comp.home.streaming
    assert manager.run(lambda: touch(manager, "a") or "ok") == "ok"  # still serving


def test_two_threads_at_once_run_one_job_at_a_time() -> None:
    manager = manager_with(10, {"a": 4, "b": 4, "c": 4})
    active = 0
    peak = 0
    guard = threading.Lock()
    errors: list[BaseException] = []

    def job(names: tuple[str, ...]) -> None:
        nonlocal active, peak
        with guard:
            active += 1
            peak = max(peak, active)
        try:
            touch(manager, *names)
            time.sleep(0.01)
        finally:
            with guard:
                active -= 1

    def worker(names: tuple[str, ...]) -> None:
        try:
            for _ in range(10):
                manager.run(lambda: job(names))
                manager.statuses()  # readers never block on a job
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (("a", "b"), ("c", "a"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert peak == 1
    resident = sum(s.bytes for s in manager.statuses() if s.placement == "gpu")
    assert resident <= 10 * MB


def test_unload_by_name_family_and_all() -> None:
    manager = manager_with(100, {"fam.a": 1, "fam.b": 1, "other": 1})
    assert manager_with(100, {}).unload("all") == []  # nothing registered yet: nothing to do, not an error
    touch(manager, "fam.a", "fam.b", "other")
    assert manager.unload("fam.a") == ["fam.a"]
    assert placements(manager)["fam.a"] == "disk"
    assert sorted(manager.unload("fam")) == ["fam.a", "fam.b"]
    manager.unload("all")
    assert set(placements(manager).values()) == {"disk"}
    with pytest.raises(UnknownNameError, match="known: all, fam.a, fam.b, other"):
        manager.unload("nope")


def test_reading_applies_the_budget_to_the_cpu_device() -> None:
    manager = manager_with(10, {"a": 4})
    touch(manager, "a")
    reading = manager.reading()
    assert reading.device_total == 10 * MB
    assert reading.device_free == 10 * MB - module_bytes(manager.component("a").home.module)


def test_budget_parsing() -> None:
    assert parse_budget_gb(None) is None
    assert parse_budget_gb(0.5) == GB // 2


def test_stream_holds_the_job_only_while_iterated_and_retries_before_the_first_item() -> None:
    manager = manager_with(100, {"a": 4})
    manager.faults.arm("a", times=1)
    modes: list[MemoryMode] = []

    def tokens():
        modes.append(manager.mode)
        with manager.use("a"):
            yield from ("x", "y", "z")

    assert list(manager.stream(tokens, mode="auto")) == ["x", "y", "z"]
    assert modes == [MemoryMode.AUTO, MemoryMode.OFFLOAD]

    stream = manager.stream(tokens)
    assert next(stream) == "x"
    stream.close()  # Stop: the generator is closed mid-way
    assert manager.component("a").in_use == 0
    assert manager.run(lambda: "free") == "free"  # the job lock was released


def test_stream_oom_after_output_started_is_reported_not_retried() -> None:
    manager = manager_with(100, {"a": 4})

    def tokens():
        yield "x"
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    stream = manager.stream(tokens, what="chat")
    assert next(stream) == "x"
    with pytest.raises(OutOfMemory, match="chat"):
        next(stream)


def test_a_stream_may_be_iterated_from_different_threads() -> None:
    """Gradio runs each step of a streaming handler in whichever worker thread is free."""
    manager = manager_with(100, {"a": 4})

    def tokens():
        with manager.use("a"):
            yield from range(3)

    stream = manager.stream(tokens)
    got: list[int] = []
    for _ in range(4):
        worker = threading.Thread(target=lambda: got.append(next(stream, -1)))
        worker.start()
        worker.join()
    assert got == [0, 1, 2, -1]
    assert manager.run(lambda: "next job runs") == "next job runs"


def test_usable_free_and_room_beside_apply_budget_and_reserve() -> None:
    manager = manager_with(20, {"a": 4})
    touch(manager, "a")
    size = manager.component("a").size
    reserve = int(0.05 * 20 * MB)
    assert manager.usable_free() == 20 * MB - size - reserve
    assert manager.room_beside(size) == 20 * MB - reserve - size


def test_a_host_use_lends_the_ram_copy_and_takes_a_device_copy_off_first() -> None:
    manager = manager_with(100, {"t5": 4})
    touch(manager, "t5")
    assert placements(manager) == {"t5": "gpu"}
    with manager.use("t5", working_bytes=200 * MB, host=True) as module:  # no device room needed
        assert placements(manager) == {"t5": "cpu"}
        assert next(module.parameters()).device.type == "cpu"
    assert placements(manager) == {"t5": "cpu"} and manager.component("t5").loads == 1
    assert manager.largest_working()["t5"] == 200 * MB
