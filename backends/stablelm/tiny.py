"""Tiny random-weight StableLM for tests, CI and the tiny preset, built offline.

``backends.runtime.tiny`` calls ``build(root)`` once per cache (``tiny:stablelm`` sources). The model keeps
StableLM 2 1.6B's structure (partial rotary embeddings on a quarter of each head, biases on the
q/k/v projections, sequential residuals, LayerNorm) and shrinks widths and depth, so the fused
decode path and the stock ``transformers`` path are exercised on the same shapes as the real model.

The tokenizer is a byte-level BPE built from a fixed word list (no training, no download): every
byte is a token, so any text, including non-ASCII, round-trips exactly, and multi-byte characters
span several tokens, which is what the streaming detokenizer must handle. It carries a
Zephyr-style chat template and, as extra special tokens, the StableLM Tuned Alpha role markers, so
both prompt formats run end to end on it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from backends.runtime.tiny import seeded

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
#: StableLM Tuned Alpha's role markers and padding token (special tokens in its GPT-NeoX vocab).
TUNED_ALPHA_TOKENS = ("<|padding|>", "<|SYSTEM|>", "<|USER|>", "<|ASSISTANT|>")

#: Zephyr format, as stablelm-zephyr-3b documents it: ``<|user|>\n{text}<|endoftext|>\n`` per
#: message and ``<|assistant|>\n`` to prompt the reply (hf_repos.md).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}"
)

#: Words merged into single tokens so prompts stay short; everything else falls back to bytes.
#: The role names make the template's ``<|user|>`` three tokens instead of eight.
_WORDS = (
    "<| |> user assistant system you are a helpful the of and to in is it that for on with as "
    "this be are was hello hi how what why can do not your me my we an at or by from have please "
    "thanks yes no write poem story tell about model language answer question one two three"
)

#: Small enough that 32 tokens stream in a few milliseconds on one CPU core; the context window
#: is long enough for the streaming and Stop tests and short enough that trimming is cheap to test.
HIDDEN = 64
LAYERS = 2
HEADS = 4
INTERMEDIATE = 176
CONTEXT = 1024
SEED = 11


def build_tokenizer() -> object:
    """A byte-level BPE ``GPT2Tokenizer`` with the chat template and the special tokens above.

    Merges are given as tuples: transformers 5 rejects "a b" merge strings (NOTES.md, CLIP).
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import GPT2Tokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {symbol: index for index, symbol in enumerate(alphabet)}
    merges: list[tuple[str, str]] = []
    # Byte-level BPE spells a leading space as "Ġ"; merge each word with and without it.
    for word in _WORDS.split():
        for spelled in (word, "Ġ" + word):
            pieces = list(spelled)
            while len(pieces) > 1:
                pair = (pieces[0], pieces[1])
                if pair not in merges:
                    merges.append(pair)
                vocab.setdefault(pair[0] + pair[1], len(vocab))
                pieces = [pair[0] + pair[1], *pieces[2:]]
    vocab[EOS] = len(vocab)
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, unk_token=EOS, bos_token=EOS, eos_token=EOS,
                              pad_token=EOS, add_prefix_space=False)
    tokenizer.add_special_tokens({"additional_special_tokens": list(TUNED_ALPHA_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = CONTEXT
    return tokenizer


def build(root: Path) -> None:
    """Write the tokenizer and a seeded ``StableLmForCausalLM`` into ``root`` (no subfolder)."""
    from transformers import GenerationConfig, StableLmConfig, StableLmForCausalLM

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(root)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = StableLmConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        partial_rotary_factor=0.25,  # as StableLM 2: rotary on 4 of each head's 16 dims here
        use_qkv_bias=True,
        max_position_embeddings=CONTEXT,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=False,
    )
    with seeded(SEED):
        model = StableLmForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    model.save_pretrained(root)
    logger.info("tiny stablelm: %d parameters, vocab %d", sum(p.numel() for p in model.parameters()),
                len(tokenizer))
