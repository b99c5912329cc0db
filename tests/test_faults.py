"""Faults from outside (issue #9, part 4): the real app in-process on the tiny preset, over the API.

* Out of device memory on every family, injected through the manager's fault hook: one OOM is
  retried one memory mode lower and gives the same result; a persistent one gives a clear error in
  bounded time; the queue then serves the next request.
* The outputs folder on a full disk: a clear error naming the folder, nothing partial left, and
  the next request succeeds once space is back.
* A model folder holding only pickle weights: refused (safetensors only), the pickle never runs.
* A process killed in the middle of writing an output: no half-written file under a final name,
  and the next start sweeps the hidden leftover.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from backends.runtime.outputs import OutputWriter
from backends.runtime.studio import Studio
from tests.bait import Plant
from tests.serving import serve_tiny
from tests.test_video_api import read_video

REPO = Path(__file__).resolve().parent.parent
#: A hung queue would never answer; every tiny request here answers in a few seconds.
ANSWER_TIMEOUT_S = 60
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small inputs (under 4 kB each, so an upload fits even where writes are capped)."""
    folder = tmp_path_factory.mktemp("fault-pictures")
    Image.new("RGB", (160, 96), (180, 60, 30)).save(folder / "photo.png")
    cutout = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    cutout.paste((40, 90, 200, 255), (15, 15, 65, 65))
    cutout.save(folder / "cutout.png")
    return {path.stem: path for path in folder.iterdir()}


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Studio, Client]]:
    """One app for the OOM tests, with its Studio at hand (fault hook, OOM counters)."""
    with serve_tiny(models_dir, tmp_path_factory.mktemp("fault-outputs")) as (studio, url):
        yield studio, Client(url, verbose=False)


# ----- the six GPU endpoints ----------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """One GPU endpoint: its contract inputs, the manager site to fail, and what its answer is."""

    api_name: str
    #: Contract inputs in DESIGN.md's order, given the test pictures.
    inputs: Callable[[dict[str, Path]], list[Any]]
    #: The component whose placement raises the injected OOM (a different stage per endpoint).
    site: str
    #: The answer reduced to something comparable (pixels, frames, text), plus its info (or None).
    outcome: Callable[[Any], tuple[Any, dict | None]]


def _gallery(answer: Any) -> tuple[Any, dict]:
    gallery, info = answer
    return np.asarray(Image.open(gallery[0]["image"])), info


def _video(answer: Any) -> tuple[Any, dict]:
    result, info = answer
    return read_video(result["video"] if isinstance(result, dict) else result)[1], info


def _orbit(answer: Any) -> tuple[Any, dict]:
    _, sheet, info = answer
    return np.asarray(Image.open(sheet)), info


ENDPOINTS = {e.api_name: e for e in [
    Endpoint("/generate_image", lambda p: ["a red lighthouse", "", 256, 256, 3, 2, 4.0, 0.0, 1, 7],
             "cascade.prior", _gallery),
    Endpoint("/image_variation", lambda p: [handle_file(str(p["photo"])), "", "", 0, 0, 1, 5],
             "cascade.image_encoder", _gallery),
    Endpoint("/img2img", lambda p: [handle_file(str(p["photo"])), "a red house", "", 0.5, 0, 0, 5],
             "cascade.effnet", _gallery),
    # An explicit decode chunk: the automatic one follows free memory, which the retry changes.
    Endpoint("/generate_video", lambda p: [handle_file(str(p["photo"])), 6, 8, 127, 0.02, 3, 2, 11],
             "svd.unet", _video),
    Endpoint("/orbit", lambda p: [handle_file(str(p["cutout"])), "p", 10, 1, 4, "sine", 30],
             "sv3d.p.unet", _orbit),
    Endpoint("/chat", lambda p: ["Write a poem about the sea", [], SYSTEM, 0, 1.0, 16],
             "stablelm.model", lambda answer: (answer, None)),
]}


