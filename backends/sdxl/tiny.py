"""Tiny random-weight SDXL, base and refiner, written like the diffusers-format hub repos.

The spec declares this builder (``tiny:sdxl``); ``backends.runtime.tiny`` calls ``build(root)``
once per cache. The folders are the settings' subfolders (``unet``, ``vae``, ``text_encoder``,
``text_encoder_2``, ``tokenizer``, ``tokenizer_2``, ``scheduler``, ``refiner_unet``) and load
through the same ``from_pretrained`` calls as the real repos.

The models keep the real structure and shrink only widths and depths:
- the base UNet has SDXL's three levels (no attention on the first, cross-attention on the other
  two, deeper on the last), linear transformer projections, and "text_time" added conditioning:
  six time ids plus the pooled bigG embedding; its cross-attention width is both encoders'
  penultimate hidden states side by side;
- the refiner UNet has the refiner's four levels (attention on the middle two only), bigG's width
  as cross-attention and five time ids (the aesthetic score instead of the crop size twice);
- CLIP-L without and bigG with a projection, each with its own tokenizer (the second pads with
  "!", as the real one), sharing one vocabulary;
- sizes in the real proportions (base UNet 8.7 MB in float32, refiner 6.7, bigG 2.0, CLIP-L 0.2,
  VAE 0.3), so that a memory budget binds at the same stages as with the real models;
- a four-level VAE (8x), with ``force_upcast`` and SDXL's scaling factor, so the float32 paths
  run; it is narrow because bfloat16 convolutions are slow on CPUs without AVX512-BF16
  (a 32-channel 3x3 convolution at 256² took 3 s here against 0.04 s in float32);
- the real scheduler config (Euler, scaled-linear betas, leading spacing).
"""

from __future__ import annotations

import logging
from pathlib import Path

from backends.runtime.tiny import clip_tokenizer, seeded, wake_zero_parameters

logger = logging.getLogger(__name__)

#: Whole words the tiny tokenizers merge into single tokens; anything else falls back to bytes.
_WORDS = (
    "a an the of in on at with and or to by for from is photo picture painting portrait landscape cat dog "
    "bird horse car house tree flower mountain river sea sky city man woman face red green blue yellow black "
    "white dark bright light night day sun moon cloud forest beach castle robot astronaut cinematic detailed "
    "realistic beautiful high quality blurry ugly art style oil digital render sharp focus background"
)
#: CLIP-L's and bigG's hidden widths (768 and 1280 in the real models); the base UNet's cross-attention
#: reads both side by side, the refiner's bigG's alone.
TEXT_WIDTH, TEXT_WIDTH_2 = 32, 128
#: bigG's projection (1280 in the real model): the pooled embedding in the added conditioning.
POOLED_WIDTH = 32
#: Width of each time id's embedding (256 in the real models).
TIME_ID_WIDTH = 8
#: SDXL's scheduler config (the base and refiner repos' ``scheduler_config.json``).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    interpolation_type="linear",
    use_karras_sigmas=False,
    timestep_spacing="leading",
    steps_offset=1,
)


def build(root: Path) -> None:
    """Write every component of the tiny SDXL base and refiner into ``root`` (an empty folder).

    Each module is built under its own fixed seed (``backends.runtime.tiny.seeded``), so two builds
    give byte-identical weights.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = Path(root)
    tokenizer = clip_tokenizer(_WORDS, "<|endoftext|>")
    tokenizer.save_pretrained(root / "tokenizer")
    clip_tokenizer(_WORDS, "!").save_pretrained(root / "tokenizer_2")

    def text_config(hidden: int, heads: int, act: str, projection: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=projection,
            num_hidden_layers=3, num_attention_heads=heads, max_position_embeddings=tokenizer.model_max_length,
            hidden_act=act,
            # Pooling picks the first eos token; it must be the tokenizer's (NOTES.md).
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)

    with seeded(21):
        CLIPTextModel(text_config(TEXT_WIDTH, 2, "quick_gelu", TEXT_WIDTH)).save_pretrained(root / "text_encoder")
    with seeded(22):
        CLIPTextModelWithProjection(text_config(TEXT_WIDTH_2, 4, "gelu", POOLED_WIDTH)).save_pretrained(
            root / "text_encoder_2")

    with seeded(23):
        unet = UNet2DConditionModel(
            sample_size=32,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),
            attention_head_dim=(2, 4, 4),
            use_linear_projection=True,
            cross_attention_dim=TEXT_WIDTH + TEXT_WIDTH_2,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_ID_WIDTH,
            projection_class_embeddings_input_dim=6 * TIME_ID_WIDTH + POOLED_WIDTH,
        )
        wake_zero_parameters(unet)
    unet.save_pretrained(root / "unet")

    with seeded(24):
        refiner = UNet2DConditionModel(
            sample_size=32,
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=1,
            attention_head_dim=(2, 2, 4, 4),
            use_linear_projection=True,
            cross_attention_dim=TEXT_WIDTH_2,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_ID_WIDTH,
            projection_class_embeddings_input_dim=5 * TIME_ID_WIDTH + POOLED_WIDTH,
        )
        wake_zero_parameters(refiner)
    refiner.save_pretrained(root / "refiner_unet")

    with seeded(25):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=4,
            sample_size=256,
            scaling_factor=0.13025,
            force_upcast=True,
        )
        wake_zero_parameters(vae)
    vae.save_pretrained(root / "vae")

    EulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(root / "scheduler")
    logger.info("built tiny SDXL in %s", root)
