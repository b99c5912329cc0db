"""``python -m bench``: the chat scenario's CPU tiny mode gives sane JSON (shape, not speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.__main__ import main, parse_args


def test_chat_scenario_on_cpu_tiny_writes_json_and_prints_the_ratio(
        tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    threads = torch.get_num_threads()
    main(["--device", "cpu", "--size", "tiny", "--scenarios", "chat", "--runs", "2", "--warmup", "1",
          "--tokens", "16", "--cache-dir", str(tiny_cache), "--out", str(out)])
    assert torch.get_num_threads() == threads  # the tiny CPU run uses 1 thread, then restores
    printed = capsys.readouterr().out
    assert "ratio ours/stock:" in printed and "stock generate()" in printed
    results = json.loads(out.read_text())
    assert results["meta"]["device"] == "cpu" and results["meta"]["size"] == "tiny"
    chat = results["scenarios"]["chat"]
    assert chat["new_tokens"] == 16 and chat["prompt_tokens"] > 10 and chat["runs"] == 2
    assert chat["model"]["architecture"] == "stablelm" and chat["model"]["parameters"] > 0
    for variant in ("ours", "ours_hf", "stock"):
        figures = chat[variant]
        assert figures["tokens"] == 16
        assert 0 < figures["first_token_s"] and 0 < figures["total_s"] < 60
        assert figures["tokens_per_s"] == pytest.approx(16 / figures["total_s"])
        assert figures["peak_memory_bytes"] is None  # CPU: only the process peak is known
    assert chat["ratio"] == pytest.approx(chat["ours"]["tokens_per_s"] / chat["stock"]["tokens_per_s"])
    assert chat["same_tokens"] is True
    assert chat["process_peak_rss_bytes"] > 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--scenarios", "chat,paint"], "--scenarios: unknown paint"),
    (["--tokens", "0"], "--tokens: must be at least 1"),
])
def test_bad_flags_name_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu", *argv])
    assert message in capsys.readouterr().err


def test_real_size_gpu_scenarios_need_a_gpu(tiny_cache: Path) -> None:
    """On the CPU, --size real runs the real_sizes scenario only (issue #15); the GPU scenarios
    (stock ratios, chat, compile at real size) are still refused before anything is built."""
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--size", "real", "--scenarios", "chat", "--cache-dir", str(tiny_cache)])


def test_real_model_builder_makes_the_stablelm_2_architecture() -> None:
    """The GPU run builds the 1.6B shape; here the same builder, shrunk, runs our fused path."""
    from backends.stablelm.decode import FusedStableLmStepper, make_stepper
    from backends.stablelm.tiny import build_tokenizer
    from bench.chat import REAL_CONFIG, build_real_model, ours, stock

    assert REAL_CONFIG["partial_rotary_factor"] == 0.25 and REAL_CONFIG["use_qkv_bias"] is True
    torch.manual_seed(0)
    model = build_real_model(torch.device("cpu"), torch.float32, vocab_size=512, hidden_size=64,
                             intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=4)
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    with torch.inference_mode():
        assert isinstance(make_stepper(model, 32), FusedStableLmStepper)
    ids = list(range(3, 20))
    tokens, first = ours(model, build_tokenizer(), ids, 12, True, torch.device("cpu"))
    assert tokens == stock(model, ids, 12, torch.device("cpu")) and first > 0


def test_every_scenario_runs_quick_on_cpu_tiny_and_gives_sane_json(
        tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The top-level CPU run: every scenario is in the JSON, GPU-only ones say why they skipped."""
    from bench import SCENARIOS

    out = tmp_path / "all.json"
    main(["--device", "cpu", "--size", "tiny", "--quick", "--compile", "--cache-dir", str(tiny_cache),
          "--out", str(out)])
    printed = capsys.readouterr().out
    scenarios = json.loads(out.read_text())["scenarios"]
    assert set(scenarios) == set(SCENARIOS)
    assert "image_resident:" in printed and "switching:" in printed

    (resident,) = scenarios["image_resident"]["variants"]
    assert resident["same_latents"] is True  # ours and stock ran the same modules and seeds
    assert 0 < resident["ours"]["median_s"] < 60 and 0 < resident["stock"]["median_s"] < 60
    assert resident["ratio"] == pytest.approx(resident["ours"]["median_s"] / resident["stock"]["median_s"])
    assert resident["ours"]["peak_memory_bytes"] is None and "memory_note" in scenarios["image_resident"]

    # SD3.5 Medium and SDXL against StableDiffusion3Pipeline / StableDiffusionXLPipeline on the same
    # tiny modules: the tiny preset's defaults of each model, and the very same pictures.
    sd_rows = {row["variant"]: row for row in scenarios["image_resident"]["sd_models"]}
    assert set(sd_rows) == {"sd3.5-medium", "sdxl"}
    for model, (family, steps, denoiser, parts) in {
            "sd3.5-medium": ("sd3", 4, "medium.transformer", {"text_encoder", "text_encoder_2", "text_encoder_3",
                                                              "vae"}),
            "sdxl": ("sdxl", 3, "unet", {"text_encoder", "text_encoder_2", "vae"})}.items():
        row = sd_rows[model]
        assert (row["family"], row["task"]) == (family, f"{family}_text_to_image")
        assert row["same_latents"] is True and row["same_images"] is True, model
        assert 0 < row["ours"]["median_s"] < 60 and 0 < row["stock"]["median_s"] < 60
        assert row["ratio"] == pytest.approx(row["ours"]["median_s"] / row["stock"]["median_s"]) and row["ratio"] > 0
        assert row["request"]["width"] == row["request"]["height"] == 256 and row["request"]["steps"] == steps
        assert row["dtype"] == "float32" and row["ours"]["peak_memory_bytes"] is None
        # Millions, to one decimal as for Cascade: the tiny text encoders round to 0.0, the denoiser does not.
        assert set(row["parameters_m"]) == parts | {denoiser} and row["parameters_m"][denoiser] > 0

    offload = scenarios["image_offload"]
    (budget,) = offload["budgets"]
    assert budget["evicted"], "the computed CPU budget must force eviction"
    assert budget["ratio_to_resident"] > 0 and budget["ratio_to_stock_offload"] is None
    assert offload["stock_offload"] is None and "accelerator" in offload["stock_offload_note"]
    sd_offload = {entry["variant"]: entry for entry in offload["sd_models"]}
    assert set(sd_offload) == {"sd3.5-medium", "sdxl"}
    for model, entry in sd_offload.items():
        (budget,) = entry["budgets"]
        # The budget fits the largest stage, the VAE decode, alone: the decode evicts everything else.
        family = entry["family"]
        loaded = {name for name, place in budget["placements"].items() if place != "disk"}
        assert set(budget["evicted"]) == loaded - {f"{family}.vae"} and budget["evicted"], model
        assert budget["placements"][f"{family}.vae"] == "gpu"
        assert budget["ratio_to_resident"] > 0 and budget["ratio_to_stock_offload"] is None
        assert entry["ours_resident"]["median_s"] > 0 and entry["stock_offload"] is None
        assert "accelerator" in entry["stock_offload_note"]

    switching = scenarios["switching"]
    assert switching["prior_evicted_by_video"] is True
    assert switching["no_reload"] is True and switching["reloaded_from_disk"] == []
    assert 0 < switching["restore_prior_s"] < 10
    assert switching["budget_bytes"] < sum(switching["component_bytes"].values())

    assert scenarios["chat"]["same_tokens"] is True and scenarios["chat"]["new_tokens"] == 16
    assert "needs CUDA" in scenarios["never_oom"]["skipped"]
    assert scenarios["compile"]["skipped"]


def test_vram_budget_flag_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--device", "cpu", "--vram-budget", "8,12"]).vram_budget == (8.0, 12.0)
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu", "--vram-budget", "eight"])
    assert "--vram-budget: expected" in capsys.readouterr().err


def test_real_cascade_configs_build_the_published_sizes() -> None:
    """The GPU mode's configs (NOTES.md) give the anchor's parameter counts; built on the meta
    device, so no memory is used."""
    from diffusers import StableCascadeUNet

    from bench.models import DECODER_FULL, DECODER_LITE, PRIOR_FULL, PRIOR_LITE

    expected = {"prior": (PRIOR_FULL, 3589.1), "prior_lite": (PRIOR_LITE, 1030.8),
                "decoder": (DECODER_FULL, 1562.9), "decoder_lite": (DECODER_LITE, 699.5)}
    for name, (config, millions) in expected.items():
        with torch.device("meta"):
            unet = StableCascadeUNet(**config)
        assert sum(p.numel() for p in unet.parameters()) / 1e6 == pytest.approx(millions, abs=0.2), name


#: Each shipped preset's default SD model, and its (steps, guidance, size) there: lite (and cpu,
#: based on it) name SDXL in ``sd_model``, bf16 and full name SD3.5 Medium and Large, and tiny
#: names none, so the first model offered (SD3.5 Large) is its default.
SD_DEFAULTS = {"lite": ("sdxl", 30, 5.0, 1024), "cpu": ("sdxl", 30, 5.0, 1024),
               "bf16": ("sd3.5-medium", 40, 4.5, 1024), "full": ("sd3.5-large", 28, 3.5, 1024),
               "tiny": ("sd3.5-large", 3, 3.5, 256)}


@pytest.mark.parametrize("name", ["lite", "bf16", "full", "cpu", "tiny"])
def test_never_oom_builds_every_tabs_default_request_from_each_preset(name: str, tmp_path: Path) -> None:
    from backends.families import FAMILIES, load_context, load_preset
    from backends.runtime.memory import MemoryManager
    from backends.runtime.probe import GB, FakeProbe
    from backends.runtime.registry import Registry
    from bench.never_oom import default_requests

    preset = load_preset(name).settings
    requests = default_requests(preset)
    # The SD tab's default is what the app's own registry says an empty ``model`` means.
    registry = Registry(preset, MemoryManager(FakeProbe(device_total=16 * GB), "cpu"),
                        load_context(tmp_path, offline=True), FAMILIES, name)
    model, steps, guidance, size = SD_DEFAULTS[name]
    assert registry.default_model() == model
    assert {tab: task for tab, (task, _, _) in requests.items()} == {
        "image": "text_to_image", "sd": registry.model_task(model, "text_to_image"), "video": "image_to_video",
        "orbit": "orbit", "chat": "chat"}
    orbit = requests["orbit"][1]
    assert orbit.image.size == (preset.sv3d.defaults.size,) * 2
    sd = requests["sd"][1]
    assert (sd.model, sd.steps, sd.guidance, sd.width, sd.height) == (model, steps, guidance, size, size)
    assert sd.num_images == 1 and sd.options == {}  # the family options come from the preset, as the API's
