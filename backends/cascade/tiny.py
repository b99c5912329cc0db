"""Tiny Stable Cascade: both CLIP encoders, tokenizer, stages C, B, A, scheduler, EfficientNet and previewer.

The spec declares this builder (``tiny:cascade``); ``backends.runtime.tiny`` calls ``build(root)``
once per cache. The models keep the real block structure (two-level stage C with "CTA" blocks and
sca/crp conditioning; four-level stage B with effnet and pixel mappers; stage A's 4x compression
and 8192-entry codebook) and shrink only widths and depths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from backends.runtime.tiny import clip_tokenizer, seeded, wake_zero_parameters

if TYPE_CHECKING:  # heavy imports stay lazy: the spec imports nothing of this at start-up
    import torch

#: Whole words the tiny tokenizer merges into single tokens; anything else falls back to bytes.
_CASCADE_WORDS = (
    "a an the of in on at with and or to by for from is photo picture painting drawing portrait "
    "landscape cat dog bird horse fish car house tree flower mountain river sea sky city street "
    "man woman child face red green blue yellow black white orange purple pink gray golden dark "
    "bright light night day sun moon star cloud rain snow forest field garden beach castle robot "
    "astronaut space helmet cinematic detailed realistic beautiful high quality blurry ugly art "
    "style oil watercolor digital render lighting sharp focus background"
)

#: Every tiny Cascade text width; the real model uses 1280 for all three (ViT-bigG).
_TEXT_WIDTH = 64
#: Tiny stand-in for ViT-L/14's 768-wide image projection; the prior's clip_image_in_channels.
_IMAGE_EMBED_WIDTH = 32


def _cascade_block_types(levels: str) -> tuple[tuple[str, ...], ...]:
    """Spell the original "CTA"-style level configs as diffusers block type names."""
    names = {"C": "SDCascadeResBlock", "T": "SDCascadeTimestepBlock", "A": "SDCascadeAttnBlock"}
    return tuple(tuple(names[letter] for letter in level) for level in levels.split())


def build(root: Path) -> None:
    """Write a tiny Stable Cascade: both CLIP encoders, tokenizer, stages C, B, A, scheduler,
    and the EfficientNet encoder and previewer."""
    from diffusers import DDPMWuerstchenScheduler, StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tokenizer = clip_tokenizer(_CASCADE_WORDS)
    tokenizer.save_pretrained(root / "tokenizer")

    with seeded(1):
        text_encoder = CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=_TEXT_WIDTH,
                intermediate_size=_TEXT_WIDTH * 2,
                projection_dim=_TEXT_WIDTH,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=tokenizer.model_max_length,
                hidden_act="gelu",  # as in ViT-bigG
                # Pooling picks the first eos token; it must be the tokenizer's (NOTES.md).
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    text_encoder.save_pretrained(root / "text_encoder")

    with seeded(2):
        # 224 px input with 32 px patches: the standard CLIP preprocessing size, only 49 tokens.
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=64,
                intermediate_size=128,
                projection_dim=_IMAGE_EMBED_WIDTH,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=224,
                patch_size=32,
                hidden_act="gelu",
            )
        )
    image_encoder.save_pretrained(root / "image_encoder")
    # Without torchvision this resolves to CLIPImageProcessorPil (NOTES.md); either loads back.
    CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(root / "feature_extractor")

    with seeded(3):
        # Stage C: same shape of model as the real prior (two levels, "CTA" blocks, sca/crp
        # conditioning, no resolution switch), 128 channels wide and one layer deep. Prior and
        # decoder outweigh their working memory, as the real ones do, so memory tests behave alike.
        prior = StableCascadeUNet(
            in_channels=16,
            out_channels=16,
            timestep_ratio_embedding_dim=64,
            patch_size=1,
            conditioning_dim=128,
            block_out_channels=(128, 128),
            num_attention_heads=(4, 4),
            down_num_layers_per_block=(1, 1),
            up_num_layers_per_block=(1, 1),
            down_blocks_repeat_mappers=(1, 1),
            up_blocks_repeat_mappers=(1, 1),
            block_types_per_layer=_cascade_block_types("CTA CTA"),
            clip_text_in_channels=_TEXT_WIDTH,
            clip_text_pooled_in_channels=_TEXT_WIDTH,
            clip_image_in_channels=_IMAGE_EMBED_WIDTH,
            clip_seq=4,
            kernel_size=3,
            dropout=(0.1, 0.1),
            self_attn=True,
            timestep_conditioning_type=("sca", "crp"),
            switch_level=(False,),
        )
        wake_zero_parameters(prior)
    prior.save_pretrained(root / "prior")

    with seeded(4):
        # Stage B: four levels, attention on the last two, repeat mappers on the way up, effnet
        # and pixel mappers, patch size 2, "sca" conditioning only, as in the real decoder.
        decoder = StableCascadeUNet(
            in_channels=4,
            out_channels=4,
            timestep_ratio_embedding_dim=64,
            patch_size=2,
            conditioning_dim=64,
            block_out_channels=(32, 64, 128, 128),
            num_attention_heads=(0, 0, 4, 4),
            down_num_layers_per_block=(1, 1, 1, 1),
            up_num_layers_per_block=(1, 1, 1, 1),
            down_blocks_repeat_mappers=(1, 1, 1, 1),
            up_blocks_repeat_mappers=(2, 2, 2, 2),
            block_types_per_layer=_cascade_block_types("CT CT CTA CTA"),
            clip_text_pooled_in_channels=_TEXT_WIDTH,
            clip_seq=4,
            effnet_in_channels=16,
            pixel_mapper_in_channels=3,
            kernel_size=3,
            dropout=(0.0, 0.0, 0.1, 0.1),
            self_attn=True,
            timestep_conditioning_type=("sca",),
        )
        wake_zero_parameters(decoder)
    decoder.save_pretrained(root / "decoder")

    with seeded(5):
        # Stage A keeps the real 4x compression (pixel unshuffle 2 and one stride-2 level) and
        # the full 8192-entry codebook; only the widths and the bottleneck depth shrink.
        vqgan = PaellaVQModel(
            levels=2, bottleneck_blocks=4, embed_dim=16, latent_channels=4, num_vq_embeddings=8192
        )
        wake_zero_parameters(vqgan)
    vqgan.save_pretrained(root / "vqgan")

    DDPMWuerstchenScheduler().save_pretrained(root / "scheduler")
    _build_cascade_image_models(root)


def _build_cascade_image_models(root: Path) -> None:
    """The EfficientNet encoder and previewer: single safetensors files at the root, as released.

    They share our module code with the real ones (narrower and shallower) and carry their config
    in the file's metadata. Their BatchNorm statistics are measured on random input, as training
    would set them: with arbitrary statistics the input's signal fades within a few random layers
    and every image would encode to nearly the same latent.
    """
    import torch
    from safetensors.torch import save_file

    from backends.cascade import effnet, previewer

    config = effnet.EffnetConfig(
        stem=8,
        stages=(
            effnet.StageSpec(True, 1, 1, 8, 1),
            effnet.StageSpec(True, 4, 2, 16, 1),
            effnet.StageSpec(True, 4, 2, 16, 1),
            effnet.StageSpec(False, 4, 2, 24, 2),
            effnet.StageSpec(False, 6, 1, 24, 1),
            effnet.StageSpec(False, 6, 2, 32, 2),
        ),
        head=64,
    )
    with seeded(6):
        encoder = effnet.EfficientNetEncoder(config)
        # Smooth random pictures, normalised like real input.
        pictures = torch.nn.functional.interpolate(torch.rand(16, 3, 8, 8), size=256, mode="bilinear")
        mean, std = torch.tensor(effnet.MEAN).view(1, 3, 1, 1), torch.tensor(effnet.STD).view(1, 3, 1, 1)
        _calibrate_norms(encoder, (pictures - mean) / std)
    save_file(encoder.state_dict(), root / effnet.EFFNET_FILE, metadata={effnet.CONFIG_KEY: config.to_json()})

    with seeded(7):
        preview = previewer.Previewer(c_in=16, c_hidden=32, c_out=3)
        _calibrate_norms(preview, torch.randn(8, 16, 8, 8))
    metadata = {previewer.CONFIG_KEY: json.dumps({"c_in": 16, "c_hidden": 32, "c_out": 3})}
    save_file(preview.state_dict(), root / previewer.PREVIEWER_FILE, metadata=metadata)


def _calibrate_norms(module: torch.nn.Module, inputs: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``inputs``, then randomise the affine
    parameters a little (call seeded); leaves the module in eval mode."""
    import torch

    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one batch, exactly its statistics
    module.train()
    with torch.no_grad():
        module(inputs)
        for norm in norms:
            norm.momentum = 0.1
            if norm.affine:
                norm.weight.uniform_(0.8, 1.2)
                norm.bias.normal_(0.0, 0.1)
    module.eval()
