"""Tiny random-weight SV3D_u and SV3D_p, written as single *sgm-format* files like the released ones.

``backends.runtime.tiny`` calls ``build(root)`` once per cache (family ``sv3d``). It writes
``sv3d_u.safetensors`` and ``sv3d_p.safetensors`` with the four key groups of the real files
(``model.diffusion_model.*``, ``first_stage_model.decoder.*``, ``conditioner.embedders.1.encoder.*``,
``conditioner.embedders.0.open_clip.model.*``, text-tower leftovers included) at tiny widths, so
the tiny preset runs the checkpoint converter exactly as real users do.

The modules keep the real structure (four UNet levels with two resnets each and attention on the
first three, a four-level KL VAE, a ViT with 80-channel heads), so the UNet and VAE key *names* are
the real ones; a test checks them against the manifests.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: CLIP projection width = the UNet's cross-attention width (1024 in the real models).
EMBED_WIDTH = 32
#: Width of OpenCLIP's leftover text-tower tensors in the tiny file (1024 in the real one).
TEXT_WIDTH = 32
#: Vector widths fixed by the conditioning layout: u = cond_aug 256; p = 256 + 512 + 512.
ADM = {"u": 256, "p": 1280}


def _unet(adm: int, seed: int) -> Any:
    from diffusers import UNetSpatioTemporalConditionModel

    from backends.runtime.tiny import seeded, wake_zero_parameters

    with seeded(seed):
        unet = UNetSpatioTemporalConditionModel(
            in_channels=8, out_channels=4, block_out_channels=(32, 64, 128, 128), layers_per_block=2,
            num_attention_heads=(1, 1, 2, 2), cross_attention_dim=EMBED_WIDTH, addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=adm, num_frames=21,
        )
        # Mixers start as exact blends and output convs at zero; random values make every
        # conditioning input (camera vector, image embedding, concat latent) change the result.
        wake_zero_parameters(unet)
    return unet


def _vae(seed: int) -> Any:
    from diffusers import AutoencoderKL

    from backends.runtime.tiny import seeded, wake_zero_parameters

    with seeded(seed):
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(32, 64, 128, 128), layers_per_block=2, latent_channels=4)
        wake_zero_parameters(vae)
    return vae


def _clip(seed: int) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from backends.runtime.tiny import seeded

    with seeded(seed):
        # 160 wide: two heads of 80 channels, the rule the converter reads heads by (ViT-H/14).
        return CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=160, intermediate_size=320, projection_dim=EMBED_WIDTH, num_hidden_layers=2,
            num_attention_heads=2, image_size=224, patch_size=32, hidden_act="gelu", layer_norm_eps=1e-5))


def sgm_state(unet: Any, cond_vae: Any, first_stage: Any, clip: Any, text: dict[str, Any]) -> dict[str, Any]:
    """The sgm-format state dict of these modules (the inverse of ``sv3d_convert.convert``)."""
    import torch

    from backends.sv3d.names import (
        CLIP_PREFIX,
        COND_VAE_PREFIX,
        FIRST_STAGE_PREFIX,
        UNET_PREFIX,
        clip_to_sgm,
        unet_to_sgm,
        vae_squeezed,
        vae_to_sgm,
    )

    attention_levels = sum("CrossAttn" in kind for kind in unet.config.down_block_types)
    state = {UNET_PREFIX + unet_to_sgm(name, attention_levels): tensor for name, tensor in unet.state_dict().items()}

    def ldm(name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
        return vae_to_sgm(name), tensor[:, :, None, None] if vae_squeezed(name) else tensor

    for name, tensor in cond_vae.state_dict().items():
        key, value = ldm(name, tensor)
        state[COND_VAE_PREFIX + key] = value
    for name, tensor in first_stage.state_dict().items():
        if name.startswith("decoder."):
            key, value = ldm(name, tensor)
            state[FIRST_STAGE_PREFIX + key] = value
    clip_state = clip.state_dict()
    fused: dict[str, list[torch.Tensor]] = {}
    for name, tensor in clip_state.items():
        key = clip_to_sgm(name)
        if ".in_proj_" in key:
            fused.setdefault(key, [])
            continue
        state[CLIP_PREFIX + key] = tensor.t() if key == "visual.proj" else tensor
    for key in fused:  # q, k, v in that order, as OpenCLIP fuses them
        layer, kind = key.split(".attn.in_proj_")
        index = layer.rsplit(".", 1)[1]
        parts = [clip_state[f"vision_model.encoder.layers.{index}.self_attn.{p}.{kind}"]
                 for p in ("q_proj", "k_proj", "v_proj")]
        state[CLIP_PREFIX + key] = torch.cat(parts)
    state.update({CLIP_PREFIX + key: value for key, value in text.items()})
    return {key: value.detach().contiguous() for key, value in state.items()}


def build(root: Path) -> None:
    """Write ``sv3d_u.safetensors`` and ``sv3d_p.safetensors`` into ``root`` (fixed seeds)."""
    import torch
    from safetensors.torch import save_file

    from backends.runtime.tiny import seeded

    root = Path(root)
    cond_vae, first_stage, clip = _vae(31), _vae(32), _clip(33)
    with seeded(34):
        text = {"positional_embedding": torch.randn(77, TEXT_WIDTH),
                "text_projection": torch.randn(TEXT_WIDTH, TEXT_WIDTH),
                "logit_scale": torch.tensor(4.6), "token_embedding.weight": torch.randn(64, TEXT_WIDTH),
                "ln_final.weight": torch.ones(TEXT_WIDTH), "ln_final.bias": torch.zeros(TEXT_WIDTH)}
    for variant, seed in (("u", 35), ("p", 36)):
        state = sgm_state(_unet(ADM[variant], seed), cond_vae, first_stage, clip, text)
        save_file(state, str(root / f"sv3d_{variant}.safetensors"), metadata={"format": "pt"})
    logger.info("built tiny SV3D (sgm format) in %s", root)
