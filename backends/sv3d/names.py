"""Name mapping between SV3D's sgm checkpoint layout and the diffusers / transformers modules.

Pure string and shape rules, no torch: ``backends.sv3d.convert`` applies them to a checkpoint,
``backends.sv3d.tiny`` applies the inverse to write a tiny sgm-format file, and the tests run them
against the real manifests (``shared/data/sv3d_*_keys.json``) key for key.

The rules, and where each was checked (see the manifests' ``diffusers_mapping_check`` and
``comparison_with_diffusers``):
- UNet: ``time_embed``/``label_emb`` -> ``time_embedding``/``add_embedding``; ``input_blocks.0.0``
  -> ``conv_in``; ``input_blocks.{3i+j+1}.{0,1}`` -> ``down_blocks.i.{resnets,attentions}.j``;
  ``input_blocks.{3i+3}.0.op`` -> ``down_blocks.i.downsamplers.0.conv``; ``middle_block.{0,1,2}`` ->
  ``mid_block.{resnets.0, attentions.0, resnets.1}``; ``output_blocks.{3i+j}`` -> ``up_blocks.i``
  (resnet, attention, upsampler); ``out.{0,2}`` -> ``conv_norm_out``/``conv_out``. Inside a resnet
  the spatial half is ``spatial_res_block`` and ``time_stack`` is ``temporal_res_block``; inside an
  attention ``time_stack.0`` is ``temporal_transformer_blocks.0``.
- KL VAE (both the conditioner's and the first stage's): the LDM -> diffusers renaming, up blocks
  reversed, mid-block attention 1x1 convs squeezed to linear weights.
- OpenCLIP ViT-H/14 visual tower -> ``CLIPVisionModelWithProjection``: fused ``in_proj`` split
  into q/k/v, ``proj`` transposed into ``visual_projection``.
"""

from __future__ import annotations

import re

from backends.runtime.errors import StudioError

UNET_PREFIX = "model.diffusion_model."
FIRST_STAGE_PREFIX = "first_stage_model."
COND_VAE_PREFIX = "conditioner.embedders.1.encoder."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model."
#: OpenCLIP keeps these text-tower tensors after deleting the text transformer; the image
#: embedder never reads them, so conversion drops them by name (and only them).
CLIP_TEXT_LEFTOVERS = ("positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
                       "ln_final.weight", "ln_final.bias")
#: sgm VideoUNet with num_res_blocks 2: three input blocks per level (two resnets, one downsampler).
RES_BLOCKS = 2
#: Levels of the UNet and of the VAE (channel_mult [1, 2, 4, 4] in both).
LEVELS = 4


class ConversionError(StudioError):
    """A checkpoint key (or a module parameter) has no counterpart; the message names it."""


# ----- UNet ------------------------------------------------------------------------------------

_RESNET = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
           ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut.")]


def _resnet(rest: str, key: str) -> str:
    if rest.startswith("time_mixer."):
        return rest
    half, rest = ("temporal_res_block.", rest[len("time_stack."):]) if rest.startswith("time_stack.") \
        else ("spatial_res_block.", rest)
    for old, new in _RESNET:
        if rest.startswith(old):
            return half + new + rest[len(old):]
    raise ConversionError(f"unknown UNet resnet key {key!r}")


def _attention(rest: str) -> str:
    if rest.startswith("time_stack."):
        return "temporal_transformer_blocks." + rest[len("time_stack."):]
    match = re.match(r"time_pos_embed\.([02])\.(.*)", rest)
    if match:
        return f"time_pos_embed.linear_{1 if match[1] == '0' else 2}.{match[2]}"
    return rest


def unet_to_diffusers(key: str) -> str:
    """The diffusers ``UNetSpatioTemporalConditionModel`` name of an sgm UNet key (prefix stripped)."""
    fixed = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
             "label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2.",
             "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    match = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if match:
        number, sub, rest = int(match[1]), int(match[2]), match[3]
        level, slot = divmod(number - 1, RES_BLOCKS + 1)
        if slot == RES_BLOCKS:
            if rest.startswith("op."):
                return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
        elif sub == 0:
            return f"down_blocks.{level}.resnets.{slot}.{_resnet(rest, key)}"
        elif sub == 1:
            return f"down_blocks.{level}.attentions.{slot}.{_attention(rest)}"
        raise ConversionError(f"unknown UNet key {key!r}")
    match = re.match(r"middle_block\.(\d)\.(.*)", key)
    if match:
        sub, rest = int(match[1]), match[2]
        if sub == 1:
            return f"mid_block.attentions.0.{_attention(rest)}"
        return f"mid_block.resnets.{sub // 2}.{_resnet(rest, key)}"
    match = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if match:
        level, slot = divmod(int(match[1]), RES_BLOCKS + 1)
        sub, rest = int(match[2]), match[3]
        if sub > 0 and rest.startswith("conv."):  # the upsampler follows the resnet or the attention
            return f"up_blocks.{level}.upsamplers.0.conv.{rest[5:]}"
        if sub == 0:
            return f"up_blocks.{level}.resnets.{slot}.{_resnet(rest, key)}"
        if sub == 1:
            return f"up_blocks.{level}.attentions.{slot}.{_attention(rest)}"
    raise ConversionError(f"unknown UNet key {key!r}")


