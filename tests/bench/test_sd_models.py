"""``bench.sd_models``: the real SD3.5 Medium and SDXL configs, and how the real-size Studio wires them.

The configs are built on the meta device (no memory) and held to the parameter counts the
families' specs state; nothing here builds a real-size weight.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import sd_models
from bench.common import BenchOptions


def count_m(module: torch.nn.Module, buffers: bool = True) -> float:
    """Millions of parameters (and buffers: the registry's sizes count them)."""
    tensors = [*module.parameters(), *(module.buffers() if buffers else ())]
    return round(sum(t.numel() for t in tensors) / 1e6, 1)


def test_the_real_configs_build_the_published_sizes() -> None:
    from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from backends.sd3.spec import MEDIUM_REPO
    from backends.sd3.spec import SPEC as SD3
    from backends.sdxl.spec import SPEC as SDXL
    from bench.models import TEXT_BIGG

    with torch.device("meta"):
        built = {
            ("sd3", f"{MEDIUM_REPO}/transformer"): SD3Transformer2DModel(**sd_models.SD35_MEDIUM),
            ("sd3", "vae"): AutoencoderKL(**sd_models.SD3_VAE),
            ("sd3", "text_encoder"): CLIPTextModelWithProjection(CLIPTextConfig(**sd_models.CLIP_L_TEXT)),
            ("sd3", "text_encoder_2"): CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_BIGG)),
            ("sd3", "text_encoder_3"): T5EncoderModel(T5Config(**sd_models.T5_XXL)),
            ("sdxl", "unet"): UNet2DConditionModel(**sd_models.SDXL_UNET),
            ("sdxl", "vae"): AutoencoderKL(**sd_models.SDXL_VAE),
            ("sdxl", "text_encoder"): CLIPTextModel(CLIPTextConfig(**sd_models.CLIP_L_TEXT)),
            ("sdxl", "text_encoder_2"): CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_BIGG)),
        }
        refiner = UNet2DConditionModel(**sd_models.SDXL_REFINER_UNET)
    specs = {"sd3": SD3.params_m, "sdxl": SDXL.params_m}
    for (family, key), module in built.items():
        assert count_m(module) == pytest.approx(specs[family][key], abs=0.05), (family, key)
    # Medium's "2.5B" is 2,243.2M parameters and its 384² x 1536 position table; the refiner's
    # 2,259.5M is the count backends/sdxl/spec.py gives.
    medium = built[("sd3", f"{MEDIUM_REPO}/transformer")]
    assert count_m(medium, buffers=False) == pytest.approx(2243.2, abs=0.05)
    assert medium.pos_embed.pos_embed.shape == (1, 384 * 384, 1536)
    assert count_m(refiner) == pytest.approx(2259.5, abs=0.05)
    # The real widths fit together: both CLIPs' states side by side are SDXL's cross-attention and
    # the pooled vectors SD3.5's pooled projection; T5's width is SD3.5's joint attention.
    assert sd_models.CLIP_L_TEXT["hidden_size"] + TEXT_BIGG["hidden_size"] == sd_models.SDXL_UNET["cross_attention_dim"]
    assert sd_models.CLIP_L_TEXT["projection_dim"] + TEXT_BIGG["projection_dim"] == \
        sd_models.SD35_MEDIUM["pooled_projection_dim"]
    assert sd_models.T5_XXL["d_model"] == sd_models.SD35_MEDIUM["joint_attention_dim"]


def test_the_builders_cover_every_component_the_backends_register() -> None:
    from backends.sd3.backend import VAE, transformer_name
    from backends.sd3.text import TEXT_ENCODER, TEXT_ENCODER_2, TEXT_ENCODER_3
    from backends.sdxl import stages

    cpu = torch.device("cpu")
    without = set(sd_models.sd3_builders(cpu, torch.float32, (2, 2), t5=False))
    assert without == {TEXT_ENCODER, TEXT_ENCODER_2, transformer_name("sd3.5-medium"), VAE}
    assert set(sd_models.sd3_builders(cpu, torch.float32, (2, 2), t5=True)) == without | {TEXT_ENCODER_3}
    assert set(sd_models.sdxl_builders(cpu, torch.float32, (2, 2))) == {
        stages.TEXT_ENCODER, stages.TEXT_ENCODER_2, stages.UNET, stages.REFINER_UNET, stages.VAE}


def test_the_real_size_studio_offers_medium_with_t5_off_and_its_real_config(tiny_cache: Path) -> None:
    """Without building a weight: the backends see the real transformer config and the chosen T5."""
    from bench.models import make_studio

    options = BenchOptions(device=torch.device("cpu"), size="real", runs=1, warmup=0, tokens=8, cache_dir=tiny_cache)
    studio = make_studio(options, dtype=torch.float32)
    registry = studio.registry
    assert registry.models() == {"sd3.5-medium": "sd3", "sdxl": "sdxl"}
    assert registry.preset.sd3.dtype == registry.preset.sdxl.dtype == "float32"
    backend = registry.backend("sd3")
    assert backend.t5 == "off" and "sd3.text_encoder_3" not in backend.component_names()
    assert backend._t5_width("sd3.5-medium") == 4096  # zeros of T5's real width, read from the folder
    assert make_studio(options, dtype=torch.float32, sd3_t5="device").registry.backend("sd3").t5 == "device"
    with pytest.raises(ValueError, match="sd3_t5 must be off or device"):
        make_studio(options, sd3_t5="cpu")
    for status in studio.manager.statuses():
        assert status.placement == "disk", status  # nothing was built
