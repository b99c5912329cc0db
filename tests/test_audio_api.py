"""``/generate_audio`` from outside: the real app in-process (tiny preset), driven through gradio_client.

The file that comes back is 44.1 kHz stereo FLAC of the asked length (within one VAE frame: the
tiny Oobleck VAE, like the real one, makes audio in whole frames of its hop length), saved under
``outputs/<date>/`` with its waveform and a JSON beside it; the same seed gives the same samples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import soundfile
from gradio_client import Client

from tests.serving import serve_tiny


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path, Any]]:
    outputs = tmp_path_factory.mktemp("audio-outputs")
    with serve_tiny(models_dir, outputs, "--tabs", "audio,system") as (studio, url):
        yield Client(url, verbose=False), outputs, studio


def generate(client: Client, **overrides: Any) -> tuple[str, dict[str, Any]]:
    values = dict(prompt="rain on a tin roof", negative_prompt="Low quality.", seconds=2.0, steps=3, guidance=7.0,
                  seed=5)
    values.update(overrides)
    return client.predict(*values.values(), api_name="/generate_audio")


def hop_length(studio: Any) -> int:
    """Samples per latent frame of the tiny VAE (its downsampling ratios multiplied)."""
    from backends.runtime.loading import resolve_repo

    settings = studio.registry.settings("audio")
    folder = Path(resolve_repo(settings.vae, studio.ctx)) / (settings.vae.subfolder or "")
    return math.prod(json.loads((folder / "config.json").read_text())["downsampling_ratios"])


def test_the_endpoint_takes_exactly_the_contract_inputs(served: tuple[Client, Path, Any]) -> None:
    client, _, _ = served
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate_audio"]
    assert [p["parameter_name"] for p in api["parameters"]] == ["prompt", "negative_prompt", "seconds", "steps",
                                                                "guidance", "seed"]


def test_a_flac_of_the_asked_length_at_44_1_khz_stereo_saved_with_its_json(served: tuple[Client, Path, Any]) -> None:
    client, outputs, studio = served
    path, info = generate(client, seconds=2.5)
    data, rate = soundfile.read(path, always_2d=True)
    assert Path(path).suffix == ".flac" and rate == 44_100 and data.shape[1] == 2
    assert abs(data.shape[0] - round(2.5 * 44_100)) <= hop_length(studio), data.shape
    assert info["seed"] == 5 and info["preset"] == "tiny"
    saved = Path(info["files"]["audio"])
    assert saved.parent.parent == outputs and saved.with_suffix(".json").is_file()
    assert saved.with_suffix(".webp").is_file()  # the waveform picture
    assert json.loads(saved.with_suffix(".json").read_text())["seed"] == 5
    assert not list(outputs.rglob(".*.tmp"))  # written atomically, nothing left half-done


def test_the_same_seed_gives_the_same_samples_and_another_seed_others(served: tuple[Client, Path, Any]) -> None:
    client, _, _ = served
    first, _ = generate(client, seed=11)
    again, _ = generate(client, seed=11)
    other, _ = generate(client, seed=12)
    a, b, c = (soundfile.read(p, always_2d=True)[0] for p in (first, again, other))
    assert np.array_equal(a, b)
    assert a.shape == c.shape and not np.array_equal(a, c)


def test_a_random_seed_is_reported_and_reproduces(served: tuple[Client, Path, Any]) -> None:
    client, _, _ = served
    path, info = generate(client, seed=-1)
    assert 0 <= info["seed"] <= 2**32 - 1
    again, _ = generate(client, seed=info["seed"])
    assert np.array_equal(soundfile.read(path)[0], soundfile.read(again)[0])
