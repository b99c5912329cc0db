"""Session-wide test set-up: offline hub, one tiny-model cache, and in-process app launches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

# Before huggingface_hub is imported anywhere: it reads the flag once, at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


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
def launch_app(models_dir: Path, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start the real app in-process on a free port; returns its URL. Closed after the test."""
    import app

    started = []

    def start(*argv: str) -> str:
        args = app.parse_args(["--preset", "tiny", "--models-dir", str(models_dir),
                               "--outputs", str(tmp_path / "outputs"), *argv], environ={})
        demo, url = app.launch(args, prevent_thread_lock=True)
        started.append(demo)
        return url

    yield start
    for demo in started:
        demo.close()
