"""Tiny random-weight Stable Audio Open: T5 and its tokenizer, projection model, DiT, Oobleck VAE, scheduler.

The spec declares this builder (``tiny:audio``); ``backends.runtime.tiny`` calls ``build(root)`` once
per cache. The folders carry the real repo's subfolder names, and everything loads through the same
``from_pretrained`` calls as the released weights.

The models keep the real structure and shrink only widths and depths:
- T5: a ReLU encoder with relative attention (T5-base's kind), and a Unigram (SentencePiece-style)
  tokenizer of 128 tokens like the released one;
- the projection model maps T5's width to a different conditioning width, so its text projection is
  a real linear layer (in the released model both are 768 and it is the identity);
- the DiT has grouped-query cross-attention (2 key/value heads for 4 query heads, as 12 for 24),
  rotary self-attention and the prepended global token;
- the VAE is stereo at 44.1 kHz with 2 up-sampling blocks of 64 and 128 (hop 8192; the released
  5 blocks make 2048), and the DiT's window is 256 latent frames, so the window is the released
  model's 2,097,152 samples (47.55 s): any clip the API allows comes out at its own length. Its
  full-rate channels are 1, since the whole window is decoded every time: the decode is most of a
  tiny job (about 0.4 s on one CPU thread).
Each module is built under its own fixed seed, so two builds give the same weights.
"""

from __future__ import annotations

import logging
import string
from pathlib import Path
from typing import TYPE_CHECKING

from backends.runtime.tiny import seeded, wake_zero_parameters

if TYPE_CHECKING:  # heavy imports stay lazy: nothing of this is imported at start-up
    from transformers import T5Tokenizer

logger = logging.getLogger(__name__)

#: Whole words the tiny tokenizer knows as single pieces; anything else falls back to characters.
_WORDS = (
    "a an the of in on at with and or to by for from is sound music loop beat drum drums kick snare hat "
    "bass synth piano guitar strings violin pad ambient noise rain thunder wind water birds dog barking "
    "hammer wood door footsteps city street crowd engine car bell chime bpm house techno jazz rock "
    "low high quality fast slow loud soft reverb stereo"
)
#: The released tokenizer's length (stable-audio-tools reads 128 T5 tokens).
MAX_TOKENS = 128
T5_WIDTH, CONDITIONING_WIDTH = 32, 24
LATENT_CHANNELS = 8
SAMPLE_RATE = 44100
#: VAE down-sampling per block (hop 8192) and the DiT's window in latent frames: 256 x 8192 samples.
DOWNSAMPLING = (64, 128)
WINDOW = 256
#: Scales the VAE's output: as built, its samples had a standard deviation of 0.38 and 92 of a 1.5 s
#: clip's 132,300 lay beyond [-1, 1]; scaled, 0.15 and a peak of 0.49.
OUTPUT_GAIN = 0.4


def _tiny_t5_tokenizer() -> T5Tokenizer:
    """A Unigram tokenizer shaped like T5's: pad 0, eos 1, unk 2, then pieces with log-prob scores."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -3.0) for word in dict.fromkeys(_WORDS.split())]
    pieces += [(char, -6.0) for char in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=MAX_TOKENS)


def build(root: Path) -> None:
    """Write every component of the tiny Stable Audio Open into ``root`` (an empty folder)."""
    import torch
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioProjectionModel,
    )
    from transformers import T5Config, T5EncoderModel

    root = Path(root)
    tokenizer = _tiny_t5_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    with seeded(31):
        T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=T5_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0,
        )).save_pretrained(root / "text_encoder")
    with seeded(32):
        StableAudioProjectionModel(text_encoder_dim=T5_WIDTH, conditioning_dim=CONDITIONING_WIDTH, min_value=0,
                                   max_value=512).save_pretrained(root / "projection_model")
    with seeded(33):
        transformer = StableAudioDiTModel(
            sample_size=WINDOW,
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            num_key_value_attention_heads=2,
            cross_attention_dim=16,  # key/value heads x head width, as 12 x 64 = 768
            time_proj_dim=16,
            global_states_input_dim=2 * CONDITIONING_WIDTH,  # the start and end seconds side by side
            cross_attention_input_dim=CONDITIONING_WIDTH,
        )
        wake_zero_parameters(transformer)
    transformer.save_pretrained(root / "transformer")
    # The Snake activations' zero alpha and beta are log-scale (exp(0) = 1), not identities: left as built.
    with seeded(34):
        vae = AutoencoderOobleck(
            encoder_hidden_size=2 * LATENT_CHANNELS,  # mean and scale of each latent channel
            downsampling_ratios=list(DOWNSAMPLING),
            channel_multiples=[1, 4],
            decoder_channels=1,
            decoder_input_channels=LATENT_CHANNELS,
            audio_channels=2,
            sampling_rate=SAMPLE_RATE,
        )
    with torch.no_grad():  # the last convolution's gain: samples mostly inside [-1, 1], as real audio is
        vae.decoder.conv2.weight_g.mul_(OUTPUT_GAIN)
    vae.save_pretrained(root / "vae")
    # Its defaults are the released scheduler_config.json's (sigma 0.3-500, exponential, v-prediction).
    CosineDPMSolverMultistepScheduler().save_pretrained(root / "scheduler")
    logger.info("built tiny Stable Audio Open in %s", root)
