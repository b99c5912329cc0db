"""Strict conversion of one SV3D sgm checkpoint into diffusers / transformers components, cached.

The released ``sv3d_u.safetensors`` / ``sv3d_p.safetensors`` hold four key groups
(``shared/data/sv3d_*_keys.json`` -> ``checkpoint_layout``). They become three components:

- ``unet``: ``model.diffusion_model.*`` (1428 tensors) -> ``Sv3dUNet`` (diffusers layout);
- ``vae``: one ``AutoencoderKL`` without post-quant conv whose encoder and quant conv come from the
  conditioner's VAE (``conditioner.embedders.1.encoder.*``, what sgm encodes the concat latent
  with) and whose decoder is ``first_stage_model.decoder.*`` (what sgm decodes with, without a
  post-quant conv). The conditioner's own decoder and post-quant conv (140 tensors) are unused by
  the reference sampler and dropped by name;
- ``image_encoder``: the OpenCLIP ViT-H/14 visual tower -> ``CLIPVisionModelWithProjection``; the
  six text-tower leftovers OpenCLIP keeps are dropped by name.

Every other key, a missing key, a duplicate target or a shape mismatch fails with the key's name.
The result is written once with ``save_pretrained`` (safetensors) into the cache, keyed by the
file's path, size and modification time, the dtype and ``CONVERTER_VERSION``; later starts load
that folder with the ordinary ``from_pretrained`` path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from backends.sv3d.names import (
    CLIP_PREFIX,
    CLIP_TEXT_LEFTOVERS,
    COND_VAE_PREFIX,
    FIRST_STAGE_PREFIX,
    LEVELS,
    UNET_PREFIX,
    ConversionError,
    clip_to_transformers,
    unet_to_diffusers,
    vae_squeezed,
    vae_to_diffusers,
)

logger = logging.getLogger(__name__)

#: Bump when the conversion changes, so cached folders from an older converter are not reused.
CONVERTER_VERSION = "1"
COMPONENTS = ("unet", "vae", "image_encoder")
MARKER = "sv3d-converted.json"
#: sgm's VideoUNet uses 64-channel attention heads (num_head_channels 64 in both configs).
UNET_HEAD_CHANNELS = 64
#: OpenCLIP ViT-H/14 uses 80-channel heads (1280 / 16); tiny files follow the same rule.
CLIP_HEAD_CHANNELS = 80
#: sgm's first-stage scale factor (``first_stage.scale_factor``); the concat latent uses 1.0.
SCALE_FACTOR = 0.18215


@dataclass
class Converted:
    """The three components' configs and state dicts, plus the keys dropped on purpose."""

    configs: dict[str, dict[str, Any]]
    states: dict[str, dict[str, Any]]
    dropped: list[str] = field(default_factory=list)


