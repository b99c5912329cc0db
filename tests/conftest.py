"""Session-wide test set-up: offline hub, one tiny-model cache, and in-process app launches."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from backends.runtime.studio import Studio

import pytest

from backends.families import load_context

# Before huggingface_hub is imported anywhere: it reads the flag once, at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


CHROMIUM = "/usr/bin/chromium"
#: Flags that let Chromium run headless as root on a machine with no network (see NOTES.md).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped on machines without it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``--models-dir`` every in-process app uses, so tiny models are built once a session."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_cache(models_dir: Path) -> Path:
    """``LoadContext.cache_dir`` for backend tests: the same folder the app derives from models_dir."""
    import app

    return app.cache_dir(models_dir)


@pytest.fixture()
def launch_studio(models_dir: Path, tmp_path: Path) -> Iterator[Callable[..., tuple["Studio", str]]]:
    """Start the real app in-process on a free port; returns its Studio (faults, load counts) and URL.

    Extra argv goes after the test defaults, so a test's own ``--outputs`` wins. Closed after the test.
    """
    from tests.serving import serve_tiny

    with contextlib.ExitStack() as started:
        yield lambda *argv: started.enter_context(serve_tiny(models_dir, tmp_path / "outputs", *argv))


@pytest.fixture()
def launch_app(launch_studio: Callable[..., tuple["Studio", str]]) -> Callable[..., str]:
    """Start the real app in-process on a free port; returns its URL. Closed after the test."""
    return lambda *argv: launch_studio(*argv)[1]


#: Screenshots and the reliability figures of the last run (``.gitignore``d).
ARTIFACTS = Path(os.environ.get("STUDIO_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files for people to look at: screenshots, ``reliability.json``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


class Tally:
    """Counts what the reliability tests tried and what held, for docs/reliability.md.

    ``add("bad_inputs", "/generate_image", tried=1, answered=1)`` adds to nested counters; the
    session writes them to ``test-artifacts/reliability.json`` when it ends.
    """

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def add(self, category: str, key: str, **counters: int) -> None:
        with self._lock:
            slot = self.counts.setdefault(category, {}).setdefault(key, {})
            for name, value in counters.items():
                slot[name] = slot.get(name, 0) + value

    def totals(self, category: str) -> dict[str, int]:
        """The counters of one category summed over its keys."""
        total: dict[str, int] = {}
        for slot in self.counts.get(category, {}).values():
            for name, value in slot.items():
                total[name] = total.get(name, 0) + value
        return total


@pytest.fixture(scope="session")
def tally(artifacts_dir: Path) -> Iterator[Tally]:
    """The session's reliability counters; written to ``reliability.json`` at the end."""
    import json

    counts = Tally()
    yield counts
    report = {category: {"total": counts.totals(category), "by": by} for category, by in counts.counts.items()}
    (artifacts_dir / "reliability.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def tight_budget_bytes(tiny_cache: Path) -> int:
    """A ``--vram-budget`` (bytes) where the tiny decoder fits alone but not beside the prior.

    Computed from the real tiny components and the backend's own working-memory estimates for
    the default test request (256², 3 + 2 steps, prior guidance 4, one image), so it follows any
    change to either.
    """
    import json

    import torch
    from diffusers.models import StableCascadeUNet

    from backends.cascade.requests import TextToImageRequest
    from backends.cascade.stages import working_bytes
    from backends.runtime.loading import Source, load_pretrained, resolve_repo
    from backends.runtime.memory import RESERVE_FRACTION
    from backends.runtime.offload import module_bytes

    ctx = load_context(cache_dir=tiny_cache, offline=True)
    size = {name: module_bytes(load_pretrained(StableCascadeUNet, Source("tiny:cascade", name), ctx,
                                               dtype=torch.float32))
            for name in ("prior", "decoder")}
    root = resolve_repo(Source("tiny:cascade"), ctx)
    configs = {name: json.loads((Path(root) / name / "config.json").read_text())
               for name in ("text_encoder", "prior", "decoder", "vqgan")}
    request = TextToImageRequest.build("a red lighthouse on a cliff", "", 256, 256, 3, 2, 4.0, 0.0, 1, 7)
    work = working_bytes(request, 4, configs)
    decoder_need = size["decoder"] + work["decoder"]
    largest_other = max(work["text_encoder"], work["prior"] + size["prior"], work["vqgan"])
    assert largest_other < decoder_need, "tiny models no longer make the decoder the largest need"
    # The reserve is a fraction of the budget: the budget less it must hold the decoder's need
    # but not the decoder's need plus the prior. Aim at the middle of that window.
    return int((decoder_need + size["prior"] / 2) / (1 - RESERVE_FRACTION))


@pytest.fixture(scope="module")
def browser() -> Iterator["Browser"]:
    """Debian's Chromium through Playwright, one per test module (browser tests only)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: "Browser") -> Iterator["Page"]:
    """A fresh page in its own browser context (no cookies or storage shared between tests)."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    yield context.new_page()
    context.close()
