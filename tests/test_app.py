"""The public contract from outside: the real app in-process, driven through gradio_client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

import app
from tests.serving import serve_tiny

PROMPT = "a red lighthouse on a cliff"


@pytest.fixture(scope="module")
def launch_app_once(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """One app shared by the tests that only need it to answer (bad inputs, long prompt)."""
    with serve_tiny(models_dir, tmp_path_factory.mktemp("outputs")) as (_, url):
        yield Client(url, verbose=False)


def generate(client: Client, **overrides: Any) -> tuple[list[dict], dict]:
    """Call /generate_image with DESIGN.md's inputs in order; tiny-preset defaults."""
    values = dict(prompt=PROMPT, negative_prompt="", width=256, height=256, prior_steps=3,
                  decoder_steps=2, prior_guidance=4.0, decoder_guidance=0.0, num_images=1, seed=7)
    values.update(overrides)
    gallery, info = client.predict(*values.values(), api_name="/generate_image")
    return gallery, info


def pixels(item: dict) -> np.ndarray:
    return np.asarray(Image.open(item["image"]).convert("RGB"))


def placements(client: Client) -> dict[str, str]:
    return {m["name"]: m["placement"] for m in client.predict(api_name="/status")["models"]}


def test_generate_status_and_unload(launch_app: Callable[..., str], tmp_path: Path) -> None:
    client = Client(launch_app(), verbose=False)
    assert client.predict(api_name="/status")["models"] == []  # nothing loads before it is needed

    gallery, info = generate(client, num_images=2, seed=123)
    assert len(gallery) == 2
    assert info["seed"] == 123 and info["preset"] == "tiny"
    assert {"timings", "prior", "decoder"} <= set(info)
    assert Image.open(gallery[0]["image"]).size == (256, 256)

    saved = [Path(p) for p in info["files"]]
    assert all(p.is_file() and p.parent.parent == tmp_path / "outputs" for p in saved)
    with Image.open(saved[0]) as png:
        assert PROMPT in png.text["parameters"] and "Seed: 123" in png.text["parameters"]
        assert json.loads(png.text["studio"])["seed"] == 123
    assert not list((tmp_path / "outputs").glob("*/.*"))  # no temporaries left behind

    status = client.predict(api_name="/status")
    assert status["preset"] == "tiny" and status["device"] == "cpu"
    assert {"vram_total", "vram_free", "ram_total", "ram_free"} <= set(status)
    models = {m["name"]: m for m in status["models"]}
    assert set(models) == {"cascade.text_encoder", "cascade.prior", "cascade.decoder", "cascade.vqgan"}
    assert all(m["placement"] == "gpu" and m["bytes"] > 0 and m["last_used"] for m in models.values())

    after = client.predict("cascade.prior", api_name="/unload")
    assert {m["name"]: m["placement"] for m in after["models"]}["cascade.prior"] == "disk"
    assert placements(client)["cascade.decoder"] == "gpu"
    client.predict("all", api_name="/unload")
    assert set(placements(client).values()) == {"disk"}
    with pytest.raises(Exception, match="Unknown model 'nope'; known: all, cascade"):
        client.predict("nope", api_name="/unload")

    again, _ = generate(client, num_images=2, seed=123)  # reloads after unload, same pixels
    assert np.array_equal(pixels(again[0]), pixels(gallery[0]))


def test_seeds_through_the_api(launch_app: Callable[..., str]) -> None:
    client = Client(launch_app(), verbose=False)
    first, _ = generate(client, seed=5)
    same, _ = generate(client, seed=5)
    other, _ = generate(client, seed=6)
    assert np.array_equal(pixels(first[0]), pixels(same[0]))
    assert not np.array_equal(pixels(first[0]), pixels(other[0]))
    _, info = generate(client, seed=-1)
    assert isinstance(info["seed"], int) and 0 <= info["seed"] < 2**32


def test_long_prompt_is_truncated_and_reported(launch_app_once: Client) -> None:
    gallery, info = generate(launch_app_once, prompt="lighthouse " * 2000)  # 22,000 characters
    assert len(gallery) == 1
    notices = " ".join(info["notices"])
    assert "prompt" in notices and "truncated" in notices


def test_tight_budget_evicts_the_prior_for_the_decoder(launch_app: Callable[..., str],
                                                       tight_budget_bytes: int) -> None:
    client = Client(launch_app("--vram-budget", f"{tight_budget_bytes / 2**30:.9f}"), verbose=False)
    gallery, _ = generate(client)
    assert len(gallery) == 1
    status = client.predict(api_name="/status")
    placed = {m["name"]: m["placement"] for m in status["models"]}
    assert placed["cascade.prior"] == "cpu"
    assert status["vram_total"] == pytest.approx(tight_budget_bytes, rel=1e-3)
    resident = sum(m["bytes"] for m in status["models"] if m["placement"] == "gpu")
    assert resident <= tight_budget_bytes
    again, _ = generate(client)  # evicted weights come back from RAM, not from disk
    assert np.array_equal(pixels(again[0]), pixels(gallery[0]))


