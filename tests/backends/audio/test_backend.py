"""Stable Audio Open backend on tiny models: lengths, seeds, Stop, info, loading, the registry and the download plan."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backends.audio.backend import DENOISE, PROJECTION, TRANSFORMER, VAE, AudioBackend
from backends.audio.requests import MAX_SECONDS, AudioRequest
from backends.audio.spec import REPO, SPEC
from backends.audio.text import TEXT_ENCODER
from backends.runtime.errors import Cancelled, InputError, UnknownNameError
from backends.runtime.loading import LoadContext
from backends.runtime.memory import MemoryManager
from backends.runtime.probe import GB, FakeProbe
from backends.runtime.progress import no_progress
from tests.backends.audio.common import job, recorder, tiny_settings

#: Samples per latent frame of the tiny VAE (64 x 128); the released one has 2048.
HOP = 8192


def test_init_registers_the_components_and_loads_nothing(audio_ctx: LoadContext) -> None:
    manager = MemoryManager(FakeProbe(device_total=16 * GB), device="cpu")
    backend = AudioBackend(tiny_settings(), manager, audio_ctx)
    names = ["audio.text_encoder", "audio.projection_model", "audio.transformer", "audio.vae"]
    assert backend.component_names() == names == [TEXT_ENCODER, PROJECTION, TRANSFORMER, VAE]
    assert {s.name: s.placement for s in manager.statuses()} == {name: "disk" for name in names}
    assert [f"audio.{key}" for key in SPEC.components] == names  # the registry's size hints find them
    backend.run("text_to_audio", job(steps=2), no_progress)
    assert {s.name: s.placement for s in manager.statuses()} == {name: "gpu" for name in names}
    assert all(manager.component(name).loads == 1 for name in names)
    assert all(status.bytes > 0 for status in manager.statuses())
    with manager.use(VAE) as vae:  # loaded with its weight norm folded into plain weights
        assert not any(hasattr(sub, "weight_g") for sub in vae.modules())
        assert isinstance(vae.decoder.conv2.weight, torch.nn.Parameter)


def test_each_clip_has_the_requested_length_in_stereo_at_44_1_khz(backend: AudioBackend) -> None:
    for seconds in (0.01, 2.0 / 3.0, MAX_SECONDS):
        result = backend.run("text_to_audio", job(seconds=seconds, steps=1), no_progress)
        channels, samples = result.audio.shape
        assert (channels, result.sample_rate, result.audio.dtype) == (2, 44100, np.float32)
        assert samples == round(seconds * 44100) and abs(samples - seconds * 44100) < HOP
        assert float(np.abs(result.audio).max()) <= 1.0 and float(result.audio.std()) > 0.01  # noise, not silence
        assert (result.info["samples"], result.info["channels"], result.info["sample_rate"]) == (samples, 2, 44100)
    assert result.info["max_seconds"] == pytest.approx(256 * HOP / 44100, abs=1e-3)  # 47.55 s, as the real model


def test_a_clip_beyond_the_model_s_window_is_refused(backend: AudioBackend) -> None:
    too_long = dataclasses.replace(job(), seconds=48.0)  # past the request's own check, as a script could
    with pytest.raises(InputError, match=r"seconds: must be at most 47\.55\d* for this model"):
        backend.run("text_to_audio", too_long, no_progress)


def test_the_same_seed_gives_the_same_samples_and_another_seed_others(backend: AudioBackend) -> None:
    first = backend.run("text_to_audio", job(seed=5), no_progress)
    again = backend.run("text_to_audio", job(seed=5), no_progress)
    other = backend.run("text_to_audio", job(seed=6), no_progress)
    assert np.array_equal(first.audio, again.audio) and torch.equal(first.latents, again.latents)
    assert not np.array_equal(first.audio, other.audio)
    assert float(np.abs(first.audio - other.audio).mean()) > 0.01
    prompt = backend.run("text_to_audio", job(seed=5, prompt="piano loop"), no_progress)
    assert not torch.equal(first.latents, prompt.latents)  # the prompt conditions the clip


def test_a_random_seed_is_reported_and_makes_the_clip_again(backend: AudioBackend) -> None:
    request = AudioRequest.build("rain", "", 0.5, 2, 7.0, -1)
    result = backend.run("text_to_audio", request, no_progress)
    assert result.info["seed"] == request.seed and 0 <= request.seed < 2**32
    again = backend.run("text_to_audio", dataclasses.replace(request, seed=result.info["seed"]), no_progress)
    assert np.array_equal(result.audio, again.audio)


def test_every_step_is_reported_and_stop_ends_the_job(backend: AudioBackend) -> None:
    reports, progress = recorder()
    backend.run("text_to_audio", job(steps=3), progress)
    assert reports == [(DENOISE, step, 3) for step in (1, 2, 3)]

    def stop_at_two(stage: str, step: int, total: int) -> None:
        if step == 2:
            raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        backend.run("text_to_audio", job(steps=3), stop_at_two)
    assert all(backend.manager.component(name).in_use == 0 for name in backend.component_names())
    backend.run("text_to_audio", job(steps=1), no_progress)  # and the next job runs


def test_info_carries_what_the_tab_saves(backend: AudioBackend) -> None:
    request = job(truncated=("prompt",), prompt=" ".join(["drum loop"] * 80))
    info = backend.run("text_to_audio", request, no_progress).info
    assert {"backend", "task", "prompt", "negative_prompt", "seconds", "steps", "guidance", "seed", "guided", "dtype",
            "device", "sample_rate", "channels", "samples", "text_encoder", "projection_model", "transformer", "vae",
            "latent_shape", "timings", "notices"} <= set(info)
    assert (info["backend"], info["task"], info["seed"], info["seconds"], info["steps"]) == (
        "audio", "text_to_audio", 7, 1.5, 4)
    assert (info["transformer"], info["vae"], info["device"]) == ("tiny:audio/transformer", "tiny:audio/vae", "cpu")
    assert set(info["timings"]) == {"text_encoder", "transformer", "vae_decode", "total"}
    assert info["notices"][0] == "prompt cut to 4000 characters"
    assert info["notices"][1].startswith("prompt truncated to 128 T5 tokens (")
    assert info["latent_shape"] == [1, 8, 256]
    json.dumps(info)  # JSON-able as it is


def test_wrong_task_or_request_fails_loudly(backend: AudioBackend) -> None:
    with pytest.raises(UnknownNameError, match="text_to_audio"):
        backend.run("text_to_image", job(), no_progress)
    with pytest.raises(TypeError, match="text_to_audio needs AudioRequest"):
        backend.run("text_to_audio", {"prompt": "rain"}, no_progress)  # type: ignore[arg-type]


def test_the_registry_serves_the_tiny_preset(tiny_cache: Path, tmp_path: Path) -> None:
    """The app's path: Studio -> registry -> AudioBackend from the spec's factory, under the manager."""
    from backends.families import FAMILIES
    from backends.runtime.studio import Studio, StudioConfig

    studio = Studio(StudioConfig(preset="tiny", cache_dir=tiny_cache, outputs_dir=tmp_path / "out", offline=True),
                    FAMILIES)
    assert studio.registry.spec_for_task("text_to_audio").name == "audio"
    defaults = studio.registry.settings("audio").defaults
    assert (defaults.steps, defaults.guidance, defaults.seconds, defaults.negative_prompt) == (
        4, 7.0, 10.0, "Low quality.")
    reports, progress = recorder()
    request = AudioRequest.build("a bell", defaults.negative_prompt, defaults.seconds, defaults.steps,
                                 defaults.guidance, 3)
    result = studio.registry.run("text_to_audio", request, progress)
    assert len(reports) == 4 and result.audio.shape == (2, 441000)
    placed = {s.name: s.placement for s in studio.manager.statuses() if s.name.startswith("audio.")}
    assert placed == {name: "gpu" for name in (TEXT_ENCODER, PROJECTION, TRANSFORMER, VAE)}


#: The released repo's files (its file list on the hub): the diffusers folders and, at the root, the
#: same weights again for stable-audio-tools.
REPO_FILES = [
    "model.safetensors", "model.ckpt", "model_config.json", "model_index.json", "README.md", "LICENSE.md",
    "stable_audio_light.png", "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/special_tokens_map.json", "tokenizer/spiece.model", "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json", "projection_model/config.json",
    "projection_model/diffusion_pytorch_model.safetensors", "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
]


def test_the_download_plan_takes_the_diffusers_folders_and_never_the_root_checkpoints() -> None:
    from huggingface_hub.utils import filter_repo_objects

    from backends.families import load_preset
    from backends.runtime import downloads

    for name in ("lite", "bf16", "full", "cpu"):
        plans = downloads.plan(load_preset(name).settings, sections=["audio"])
        assert [(p.repo, p.revision) for p in plans] == [(REPO, "main")]
        chosen = sorted(filter_repo_objects(REPO_FILES, allow_patterns=list(plans[0].allow_patterns)))
        assert chosen == sorted(f for f in REPO_FILES if "/" in f), name
        assert not any(pattern.endswith((".ckpt", ".bin", ".pt", ".pth")) for pattern in plans[0].allow_patterns)
        weights = [need.what for need in plans[0].needs if "weights" in need.what]
        assert weights == [f"audio.{key} weights (no variant) in {key}/" for key in SPEC.components]
    assert downloads.plan(load_preset("tiny").settings, sections=["audio"]) == []  # built locally