def _group(keys: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {p: [] for p in (UNET_PREFIX, FIRST_STAGE_PREFIX, COND_VAE_PREFIX, CLIP_PREFIX)}
    for key in keys:
        prefix = next((p for p in groups if key.startswith(p)), None)
        if prefix is None:
            raise ConversionError(f"unexpected key {key!r}: not part of an SV3D checkpoint "
                                  f"(known prefixes: {', '.join(groups)})")
        groups[prefix].append(key[len(prefix):])
    for prefix, found in groups.items():
        if not found:
            raise ConversionError(f"no {prefix}* keys: is this an SV3D checkpoint?")
    return groups


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ConversionError(f"missing key {key!r}")
    return tuple(shapes[key])


def unet_config(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """``UNetSpatioTemporalConditionModel`` arguments read off the sgm UNet shapes (prefix stripped)."""
    widths = [_shape(shapes, f"input_blocks.{3 * level + 1}.0.out_layers.3.weight")[0] for level in range(LEVELS)]
    attention = [f"input_blocks.{3 * level + 1}.1.norm.weight" in shapes for level in range(LEVELS)]
    first = attention.index(True)
    conv_in = _shape(shapes, "input_blocks.0.0.weight")
    return dict(
        in_channels=conv_in[1],
        out_channels=_shape(shapes, "out.2.weight")[0],
        down_block_types=["CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in attention],
        up_block_types=["CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal"
                        for a in reversed(attention)],
        block_out_channels=widths,
        # Unused by Sv3dUNet's forward (it embeds the vector itself); 256 keeps u's stock meaning.
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=_shape(shapes, "label_emb.0.0.weight")[1],
        layers_per_block=2,
        cross_attention_dim=_shape(shapes, f"input_blocks.{3 * first + 1}.1.transformer_blocks.0.attn2.to_k.weight")[1],
        transformer_layers_per_block=1,
        num_attention_heads=[max(1, width // UNET_HEAD_CHANNELS) for width in widths],
        num_frames=21,
    )


def vae_config(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """``AutoencoderKL`` arguments from the conditioner VAE's LDM shapes (prefix stripped)."""
    widths = [_shape(shapes, f"encoder.down.{level}.block.1.conv1.weight")[0] for level in range(LEVELS)]
    return dict(
        in_channels=_shape(shapes, "encoder.conv_in.weight")[1],
        out_channels=_shape(shapes, "decoder.conv_out.weight")[0],
        down_block_types=["DownEncoderBlock2D"] * LEVELS,
        up_block_types=["UpDecoderBlock2D"] * LEVELS,
        block_out_channels=widths,
        layers_per_block=2,
        latent_channels=_shape(shapes, "decoder.conv_in.weight")[1],
        scaling_factor=SCALE_FACTOR,
        use_post_quant_conv=False,
    )


def clip_config(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """``CLIPVisionConfig`` arguments from the OpenCLIP visual shapes (prefix stripped)."""
    hidden = _shape(shapes, "visual.class_embedding")[0]
    patch = _shape(shapes, "visual.conv1.weight")[-1]
    positions = _shape(shapes, "visual.positional_embedding")[0]
    layers = len({k.split(".")[3] for k in shapes if k.startswith("visual.transformer.resblocks.")})
    mlp = _shape(shapes, "visual.transformer.resblocks.0.mlp.c_fc.weight")[0]
    return dict(hidden_size=hidden, intermediate_size=mlp, projection_dim=_shape(shapes, "visual.proj")[1],
                num_hidden_layers=layers, num_attention_heads=max(1, hidden // CLIP_HEAD_CHANNELS),
                image_size=round((positions - 1) ** 0.5) * patch, patch_size=patch, hidden_act="gelu",
                layer_norm_eps=1e-5)


def convert(tensors: Mapping[str, Any]) -> Converted:
    """Map a whole sgm state dict (real, tiny, or meta tensors) to the three components.

    Raises:
        ConversionError: an unknown, missing or duplicated key, named.
    """
    groups = _group(list(tensors))
    states: dict[str, dict[str, Any]] = {name: {} for name in COMPONENTS}
    dropped: list[str] = []

    def put(component: str, name: str, value: Any, source: str) -> None:
        if name in states[component]:
            raise ConversionError(f"{source} maps to {component}.{name}, which another key already filled")
        states[component][name] = value

    for key in groups[UNET_PREFIX]:
        put("unet", unet_to_diffusers(key), tensors[UNET_PREFIX + key], UNET_PREFIX + key)
    for prefix, keep in ((COND_VAE_PREFIX, ("encoder.", "quant_conv.")), (FIRST_STAGE_PREFIX, ("decoder.",))):
        for key in groups[prefix]:
            if not key.startswith(keep):
                dropped.append(prefix + key)
                continue
            name, value = vae_to_diffusers(key), tensors[prefix + key]
            if vae_squeezed(name):
                if tuple(value.shape[2:]) != (1, 1):
                    raise ConversionError(f"{prefix + key}: expected a 1x1 conv weight, got {list(value.shape)}")
                value = value[:, :, 0, 0]
            put("vae", name, value, prefix + key)
    for key in groups[CLIP_PREFIX]:
        if key in CLIP_TEXT_LEFTOVERS:
            dropped.append(CLIP_PREFIX + key)
            continue
        value = tensors[CLIP_PREFIX + key]
        names = clip_to_transformers(key)
        if len(names) == 3:  # fused q, k, v
            if value.shape[0] % 3:
                raise ConversionError(f"{CLIP_PREFIX + key}: first dim {value.shape[0]} is not 3 x width")
            for name, part in zip(names, value.chunk(3, dim=0)):
                put("image_encoder", name, part, CLIP_PREFIX + key)
        else:
            put("image_encoder", names[0], value.t().contiguous() if key == "visual.proj" else value, CLIP_PREFIX + key)
    shapes = {g: {k: tuple(tensors[g + k].shape) for k in keys} for g, keys in groups.items()}
    configs = {"unet": unet_config(shapes[UNET_PREFIX]), "vae": vae_config(shapes[COND_VAE_PREFIX]),
               "image_encoder": clip_config(shapes[CLIP_PREFIX])}
    return Converted(configs=configs, states=states, dropped=dropped)


def empty_module(component: str, config: dict[str, Any]) -> Any:
    """An uninitialised module (on the meta device) for ``component`` with ``config``."""
    import torch

    with torch.device("meta"):
        if component == "unet":
            from backends.sv3d.unet import Sv3dUNet

            return Sv3dUNet(**config)
        if component == "vae":
            from diffusers import AutoencoderKL

            return AutoencoderKL(**config)
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        return CLIPVisionModelWithProjection(CLIPVisionConfig(**config))


def build_modules(converted: Converted, where: str) -> dict[str, Any]:
    """Modules holding the converted tensors; strict: every key and shape must match.

    Raises:
        ModelUnavailable: from ``load_state_dict_strict``, naming the keys that differ.
    """
    from backends.runtime.loading import load_state_dict_strict

    modules = {}
    for component in COMPONENTS:
        module = empty_module(component, converted.configs[component])
        load_state_dict_strict(module, converted.states[component], f"{where} ({component})")
        modules[component] = module
    return modules


def cache_key(path: Path, dtype: str) -> str:
    """Identifies a converted folder: the file (path, size, mtime), dtype and converter version."""
    stat = path.stat()
    text = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, dtype, CONVERTER_VERSION])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_converted(path: Path, cache_dir: Path, dtype: str,
                     read: Callable[[Path], dict[str, Any]] | None = None) -> Path:
    """The folder of converted components for checkpoint ``path``, converting it on first use.

    The folder holds ``unet/``, ``vae/`` and ``image_encoder/`` in diffusers / transformers format
    (safetensors) and a marker written last; it is built in a temporary folder and renamed into
    place, so a crash never leaves a half-written cache.
    """
    target = Path(cache_dir) / "sv3d" / f"{path.stem}-{cache_key(path, dtype)}"
    if (target / MARKER).is_file():
        return target
    import torch

    started = time.perf_counter()
    tensors = (read or _read)(path)
    converted = convert(tensors)
    modules = build_modules(converted, str(path))
    del tensors
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.converting-", dir=target.parent))
    try:
        torch_dtype = getattr(torch, dtype)
        for component, module in modules.items():
            # The VAE stays float32: the SD VAE overflows in float16 (its force_upcast), and it is small.
            keep = torch.float32 if component == "vae" else torch_dtype
            if module.dtype != keep:  # .to() on a same-dtype model only logs a diffusers warning
                module = module.to(keep)
            module.save_pretrained(staging / component, safe_serialization=True)
        marker = {"source": str(path), "dtype": dtype, "dropped": len(converted.dropped), "version": CONVERTER_VERSION}
        (staging / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its copy is as good as ours
            if not (target / MARKER).is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("converted %s to %s in %.2f s (%d keys dropped by name)", path, target,
                time.perf_counter() - started, len(converted.dropped))
    return target


def _read(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")