def ask(client: Client, endpoint: Endpoint, pictures: dict[str, Path]) -> Any:
    """Submit and wait at most ``ANSWER_TIMEOUT_S``: a hung queue fails here, it never blocks the run."""
    job = client.submit(*endpoint.inputs(pictures), api_name=endpoint.api_name)
    try:
        return job.result(timeout=ANSWER_TIMEOUT_S)
    except TimeoutError:
        pytest.fail(f"{endpoint.api_name} gave no answer within {ANSWER_TIMEOUT_S} s: the queue hangs")


def same(a: Any, b: Any) -> bool:
    return np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


@pytest.mark.parametrize("api_name", list(ENDPOINTS))
def test_oom_is_retried_lower_then_reported_and_the_queue_keeps_serving(
        served: tuple[Studio, Client], pictures: dict[str, Path], tally: Any, api_name: str) -> None:
    studio, client = served
    manager, endpoint = studio.manager, ENDPOINTS[api_name]
    reference, _ = endpoint.outcome(ask(client, endpoint, pictures))
    survived = 0
    try:
        # One OOM: the manager evicts everything and runs the job again one mode lower. On the
        # CPU the lower mode computes exactly the same numbers, so the answer must not change.
        retries = manager.oom_retries
        manager.faults.arm(endpoint.site, times=1)
        answer, info = endpoint.outcome(ask(client, endpoint, pictures))
        assert manager.faults.pending(endpoint.site) == 0, "the injected OOM never fired"
        assert manager.oom_retries == retries + 1
        assert same(answer, reference)
        if info is not None:  # chat answers with text only; its notice goes to the UI's stats line
            assert any("Ran out of device memory in auto memory mode" in n and "offload mode" in n
                       for n in info["notices"])
        survived += 1

        # OOM again in the lower mode too: a clear error, in bounded time.
        failures = manager.oom_failures
        manager.faults.arm(endpoint.site, times=2)
        with pytest.raises(AppError) as caught:
            ask(client, endpoint, pictures)
        message = str(caught.value)
        assert "Out of device memory" in message and "tried auto then offload mode" in message
        assert "Try a smaller request" in message and "--preset lite or cpu" in message
        assert manager.faults.pending(endpoint.site) == 0 and manager.oom_failures == failures + 1
        assert {s.placement for s in manager.statuses()} <= {"cpu", "disk"}  # nothing half-placed

        # The queue still serves: the next request gives the usual answer.
        again, _ = endpoint.outcome(ask(client, endpoint, pictures))
        assert same(again, reference)
        survived += 2
    finally:
        tally.add("faults", f"oom:{api_name}", injected=3, survived=survived)


# ----- the outputs folder on a full disk ------------------------------------------------------

class FullDisk:
    """The app with its outputs folder on a filesystem made really full (or unwritable), then freed.

    ``tmpfs``: a 4 MB tmpfs mounted on the folder (needs root or CAP_SYS_ADMIN) is filled with a
    file until the kernel answers ENOSPC; one 4 kB page is then given back, so a small JSON
    sidecar would still fit but no image or video does. Where nothing can be mounted:
    ``unwritable`` (mode 0o500, for users the kernel holds to file modes), or else ``fsize``: the
    app runs as a child process whose file-size limit (RLIMIT_FSIZE, enforced for root too) the
    test lowers to 8 kB with ``prlimit``, so each of its writes past that fails with EFBIG. Only
    the child: pytest's own output capture must stay writable. ``STUDIO_TEST_FULL_DISK`` picks one.
    """

    def __init__(self, folder: Path, how: str) -> None:
        self.folder = folder
        self.how = how
        self.url = ""
        self.process: subprocess.Popen | None = None  # the app, for ``fsize``
        self.filler = folder / ".filler"
        self._limit: tuple[int, int] | None = None

    @property
    def expected(self) -> str:
        """What the error must say (a regex), for this kind of fullness."""
        folder = re.escape(str(self.folder))
        return {"tmpfs": rf"the disk holding the outputs folder {folder} is full \(No space left on device\)",
                "unwritable": rf"the outputs folder {folder} is not writable \(Permission denied\)",
                "fsize": rf"larger than the outputs folder {folder} allows \(File too large\)"}[self.how]

    def fill(self) -> None:
        if self.how == "tmpfs":
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                for block in (65536, 4096):
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(fd, b"\0" * block)
                os.ftruncate(fd, max(0, os.fstat(fd).st_size - 4096))
            finally:
                os.close(fd)
            assert shutil.disk_usage(self.folder).free <= 8192
        elif self.how == "unwritable":
            for folder in [self.folder, *[p for p in self.folder.rglob("*") if p.is_dir()]]:
                folder.chmod(0o500)
        else:
            assert self.process is not None
            self._limit = resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE, (8192, self._limit[1]))

    def free(self) -> None:
        if self.how == "tmpfs":
            self.filler.unlink(missing_ok=True)
        elif self.how == "unwritable":
            for folder in [self.folder, *[p for p in self.folder.rglob("*") if p.is_dir()]]:
                folder.chmod(0o700)
        elif self._limit is not None and self.process is not None and self.process.poll() is None:
            resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE, self._limit)
            self._limit = None


