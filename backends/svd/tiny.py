"""Tiny random-weight Stable Video Diffusion, written like the diffusers-format hub repos.

``backends.runtime.tiny`` calls ``build(root)`` once per cache (family ``svd``); the result has the same
subfolders as ``stabilityai/stable-video-diffusion-img2vid(-xt)`` (unet, vae, image_encoder,
feature_extractor, scheduler) and loads through the same ``from_pretrained`` calls.

The architectures keep the real structure (four UNet levels with three cross-attention levels,
a four-level temporal VAE, so 8x spatial compression, CLIP vision with a projection) and shrink
widths and depths only. Sizes are chosen so a 6-frame, 3-step, 128x64 video takes about a second
on two CPU cores.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

#: Width of the CLIP image embedding, which is also the UNet's cross-attention width
#: (1024 in the real models: ViT-H/14's projection).
EMBED_WIDTH = 32
#: Width of each of the three added-time-id embeddings (fps, motion bucket, noise strength); the
#: UNet's ``projection_class_embeddings_input_dim`` must be three times this (NOTES.md).
TIME_ID_WIDTH = 8
#: The real scheduler settings that matter for sampling: Karras sigmas between 0.002 and 700,
#: v-prediction, continuous timesteps.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    interpolation_type="linear",
    use_karras_sigmas=True,
    sigma_min=0.002,
    sigma_max=700.0,
    timestep_spacing="leading",
    timestep_type="continuous",
    steps_offset=1,
)


def build(root: Path) -> None:
    """Write every component of the tiny SVD into ``root`` (an empty folder).

    Each module is built under its own fixed seed (``backends.runtime.tiny.seeded``), so two builds
    give byte-identical weights.
    """
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from backends.runtime.tiny import seeded, wake_zero_parameters

    root = Path(root)
    with seeded(11):
        # 224 px with 32 px patches: SVD always resizes the conditioning image to 224 (NOTES.md).
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                projection_dim=EMBED_WIDTH,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=224,
                patch_size=32,
                hidden_act="gelu",
            )
        )
    image_encoder.save_pretrained(root / "image_encoder")
    # Without torchvision this resolves to CLIPImageProcessorPil (NOTES.md); only its mean and std
    # are used (SVD resizes the image itself).
    CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(root / "feature_extractor")

    with seeded(12):
        # Widths must be multiples of 32: every norm in these blocks is a 32-group GroupNorm.
        unet = UNetSpatioTemporalConditionModel(
            in_channels=8,
            out_channels=4,
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=1,
            num_attention_heads=(2, 2, 4, 4),
            cross_attention_dim=EMBED_WIDTH,
            addition_time_embed_dim=TIME_ID_WIDTH,
            projection_class_embeddings_input_dim=3 * TIME_ID_WIDTH,
            num_frames=6,
        )
        # The temporal mixers start as exact blends and the output convs near zero; random values
        # make every conditioning input (time ids, embedding, frames) change the result.
        wake_zero_parameters(unet)
    unet.save_pretrained(root / "unet")

    with seeded(13):
        vae = AutoencoderKLTemporalDecoder(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            block_out_channels=(32, 32, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            scaling_factor=0.18215,
            force_upcast=True,
        )
        wake_zero_parameters(vae)
    vae.save_pretrained(root / "vae")

    EulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(root / "scheduler")
    logger.info("built tiny SVD in %s", root)