def unet_to_sgm(name: str, attention_levels: int) -> str:
    """The inverse of ``unet_to_diffusers`` (for writing tiny sgm files).

    Args:
        attention_levels: up blocks with attention come after the first ``LEVELS - attention_levels``
            (their upsampler sits at sub-index 2 instead of 1).
    """
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for old, new in fixed.items():
        if name.startswith(old):
            return new + name[len(old):]

    def resnet(rest: str) -> str:
        if rest.startswith("time_mixer."):
            return rest
        half = "time_stack." if rest.startswith("temporal_res_block.") else ""
        rest = rest.split(".", 1)[1]
        for old, new in _RESNET:
            if rest.startswith(new):
                return half + old + rest[len(new):]
        raise ConversionError(f"unknown diffusers resnet name {name!r}")

    def attention(rest: str) -> str:
        if rest.startswith("temporal_transformer_blocks."):
            return "time_stack." + rest[len("temporal_transformer_blocks."):]
        match = re.match(r"time_pos_embed\.linear_([12])\.(.*)", rest)
        return f"time_pos_embed.{0 if match[1] == '1' else 2}.{match[2]}" if match else rest

    match = re.match(r"down_blocks\.(\d)\.(resnets|attentions|downsamplers)\.(\d)\.(.*)", name)
    if match:
        level, kind, slot, rest = int(match[1]), match[2], int(match[3]), match[4]
        if kind == "downsamplers":
            return f"input_blocks.{3 * level + 3}.0.op.{rest.split('.', 1)[1]}"
        number = 3 * level + slot + 1
        return f"input_blocks.{number}.0.{resnet(rest)}" if kind == "resnets" \
            else f"input_blocks.{number}.1.{attention(rest)}"
    match = re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.*)", name)
    if match:
        if match[1] == "attentions":
            return f"middle_block.1.{attention(match[3])}"
        return f"middle_block.{2 * int(match[2])}.{resnet(match[3])}"
    match = re.match(r"up_blocks\.(\d)\.(resnets|attentions|upsamplers)\.(\d)\.(.*)", name)
    if match:
        level, kind, slot, rest = int(match[1]), match[2], int(match[3]), match[4]
        if kind == "upsamplers":
            sub = 2 if level >= LEVELS - attention_levels else 1
            return f"output_blocks.{3 * level + RES_BLOCKS}.{sub}.conv.{rest.split('.', 1)[1]}"
        number = 3 * level + slot
        return f"output_blocks.{number}.0.{resnet(rest)}" if kind == "resnets" \
            else f"output_blocks.{number}.1.{attention(rest)}"
    raise ConversionError(f"unknown diffusers UNet name {name!r}")


# ----- KL VAE ----------------------------------------------------------------------------------

_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_VAE_FIXED = {"norm_out.": "conv_norm_out."}


def vae_to_diffusers(key: str) -> str:
    """The diffusers ``AutoencoderKL`` name of an LDM VAE key (``encoder.*``, ``decoder.*``, convs)."""
    if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return key
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        raise ConversionError(f"unknown VAE key {key!r}")
    for old, new in _VAE_FIXED.items():
        if rest.startswith(old):
            return f"{side}.{new}{rest[len(old):]}"
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    match = re.match(r"(down|up)\.(\d)\.(block\.(\d)|downsample|upsample)\.(.*)", rest)
    if match:
        level = int(match[2]) if match[1] == "down" else LEVELS - 1 - int(match[2])
        tail = match[5].replace("nin_shortcut.", "conv_shortcut.")
        if match[4] is not None:
            return f"{side}.{match[1]}_blocks.{level}.resnets.{match[4]}.{tail}"
        return f"{side}.{match[1]}_blocks.{level}.{match[3]}rs.0.{tail}"
    match = re.match(r"mid\.(block_(\d)|attn_1)\.(\w+)\.(.*)", rest)
    if match:
        if match[2] is not None:
            tail = f"{match[3]}.{match[4]}".replace("nin_shortcut.", "conv_shortcut.")
            return f"{side}.mid_block.resnets.{int(match[2]) - 1}.{tail}"
        if match[3] in _VAE_ATTENTION:
            return f"{side}.mid_block.attentions.0.{_VAE_ATTENTION[match[3]]}.{match[4]}"
    raise ConversionError(f"unknown VAE key {key!r}")