def _mount_tmpfs(folder: Path) -> bool:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(folder)],
                          capture_output=True, check=False)
    return done.returncode == 0


def _modes_bind(folder: Path) -> bool:
    """Whether mode 0o500 really stops this process from writing (not for root)."""
    folder.chmod(0o500)
    try:
        (folder / ".probe").touch()
    except PermissionError:
        return True
    finally:
        folder.chmod(0o700)
    (folder / ".probe").unlink()
    return False


DISK_TABS = "image,video,orbit,system"


def _app_process(models_dir: Path, outputs: Path) -> tuple[subprocess.Popen, str]:
    """The app as a child process on a free port; returns it once it answers.

    Its console goes to a pipe that a thread drains, not to a file: under the file-size limit a
    write to a log file fails as well, and Gradio's queue dies when printing a traceback fails.
    """
    import collections
    import socket
    import threading
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.Popen(
        [sys.executable, "app.py", "--preset", "tiny", "--models-dir", str(models_dir), "--outputs",
         str(outputs), "--port", str(port), "--tabs", DISK_TABS], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail: collections.deque[bytes] = collections.deque(maxlen=40)
    assert process.stdout is not None
    threading.Thread(target=lambda: tail.extend(process.stdout), daemon=True).start()  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=2).close()
            return process, url
        time.sleep(0.25)
    process.kill()
    raise AssertionError("the app did not start: " + b"".join(tail).decode(errors="replace"))


@pytest.fixture()
def full_disk(tmp_path: Path, models_dir: Path,
              launch_studio: Callable[..., tuple[Studio, str]]) -> Iterator[FullDisk]:
    folder = tmp_path / "outputs"
    folder.mkdir()
    how = os.environ.get("STUDIO_TEST_FULL_DISK", "auto")
    if how in ("auto", "tmpfs") and _mount_tmpfs(folder):
        how = "tmpfs"
    elif how == "tmpfs":
        pytest.fail("STUDIO_TEST_FULL_DISK=tmpfs, but mounting a tmpfs failed")
    elif how == "auto":
        how = "unwritable" if _modes_bind(folder) else "fsize"
    disk = FullDisk(folder, how)
    try:
        if how == "fsize":
            disk.process, disk.url = _app_process(models_dir, folder)
        else:
            disk.url = launch_studio("--outputs", str(folder), "--tabs", DISK_TABS)[1]
        yield disk
    finally:
        disk.free()
        if disk.process is not None:
            disk.process.terminate()
            try:
                disk.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                disk.process.kill()
                disk.process.wait()
        if how == "tmpfs":
            unmounted = subprocess.run(["umount", str(folder)], capture_output=True, check=False)
            if unmounted.returncode != 0:  # still busy (a lingering handle): detach it anyway
                subprocess.run(["umount", "-l", str(folder)], check=True)


