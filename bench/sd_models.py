"""Real-size SD3.5 Medium and SDXL with random weights: their configs and the manager builders.

The configs are the released ``config.json`` files of the diffusers folders (sources in
``docs/real_configs.md``); ``tests/bench/test_sd_models.py`` holds each to the parameter count
its family's spec states (``params_m``), built on the meta device. ``bench.models.make_studio``
registers these builders with the memory manager before the backends are built, as it does the
other families', so the SD backends run them through their normal path.

Two things the backends read from a source rather than from the loaded module, and which the
real-size run therefore points at real configs:

- SD3.5's transformer config (``joint_attention_dim``, the width of T5's zeros when T5 is off) is
  read from ``sd3.transformer_medium``'s folder, so that source becomes a folder holding only the
  real ``config.json`` (``sd3_config_folder``), as StableLM's does (``bench.models``);
- T5-XXL (4.76B parameters, 19 GB in float32) is built only when the run asks for T5 on the
  device (``t5=True``, a GPU's ``never_oom``); every other real-size run turns T5 off. T5 on the
  CPU is loaded by the backend itself, not by the manager, so a bench cannot substitute it.

SDXL's weightless VAE (``SdxlBackend.parts``) keeps the tiny preset's config: the fields the
pipelines read from it (four levels, 4 latent channels, scaling factor 0.13025, ``force_upcast``)
are the real VAE's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch

from bench.models import TEXT_BIGG, built

logger = logging.getLogger(__name__)

#: The SD models the image scenarios compare with the stock pipelines, and the real sizes build.
SD_MODELS = ("sd3.5-medium", "sdxl")

#: CLIP ViT-L/14 text tower (SDXL's ``text_encoder``, without projection; SD3.5's, with one).
CLIP_L_TEXT: dict[str, Any] = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768,
                                   num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                   hidden_act="quick_gelu")
#: stabilityai/stable-diffusion-xl-base-1.0 ``unet/config.json`` (the keys that differ from
#: ``UNet2DConditionModel``'s defaults): 2,567.5M parameters.
SDXL_UNET: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    cross_attention_dim=2048, addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
#: stabilityai/stable-diffusion-xl-refiner-1.0 ``unet/config.json``: attention on the middle two
#: of four levels, bigG's width as cross-attention, five time ids; 2,259.5M parameters.
SDXL_REFINER_UNET: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=(384, 768, 1536, 1536), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=4, attention_head_dim=(6, 12, 24, 24), use_linear_projection=True,
    cross_attention_dim=1280, addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2560)
#: SDXL's ``vae/config.json``: the SD KL autoencoder, 8x down, 4 latent channels; 83.7M parameters.
SDXL_VAE: dict[str, Any] = dict(
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=1024,
    scaling_factor=0.13025, force_upcast=True)
#: stabilityai/stable-diffusion-3.5-medium ``transformer/config.json`` (MMDiT-X): 2,243.2M
#: parameters and a 226.5M-element position-embedding buffer (384² x 1536), 2,469.7M together.
SD35_MEDIUM: dict[str, Any] = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
#: SD3.5's 16-channel ``vae/config.json`` (no quant convs, scaling and shift factors); 83.8M parameters.
SD3_VAE: dict[str, Any] = dict(
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16, sample_size=1024,
    scaling_factor=1.5305, shift_factor=0.0609, force_upcast=True, use_quant_conv=False, use_post_quant_conv=False)
#: T5-XXL v1.1 encoder (SD3.5's ``text_encoder_3/config.json``): 4,762.3M parameters.
T5_XXL: dict[str, Any] = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def sd3_config_folder(cache_dir: Path) -> Path:
    """A folder holding SD3.5 Medium's transformer ``config.json`` and no weights (see the docstring).

    Written once from the meta-device model, so the file is exactly what diffusers saves.
    """
    from diffusers import SD3Transformer2DModel

    folder = Path(cache_dir) / "bench-real" / "sd3.5-medium-transformer"
    if not (folder / "config.json").is_file():
        with torch.device("meta"):
            SD3Transformer2DModel(**SD35_MEDIUM).save_config(folder)
    return folder


def sd3_builders(device: torch.device, dtype: torch.dtype, eos_token_ids: tuple[int, int],
                 t5: bool) -> dict[str, Callable[[], torch.nn.Module]]:
    """Manager name -> builder of real-size SD3.5 Medium (T5-XXL only with ``t5``).

    Args:
        eos_token_ids: the (tiny) CLIP tokenizers' eos ids; pooling picks the first eos token,
            so each text config must name its tokenizer's (NOTES.md).
    """
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from backends.sd3.backend import VAE, transformer_name
    from backends.sd3.text import TEXT_ENCODER, TEXT_ENCODER_2, TEXT_ENCODER_3

    clip_l = CLIPTextConfig(**CLIP_L_TEXT, eos_token_id=eos_token_ids[0])
    clip_g = CLIPTextConfig(**TEXT_BIGG, eos_token_id=eos_token_ids[1])
    builders: dict[str, Callable[[], torch.nn.Module]] = {
        TEXT_ENCODER: lambda: built(lambda: CLIPTextModelWithProjection(clip_l), device, dtype),
        TEXT_ENCODER_2: lambda: built(lambda: CLIPTextModelWithProjection(clip_g), device, dtype),
        transformer_name("sd3.5-medium"): lambda: built(lambda: SD3Transformer2DModel(**SD35_MEDIUM), device, dtype),
        VAE: lambda: built(lambda: AutoencoderKL(**SD3_VAE), device, dtype),
    }
    if t5:
        builders[TEXT_ENCODER_3] = lambda: built(lambda: T5EncoderModel(T5Config(**T5_XXL)), device, dtype)
    return builders


def sdxl_builders(device: torch.device, dtype: torch.dtype,
                  eos_token_ids: tuple[int, int]) -> dict[str, Callable[[], torch.nn.Module]]:
    """Manager name -> builder of real-size SDXL base and refiner (the refiner builds only if used)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from backends.sdxl.stages import REFINER_UNET, TEXT_ENCODER, TEXT_ENCODER_2, UNET, VAE

    clip_l = CLIPTextConfig(**CLIP_L_TEXT, eos_token_id=eos_token_ids[0])
    clip_g = CLIPTextConfig(**TEXT_BIGG, eos_token_id=eos_token_ids[1])
    return {
        TEXT_ENCODER: lambda: built(lambda: CLIPTextModel(clip_l), device, dtype),
        TEXT_ENCODER_2: lambda: built(lambda: CLIPTextModelWithProjection(clip_g), device, dtype),
        UNET: lambda: built(lambda: UNet2DConditionModel(**SDXL_UNET), device, dtype),
        REFINER_UNET: lambda: built(lambda: UNet2DConditionModel(**SDXL_REFINER_UNET), device, dtype),
        VAE: lambda: built(lambda: AutoencoderKL(**SDXL_VAE), device, dtype),
    }
