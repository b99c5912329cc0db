"""Hugging Face Spaces: ZeroGPU wrapping with request-sized durations; no `spaces` import elsewhere."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Callable

import pytest

import app


class FakeSpaces(types.ModuleType):
    """Stands in for the `spaces` package: records what `spaces.GPU(duration=…)` wrapped."""

    def __init__(self) -> None:
        super().__init__("spaces")
        self.wrapped: list[tuple[str, Callable[..., int]]] = []

    def GPU(self, duration: Callable[..., int]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:  # noqa: N802
        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.wrapped.append((fn.__module__, duration))
            return fn

        return wrap


def build(models_dir: Path, tmp_path: Path) -> None:
    args = app.parse_args(["--preset", "tiny", "--models-dir", str(models_dir),
                           "--outputs", str(tmp_path)], environ={})
    app.build_ui(app.build_studio(args), args.tabs)


def test_zero_gpu_wraps_gpu_handlers_with_request_sized_durations(
        monkeypatch: pytest.MonkeyPatch, models_dir: Path, tmp_path: Path) -> None:
    fake = FakeSpaces()
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    build(models_dir, tmp_path)
    durations = dict(fake.wrapped)
    image = durations["tabs.image"]
    small = image("a cat", "", 1024, 1024, 20, 10, 4.0, 0.0, 1, -1)
    big = image("a cat", "", 2048, 2048, 40, 20, 4.0, 1.1, 4, -1)
    huge = image("a cat", "", 2048, 2048, 100, 50, 4.0, 1.1, 4, -1)
    assert small == 37  # 30 s cold load + 0.25 s x 30 steps x 1 megapixel
    assert big == 270  # 30 + 0.25 x 60 steps x 4 megapixels x 4 images
    assert huge == 300  # capped
    assert image("a cat", "", "abc", 1024, 20, 10, 4, 0, 1, -1) == 60  # bad input fails fast anyway
    assert durations["tabs.video"]("img.png", 25, 6, 127, 0.02, 30, 0, -1) == 85  # 40 + 0.06 x 750
    assert durations["tabs.chat"]("hi", [], "", 0.7, 0.95, 512) == 45  # 20 + 512 / 20
    assert {"tabs.image", "tabs.variation", "tabs.video", "tabs.orbit", "tabs.chat"} <= set(durations)


def test_without_zero_gpu_spaces_is_never_imported(models_dir: Path, tmp_path: Path) -> None:
    code = ("import sys, app\n"
            f"args = app.parse_args(['--preset', 'tiny', '--models-dir', {str(models_dir)!r}, "
            f"'--outputs', {str(tmp_path)!r}], environ={{}})\n"
            "app.build_ui(app.build_studio(args), args.tabs)\n"
            "print('spaces' in sys.modules)")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(app.__file__).parent, env=env, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_a_space_binds_all_interfaces_and_zero_gpu_picks_lite() -> None:
    args = app.parse_args([], environ={"SPACE_ID": "someone/cascade-studio", "SPACES_ZERO_GPU": "true"})
    assert (args.host, args.no_auth, args.preset) == ("0.0.0.0", True, "lite")
    assert app.resolve_auth(args) is None
    args = app.parse_args(["--auth", "me:pw"], environ={"SPACE_ID": "someone/cascade-studio"})
    assert app.resolve_auth(args) == [("me", "pw")]


def test_readme_is_a_space_card_matching_requirements() -> None:
    import yaml

    root = Path(app.__file__).parent
    card = yaml.safe_load((root / "README.md").read_text().split("---")[1])
    pins = dict(line.split("==") for line in (root / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py"
    assert card["sdk_version"] == pins["gradio"]
    assert card["suggested_hardware"] and card["license"]
    preload = " ".join(card["preload_from_hub"])
    assert "prior_lite/diffusion_pytorch_model.bf16.safetensors" in preload
    assert "decoder_lite/diffusion_pytorch_model.bf16.safetensors" in preload
