"""``bench.audio``: ours against the stock ``StableAudioPipeline`` on the tiny models, and the real configs.

The real-size configs are built on the meta device (no memory) and held to the parameter counts
``backends/audio/spec.py`` states; the real-size Studio is checked without building a weight.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import audio
from bench.__main__ import main, parse_args
from bench.common import BenchOptions


def count_m(module: torch.nn.Module) -> float:
    """Millions of parameters and buffers (the spec's ``params_m`` counts both)."""
    return round(sum(t.numel() for t in [*module.parameters(), *module.buffers()]) / 1e6, 1)


def test_audio_scenario_on_cpu_tiny_matches_the_stock_pipeline_and_gives_a_ratio(
        tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "audio.json"
    main(["--device", "cpu", "--size", "tiny", "--scenarios", "audio", "--quick", "--cache-dir", str(tiny_cache),
          "--out", str(out)])
    printed = capsys.readouterr().out
    assert "audio: text-to-audio, all resident" in printed and "stable audio open (tiny, float32)" in printed
    result = json.loads(out.read_text())["scenarios"]["audio"]
    assert (result["scenario"], result["task"], result["size"], result["dtype"]) == (
        "audio", "text_to_audio", "tiny", "float32")
    # A 2 s clip at the tiny preset's 4 steps, guided, with the model card's negative prompt.
    assert result["request"] == {"seconds": 2.0, "steps": 4, "guidance": 7.0, "negative_prompt": "Low quality.",
                                 "seed": 7}
    # The same modules and seed: the stock pipeline's very latents and samples.
    assert result["same_latents"] is True and result["same_samples"] is True and result["finite_latents"] is True
    assert result["latent_shape"] == [1, 8, 256] and result["samples"] == 88200 and result["sample_rate"] == 44100
    for variant in ("ours", "stock"):
        figures = result[variant]
        assert 0 < figures["median_s"] < 60 and len(figures["runs_s"]) == 1  # --quick: one timed run
        assert figures["peak_memory_bytes"] is None  # CPU: only the process peak is known
    assert result["ratio"] == pytest.approx(result["ours"]["median_s"] / result["stock"]["median_s"])
    assert result["ratio"] > 0 and result["goal_ratio_max"] == 1.02
    assert set(result["parameters_m"]) == {"text_encoder", "projection_model", "transformer", "vae"}
    assert result["build_s"] >= 0 and result["process_peak_rss_bytes"] > 0 and "memory_note" in result


def test_the_real_configs_build_the_published_sizes() -> None:
    from diffusers import AutoencoderOobleck, StableAudioDiTModel, StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel

    from backends.audio.spec import SPEC

    with torch.device("meta"):
        built = {"transformer": StableAudioDiTModel(**audio.DIT), "vae": AutoencoderOobleck(**audio.OOBLECK_VAE),
                 "text_encoder": T5EncoderModel(T5Config(**audio.T5_BASE)),
                 "projection_model": StableAudioProjectionModel(**audio.PROJECTION_MODEL)}
    assert set(built) == set(SPEC.params_m)
    for key, module in built.items():
        assert count_m(module) == pytest.approx(SPEC.params_m[key], abs=0.05), key
    # The real widths fit together: T5's states are projected to the DiT's cross-attention input,
    # the start and end seconds side by side are its global input, and its channels the VAE's latents.
    assert audio.T5_BASE["d_model"] == audio.PROJECTION_MODEL["text_encoder_dim"]
    assert audio.PROJECTION_MODEL["conditioning_dim"] == audio.DIT["cross_attention_input_dim"]
    assert 2 * audio.PROJECTION_MODEL["conditioning_dim"] == audio.DIT["global_states_input_dim"]
    assert audio.DIT["in_channels"] == audio.OOBLECK_VAE["decoder_input_channels"]
    assert built["vae"].hop_length == 2048


def test_the_real_size_studio_reads_the_real_window_and_builds_nothing(tiny_cache: Path) -> None:
    options = BenchOptions(device=torch.device("cpu"), size="real", runs=1, warmup=0, tokens=8, cache_dir=tiny_cache)
    studio = audio.audio_studio(options, torch.float32)
    backend = studio.registry.backend("audio")
    assert backend.dtype == torch.float32
    parts = backend.parts()  # read from the folder of real configs, not the tiny model's
    assert (parts.window, parts.hop_length, parts.sample_rate) == (1024, 2048, 44100)
    assert parts.max_seconds == pytest.approx(47.55, abs=0.01)
    request = audio.audio_request(options, studio.registry)
    assert (request.seconds, request.steps, request.guidance, request.negative_prompt) == (
        1.0, 1, 7.0, "Low quality.")
    for status in studio.manager.statuses():
        assert status.placement == "disk", status  # nothing was built


def test_cpu_real_size_runs_audio_when_named_and_refuses_the_gpu_scenarios(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--device", "cpu", "--size", "real", "--scenarios", "audio"]).scenarios == ["audio"]
    assert parse_args(["--device", "cpu", "--size", "real"]).scenarios == ["real_sizes"]
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu", "--size", "real", "--scenarios", "audio,chat"])
    assert "chat need --device cuda" in capsys.readouterr().err
