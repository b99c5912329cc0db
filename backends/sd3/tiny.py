"""Tiny random-weight Stable Diffusion 3.5: three transformers, three text encoders, tokenizers, VAE, scheduler.

The spec declares this builder (``tiny:sd3``); ``backends.runtime.tiny`` calls ``build(root)`` once
per cache. The folders carry the real repos' subfolder names (``vae``, ``text_encoder``,
``tokenizer_3``, ``scheduler``, ...), plus one transformer folder per model
(``transformer_large``, ``transformer_large_turbo``, ``transformer_medium``), since the real repos
keep them apart by repo rather than by folder. Everything loads through the same
``from_pretrained`` calls as the released weights.

The models keep the real structure and shrink only widths and depths:
- transformers: 2x2 patches over 16 latent channels, joint text/image attention with RMS QK norm;
  the Medium one has MMDiT-X's dual attention in its first layer, as Medium has in its first 13;
- CLIP-L and CLIP-G of different widths (their hidden states are concatenated, then zero-padded
  to T5's width, as 768 + 1280 are padded to 4096), each with a text projection for the pooled
  vector; the second tokenizer pads with ``!`` as SD3's ``tokenizer_2`` does;
- T5: a gated-GELU encoder with relative attention, and a Unigram (SentencePiece-style) tokenizer;
- VAE: four levels (8x), 16 latent channels, no quant convs, SD3's scaling and shift factors.
Each module is built under its own fixed seed, so two builds give the same weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from backends.runtime.tiny import clip_tokenizer, seeded, wake_zero_parameters

if TYPE_CHECKING:  # heavy imports stay lazy: nothing of this is imported at start-up
    from transformers import CLIPTokenizer, T5Tokenizer

logger = logging.getLogger(__name__)

#: Whole words the tiny tokenizers know as single tokens; anything else falls back to bytes (CLIP)
#: or characters (T5).
_WORDS = (
    "a an the of in on at with and or to by for from is photo picture painting portrait landscape cat dog "
    "bird horse car house tree flower mountain river sea sky city street man woman face red green blue "
    "yellow black white dark bright light night day sun moon star cloud forest garden beach castle robot "
    "astronaut helmet cinematic detailed realistic beautiful high quality blurry ugly art style render sharp"
)
#: Widths: CLIP-L and CLIP-G concatenate to 64 (the pooled vector too), padded to T5's 96.
CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH = 24, 40, 96
#: The three SD3.5 VAE constants that matter for sampling (the released ``vae/config.json``).
VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR = 1.5305, 0.0609
#: Transformer folders by model, with their seeds (distinct, so each model gives its own images).
TRANSFORMERS = {"transformer_large": 21, "transformer_large_turbo": 22, "transformer_medium": 23}


def _tiny_t5_tokenizer() -> T5Tokenizer:
    """A Unigram tokenizer shaped like T5's: pad 0, eos 1, unk 2, then pieces with log-prob scores.

    Whole words score above their letters, so known words stay one piece; any other letter,
    digit or punctuation mark is a piece of its own, and the rest is ``<unk>``.
    """
    import string

    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -3.0) for word in dict.fromkeys(_WORDS.split())]
    pieces += [(char, -6.0) for char in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _clip_text_model(tokenizer: CLIPTokenizer, width: int, heads: int, act: str, seed: int) -> object:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with seeded(seed):
        return CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=width,
                intermediate_size=width * 2,
                projection_dim=width,
                num_hidden_layers=2,
                num_attention_heads=heads,
                max_position_embeddings=tokenizer.model_max_length,
                hidden_act=act,  # quick_gelu in CLIP-L, gelu in OpenCLIP bigG
                # Pooling picks the first eos token; it must be the tokenizer's (NOTES.md).
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )


def build(root: Path) -> None:
    """Write every component of the tiny SD3.5 family into ``root`` (an empty folder)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import T5Config, T5EncoderModel

    root = Path(root)
    tokenizer, tokenizer_2 = clip_tokenizer(_WORDS, "<|endoftext|>"), clip_tokenizer(_WORDS, "!")
    tokenizer_3 = _tiny_t5_tokenizer()
    for name, tok in (("tokenizer", tokenizer), ("tokenizer_2", tokenizer_2), ("tokenizer_3", tokenizer_3)):
        tok.save_pretrained(root / name)
    _clip_text_model(tokenizer, CLIP_L_WIDTH, 2, "quick_gelu", 11).save_pretrained(root / "text_encoder")
    _clip_text_model(tokenizer_2, CLIP_G_WIDTH, 4, "gelu", 12).save_pretrained(root / "text_encoder_2")
    with seeded(13):
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_3), d_model=T5_WIDTH, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0,
        ))
    t5.save_pretrained(root / "text_encoder_3")

    for folder, seed in TRANSFORMERS.items():
        medium = folder == "transformer_medium"
        with seeded(seed):
            transformer = SD3Transformer2DModel(
                sample_size=32,  # 256 px, the tiny preset's size
                patch_size=2,
                in_channels=16,
                out_channels=16,
                num_layers=3 if medium else 2,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=T5_WIDTH,
                caption_projection_dim=32,  # the transformer's width: heads x head dim
                pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
                pos_embed_max_size=128,  # covers 2048 px, the API's largest size
                qk_norm="rms_norm",
                dual_attention_layers=(0,) if medium else (),
            )
            wake_zero_parameters(transformer)
        transformer.save_pretrained(root / folder)

    with seeded(14):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=16,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=VAE_SCALING_FACTOR,
            shift_factor=VAE_SHIFT_FACTOR,
        )
        wake_zero_parameters(vae)
    vae.save_pretrained(root / "vae")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(root / "scheduler")
    logger.info("built tiny SD3.5 in %s", root)