def tree(folder: Path) -> dict[str, int]:
    """Every entry under ``folder`` (hidden ones too) with its size; the filler left out."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")
            if p.name != ".filler"}


def unreadable(path: Path) -> bool:
    """Whether a final-named result file is truncated or otherwise broken."""
    try:
        if path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif path.suffix == ".mp4":
            return len(read_video(path)[1]) == 0
        elif path.suffix == ".json":
            json.loads(path.read_text())
        return False
    except Exception:  # any failure to read it back is what we are looking for
        return True


DISK_ENDPOINTS = ("/generate_image", "/generate_video", "/orbit")


def test_a_full_disk_gives_a_clear_error_leaves_nothing_and_recovers(
        full_disk: FullDisk, pictures: dict[str, Path], tally: Any) -> None:
    client = Client(full_disk.url, verbose=False)
    # One result of each kind first: they must outlive the fault untouched (and the models are
    # then built, which the fsize limit would otherwise stop too).
    for api_name in DISK_ENDPOINTS:
        ask(client, ENDPOINTS[api_name], pictures)
    earlier = {name: size for name, size in tree(full_disk.folder).items()
               if (full_disk.folder / name).is_file()}
    for api_name in DISK_ENDPOINTS:
        endpoint = ENDPOINTS[api_name]
        before = tree(full_disk.folder)
        full_disk.fill()
        try:
            with pytest.raises(AppError, match=full_disk.expected) as caught:
                ask(client, endpoint, pictures)
            assert "Nothing was saved" in str(caught.value) and "--outputs" in str(caught.value)
            assert tree(full_disk.folder) == before  # no temporary, no truncated file, nothing new
            assert client.predict(api_name="/status")["preset"] == "tiny"  # still answering
        finally:
            full_disk.free()
        answer, info = endpoint.outcome(ask(client, endpoint, pictures))  # space is back
        assert np.asarray(answer).size > 0
        saved = info["files"].values() if isinstance(info["files"], dict) else info["files"]
        assert all(Path(path).exists() for path in saved)
        tally.add("faults", f"full_disk:{api_name}", injected=1, survived=1)
    now = tree(full_disk.folder)
    lost = [name for name, size in earlier.items() if now.get(name) != size]
    files = [p for p in full_disk.folder.rglob("*") if p.is_file() and p.name != ".filler"]
    partial = [p for p in files if p.name.startswith(".") or unreadable(p)]
    tally.add("faults", f"full_disk({full_disk.how})", files_lost=len(lost), partial_files=len(partial))
    assert lost == [] and partial == []


# ----- a model folder holding only pickle weights --------------------------------------------


def test_a_model_folder_with_only_pickle_weights_is_refused(
        launch_studio: Callable[..., tuple[Studio, str]], pictures: dict[str, Path], tmp_path: Path,
        tally: Any) -> None:
    marker = tmp_path / "pickle-ran"
    twin = tmp_path / "twin-ran"
    torch.save(Plant(twin), tmp_path / "twin.bin")
    # Deliberately unsafe, on the test's own twin file only: proves the bait really runs code.
    torch.load(tmp_path / "twin.bin", weights_only=False)
    assert twin.exists(), "the planted pickle does not run code; the test would prove nothing"

    models = tmp_path / "pickled"
    prior = models / "cascade" / "prior"
    prior.mkdir(parents=True)
    (prior / "config.json").write_text('{"_class_name": "StableCascadeUNet"}')
    torch.save(Plant(marker), prior / "diffusion_pytorch_model.bin")
    lm = models / "stablelm"
    lm.mkdir()
    (lm / "config.json").write_text('{"model_type": "stablelm"}')
    torch.save(Plant(marker), lm / "pytorch_model.bin")
    sv3d = models / "sv3d"
    sv3d.mkdir()
    (sv3d / "sv3d_p.ckpt").write_bytes(pickle.dumps(Plant(marker)))
    # A user preset outside presets/user/: --preset takes a path to a .yaml file.
    preset = tmp_path / "pickled.yaml"
    preset.write_text(f"""base: tiny
cascade:
  prior: {{repo: "{models / 'cascade'}", subfolder: prior, variant: null}}
stablelm:
  model: {{repo: "{lm}"}}
sv3d:
  checkpoint_p: {{repo: "{sv3d}"}}