def vae_to_sgm(name: str) -> str:
    """The inverse of ``vae_to_diffusers``."""
    if name.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return name
    side, _, rest = name.partition(".")
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out.{rest[len('conv_norm_out.'):]}"
    if rest.startswith(("conv_in.", "conv_out.")):
        return name
    match = re.match(r"(down|up)_blocks\.(\d)\.(resnets\.(\d)|downsamplers\.0|upsamplers\.0)\.(.*)", rest)
    if match:
        level = int(match[2]) if match[1] == "down" else LEVELS - 1 - int(match[2])
        if match[4] is not None:
            return f"{side}.{match[1]}.{level}.block.{match[4]}.{match[5].replace('conv_shortcut.', 'nin_shortcut.')}"
        return f"{side}.{match[1]}.{level}.{match[1]}sample.{match[5]}"
    match = re.match(r"mid_block\.(resnets\.(\d)|attentions\.0)\.(.*)", rest)
    if match:
        if match[2] is not None:
            return f"{side}.mid.block_{int(match[2]) + 1}.{match[3].replace('conv_shortcut.', 'nin_shortcut.')}"
        for old, new in _VAE_ATTENTION.items():
            if match[3].startswith(new + "."):
                return f"{side}.mid.attn_1.{old}.{match[3][len(new) + 1:]}"
    raise ConversionError(f"unknown diffusers VAE name {name!r}")


def vae_squeezed(name: str) -> bool:
    """Whether a diffusers VAE weight is an LDM 1x1 conv stored as a linear weight."""
    return bool(re.search(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", name))


# ----- OpenCLIP visual tower -------------------------------------------------------------------

_CLIP_FIXED = {"visual.class_embedding": "vision_model.embeddings.class_embedding",
               "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
               "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
               "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
               "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
               "visual.ln_post.weight": "vision_model.post_layernorm.weight",
               "visual.ln_post.bias": "vision_model.post_layernorm.bias",
               "visual.proj": "visual_projection.weight"}
_CLIP_LAYER = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "attn.out_proj.": "self_attn.out_proj.",
               "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2."}
#: transformers' split of OpenCLIP's fused attention input projection, in its q, k, v order.
QKV = ("q_proj", "k_proj", "v_proj")


def clip_to_transformers(key: str) -> tuple[str, ...]:
    """The transformers names one OpenCLIP visual key becomes (three for a fused in_proj)."""
    if key in _CLIP_FIXED:
        return (_CLIP_FIXED[key],)
    match = re.match(r"visual\.transformer\.resblocks\.(\d+)\.(.*)", key)
    if match:
        layer, rest = f"vision_model.encoder.layers.{match[1]}.", match[2]
        fused = re.match(r"attn\.in_proj_(weight|bias)$", rest)
        if fused:
            return tuple(f"{layer}self_attn.{part}.{fused[1]}" for part in QKV)
        for old, new in _CLIP_LAYER.items():
            if rest.startswith(old):
                return (layer + new + rest[len(old):],)
    raise ConversionError(f"unknown OpenCLIP key {key!r}")


def clip_to_sgm(name: str) -> str:
    """The inverse of ``clip_to_transformers`` (the fused key, for any of q/k/v)."""
    for old, new in _CLIP_FIXED.items():
        if name == new:
            return old
    match = re.match(r"vision_model\.encoder\.layers\.(\d+)\.(.*)", name)
    if match:
        layer, rest = f"visual.transformer.resblocks.{match[1]}.", match[2]
        fused = re.match(r"self_attn\.(q_proj|k_proj|v_proj)\.(weight|bias)$", rest)
        if fused:
            return f"{layer}attn.in_proj_{fused[2]}"
        for old, new in _CLIP_LAYER.items():
            if rest.startswith(new):
                return layer + old + rest[len(new):]
    raise ConversionError(f"unknown transformers CLIP name {name!r}")