def test_flags_read_environment_variables() -> None:
    args = app.parse_args([], environ={"STUDIO_PRESET": "tiny", "STUDIO_VRAM_BUDGET": "2.5",
                                       "STUDIO_LISTEN": "1", "STUDIO_TABS": "image"})
    assert (args.preset, args.vram_budget, args.listen, args.host, args.tabs) == ("tiny", 2.5, True, "0.0.0.0", ["image"])
    assert app.parse_args(["--preset", "lite"], environ={"STUDIO_PRESET": "tiny"}).preset == "lite"


@pytest.mark.parametrize(("argv", "message"), [
    (["--tabs", "image,paint"], "--tabs: unknown paint"),
    (["--vram-budget", "-1"], "--vram-budget: must be a positive"),
    (["--auth", "nopassword"], "--auth: expected USER:PASS"),
])
def test_bad_flags_name_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        app.parse_args(argv, environ={})
    assert message in capsys.readouterr().err


def test_listen_never_serves_without_auth_unless_asked() -> None:
    generated = app.resolve_auth(app.parse_args(["--listen"], environ={}))
    assert generated and generated[0][0] == "studio" and len(generated[0][1]) >= 12
    assert app.resolve_auth(app.parse_args(["--listen", "--auth", "me:pw"], environ={})) == [("me", "pw")]
    assert app.resolve_auth(app.parse_args(["--listen", "--no-auth"], environ={})) is None
    assert app.resolve_auth(app.parse_args([], environ={})) is None  # loopback only
    assert app.resolve_auth(app.parse_args(["--host", "192.168.1.5"], environ={}))  # exposed host


def test_importing_app_loads_no_model_and_no_torch() -> None:
    code = "import sys, app; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(app.__file__).parent)
    assert result.stdout.split() == ["False", "False"]


def test_download_only_offline_lists_what_is_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["--download-only", "--preset", "lite", "--offline", "--models-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exited:
        app.main(argv)
    assert exited.value.code == 1
    assert "stabilityai/stable-cascade-prior" in caplog.text
    assert "python app.py --download-only --preset lite" in caplog.text
    with pytest.raises(SystemExit) as exited:
        app.main(["--download-only", "--preset", "tiny", "--models-dir", str(tmp_path)])
    assert exited.value.code == 0  # tiny models are built locally: nothing to fetch


#: DESIGN.md's endpoints and their inputs, in order (orbit's path inputs are its "path for p").
CONTRACT = {
    "/generate_image": ["prompt", "negative_prompt", "width", "height", "prior_steps", "decoder_steps",
                        "prior_guidance", "decoder_guidance", "num_images", "seed"],
    "/image_variation": ["image", "prompt", "negative_prompt", "width", "height", "num_images", "seed"],
    "/img2img": ["image", "prompt", "negative_prompt", "strength", "width", "height", "seed"],
    "/generate_video": ["image", "num_frames", "fps", "motion_bucket_id", "noise_aug_strength", "steps",
                        "decode_chunk_size", "seed"],
    "/orbit": ["image", "variant", "elevation_deg", "steps", "seed", "path", "elevation_end_deg"],
    "/chat": ["message", "history", "system_prompt", "temperature", "top_p", "max_new_tokens"],
    "/status": [],
    "/unload": ["name"],
    "/png_info": ["image"],
    "/generate_image_sd": ["prompt", "negative_prompt", "width", "height", "steps", "guidance", "num_images", "seed",
                           "model"],
    "/img2img_sd": ["image", "prompt", "negative_prompt", "strength", "width", "height", "seed", "model"],
    "/inpaint": ["image", "mask", "prompt", "negative_prompt", "strength", "seed", "model"],
    "/generate_audio": ["prompt", "negative_prompt", "seconds", "steps", "guidance", "seed"],
}


def test_the_api_is_exactly_the_contract(launch_app_once: Client) -> None:
    """No extra public endpoints (UI refreshes are private) and the contract's names, so keywords work."""
    api = launch_app_once.view_api(print_info=False, return_format="dict")
    named = {name: [p["parameter_name"] for p in spec["parameters"]] for name, spec in api["named_endpoints"].items()}
    assert named == CONTRACT
    assert not api["unnamed_endpoints"]
    _, info = launch_app_once.predict(prompt=PROMPT, width=256, height=256, prior_steps=2, decoder_steps=2,
                                      seed=3, api_name="/generate_image")
    assert info["seed"] == 3