""")
    studio, url = launch_studio("--preset", str(preset), "--tabs", "image,orbit,chat,system")
    assert studio.preset.name == "pickled"
    client = Client(url, verbose=False)
    cases = [("/generate_image", prior, "diffusion_pytorch_model.bin"), ("/chat", lm, "pytorch_model.bin"),
             ("/orbit", sv3d, "sv3d_p.ckpt")]
    for api_name, folder, filename in cases:
        with pytest.raises(AppError) as caught:
            ask(client, ENDPOINTS[api_name], pictures)
        message = str(caught.value)
        assert f"the folder {folder} holds only pickle weights ({filename})" in message
        assert "safetensors only" in message and "Nothing was loaded" in message
        assert not marker.exists(), f"{api_name} unpickled {filename}"
        assert client.predict(api_name="/status")["preset"] == "pickled"  # still serving
        tally.add("faults", f"pickle_only:{api_name}", injected=1, survived=1)


# ----- a process killed in the middle of writing an output -------------------------------------

WRITER = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from backends.runtime.outputs import OutputWriter

root, kind = Path(sys.argv[1]), sys.argv[2]
writer = OutputWriter(root)
writer.save_images([Image.new("RGB", (64, 64), "red")], {"seed": 1})  # a finished result
print("first saved", flush=True)
rng = np.random.default_rng(0)
if kind == "png":  # ~50 MB of noise: PNG compression takes seconds
    writer.save_images([Image.fromarray(rng.integers(0, 256, (4000, 4000, 3), dtype=np.uint8))], {"seed": 2})
else:  # 300 noisy frames: x264 takes seconds
    frames = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(300)]
    writer.save_video(frames, 8, {"seed": 2})
print("second saved", flush=True)
"""


def _hold(path: Path) -> int:
    """Take the lock a live writer holds on its temporary; returns the descriptor to close."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@pytest.mark.parametrize("kind", ["png", "mp4"])
def test_a_kill_mid_write_leaves_no_half_file_and_the_next_start_sweeps(
        tmp_path: Path, models_dir: Path, kind: str, tally: Any) -> None:
    root = tmp_path / "outputs"
    # Its own session, so the kill takes ffmpeg down too, as a crash of the whole app would.
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(root), kind], cwd=REPO, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    leftover = None
    while leftover is None and time.monotonic() < deadline and process.poll() is None:
        found = [p for p in root.glob(f"*/.00002-2.{kind}.*.tmp") if p.stat().st_size > 64 * 1024]
        leftover = found[0] if found else None
        time.sleep(0.005)
    assert leftover is not None, f"no temporary appeared: {process.communicate()[1].decode()[-2000:]}"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL

    day = leftover.parent
    first = day / "00001-1.png"
    names = sorted(p.name for p in day.iterdir())
    finals = [day / n for n in names if not n.startswith(".")]
    partial = [p for p in finals if unreadable(p)]
    lost = 0 if first.is_file() and not unreadable(first) else 1
    tally.add("faults", "killed_mid_write", injected=1, survived=int(lost == 0 and not partial), files_lost=lost,
              partial_files=len(partial))
    assert lost == 0 and partial == []
    assert finals == [first]  # the interrupted result is absent, not half-written
    assert names == sorted([first.name, leftover.name])  # the only leftover is the hidden temporary

    # While a live process holds a temporary, a starting writer leaves it alone, and the history
    # never lists it.
    holder = _hold(leftover)
    try:
        writer = OutputWriter(root)
        assert leftover.exists() and writer.recent(suffixes=(".png", ".mp4")) == [first]
    finally:
        os.close(holder)
    # The next app start sweeps it: nobody holds it any more.
    args = app.parse_args(["--preset", "tiny", "--models-dir", str(models_dir), "--outputs", str(root)], environ={})
    studio = app.build_studio(args)
    assert sorted(p.name for p in day.iterdir()) == [first.name]
    assert studio.outputs.recent(suffixes=(".png", ".mp4")) == [first]
    again = studio.outputs.save_images([Image.new("RGB", (8, 8), "blue")], {"seed": 3})
    assert [p.name for p in again] == ["00002-3.png"] and not unreadable(again[0])

