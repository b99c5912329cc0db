"""Stable Cascade's EfficientNet encoder in plain torch: an image to its stage C latent.

Stage C is trained to generate the latents of this encoder (EfficientNetV2-S features plus a 1x1
"mapper" to 16 channels), so encoding an image with it gives img2img its starting point. The
official code builds it from torchvision, which does not import beside our torch (NOTES.md); this
module rebuilds the same module tree, so ``effnet_encoder.safetensors`` loads strictly by key and
shape (``shared/data/cascade_effnet_encoder_keys.json``: 784 tensors including the BatchNorm
buffers). Widths and depths are a config, so the tiny test model shares every line of this code.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from backends.cascade.spec import EFFNET_FILE
from backends.runtime.loading import LoadContext, Source, load_state_dict_strict, read_safetensors

logger = logging.getLogger(__name__)

#: Safetensors metadata key of our tiny builds: the config as JSON. Real files lack it.
CONFIG_KEY = "cascade_studio.effnet_config"
#: ImageNet statistics the encoder was trained with (``effnet_preprocess`` in train_c.py).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: Image pixels per latent pixel: the stem and four stages each halve the size.
DOWNSAMPLE = 32
#: torchvision builds EfficientNetV2's BatchNorms with eps 1e-3 (the mapper keeps the default).
BACKBONE_BN_EPS = 1e-3


@dataclass(frozen=True)
class StageSpec:
    """One stage of identical blocks; the first one may change stride and width."""

    #: FusedMBConv (a full 3x3 conv) or MBConv (1x1 expand, depthwise 3x3, squeeze-excite).
    fused: bool
    #: Width of a block's inner layers as a multiple of its input width.
    expand: int
    #: Stride of the first block (the others keep the size).
    stride: int
    out_channels: int
    layers: int


@dataclass(frozen=True)
class EffnetConfig:
    """Widths and depths; the defaults are EfficientNetV2-S with the 16-channel mapper."""

    stem: int = 24
    stages: tuple[StageSpec, ...] = (
        StageSpec(True, 1, 1, 24, 2),
        StageSpec(True, 4, 2, 48, 4),
        StageSpec(True, 4, 2, 64, 4),
        StageSpec(False, 4, 2, 128, 6),
        StageSpec(False, 6, 1, 160, 9),
        StageSpec(False, 6, 2, 256, 15),
    )
    head: int = 1280
    latent_channels: int = 16

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "EffnetConfig":
        data: dict[str, Any] = json.loads(text)
        stages = tuple(StageSpec(**stage) for stage in data.pop("stages"))
        return cls(stages=stages, **data)


class ConvNormAct(nn.Sequential):
    """Conv (no bias), BatchNorm and optionally SiLU: keys ``0.weight`` and ``1.*`` as torchvision."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 activation: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=BACKBONE_BN_EPS),
        ]
        if activation:
            layers.append(nn.SiLU())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel gate from the pooled features; ``fc1``/``fc2`` are 1x1 convs with bias."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(scale))))


class EffnetBlock(nn.Module):
    """FusedMBConv or MBConv; ``block`` holds the layers under the indices torchvision uses.

    Stochastic depth is left out: it is the identity at inference.
    """

    def __init__(self, fused: bool, c_in: int, c_out: int, expand: int, stride: int) -> None:
        super().__init__()
        inner = c_in * expand
        layers: list[nn.Module] = []
        if fused:
            if inner == c_in:  # expand 1: a single 3x3 conv does the whole block
                layers.append(ConvNormAct(c_in, c_out, 3, stride))
            else:
                layers += [ConvNormAct(c_in, inner, 3, stride), ConvNormAct(inner, c_out, 1, activation=False)]
        else:
            if inner != c_in:
                layers.append(ConvNormAct(c_in, inner, 1))
            layers += [
                ConvNormAct(inner, inner, 3, stride, groups=inner),
                # The squeeze width is a quarter of the block's *input* width, not the inner one.
                SqueezeExcite(inner, max(1, c_in // 4)),
                ConvNormAct(inner, c_out, 1, activation=False),
            ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class EfficientNetEncoder(nn.Module):
    """``backbone`` (EfficientNetV2-S features) then ``mapper`` (1x1 conv + affine-free BatchNorm).

    The mapper's BatchNorm normalises each latent channel with running statistics, so the output
    is roughly zero-mean, unit-variance: the scale stage C was trained on.
    """

    def __init__(self, config: EffnetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EffnetConfig()
        stages: list[nn.Module] = [ConvNormAct(3, config.stem, 3, 2)]
        width = config.stem
        for spec in config.stages:
            blocks = []
            for index in range(spec.layers):
                stride = spec.stride if index == 0 else 1
                blocks.append(EffnetBlock(spec.fused, width, spec.out_channels, spec.expand, stride))
                width = spec.out_channels
            stages.append(nn.Sequential(*blocks))
        stages.append(ConvNormAct(width, config.head, 1))
        self.backbone = nn.Sequential(*stages)
        self.mapper = nn.Sequential(
            nn.Conv2d(config.head, config.latent_channels, 1, bias=False),
            nn.BatchNorm2d(config.latent_channels, affine=False),
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.mapper[0].weight.dtype

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised pixels (B, 3, H, W), H and W multiples of 32 -> (B, 16, H/32, W/32)."""
        return self.mapper(self.backbone(pixels))

    def working_bytes(self, height: int, width: int, batch: int = 1) -> int:
        """Peak activation memory for one forward at this pixel size (for the memory manager).

        The widest tensor of each stage (inner width at that stage's resolution), times three
        live tensors (input, inner, output of a block), in the weights' dtype.
        """
        size = torch.finfo(self.dtype).bits // 8
        pixels = height * width
        widest = 3 * pixels  # the input image
        scale, c_in = 4, self.config.stem  # the stem halves each side
        widest = max(widest, c_in * pixels // scale)
        for spec in self.config.stages:
            scale *= spec.stride**2
            widest = max(widest, c_in * spec.expand * pixels // scale, spec.out_channels * pixels // scale)
            c_in = spec.out_channels
        widest = max(widest, self.config.head * pixels // scale)
        return 3 * batch * widest * size


def effnet_pixels(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """The encoder's input for ``image`` at ``width`` x ``height`` (multiples of 32): (1, 3, H, W).

    The image is scaled to cover the frame and centre-cropped (no distortion), resized once with
    PIL's antialiased bilinear filter, then normalised with ImageNet statistics as the official
    ``effnet_preprocess`` does.
    """
    if width % DOWNSAMPLE or height % DOWNSAMPLE:
        raise ValueError(f"effnet input must be a multiple of {DOWNSAMPLE} pixels, got {width}x{height}")
    fitted = cover_crop(image.convert("RGB"), width, height, Image.Resampling.BILINEAR)
    array = np.asarray(fitted, dtype=np.float32) / 255.0
    pixels = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def cover_crop(image: Image.Image, width: int, height: int,
               resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """Scale ``image`` to cover ``width`` x ``height`` and crop the centre: one resample, no stretch."""
    source_w, source_h = image.size
    scale = max(width / source_w, height / source_h)
    crop_w, crop_h = width / scale, height / scale
    left, top = (source_w - crop_w) / 2, (source_h - crop_h) / 2
    return image.resize((width, height), resample, box=(left, top, left + crop_w, top + crop_h))


def load_effnet(source: Source, ctx: LoadContext, dtype: torch.dtype) -> EfficientNetEncoder:
    """Read ``effnet_encoder.safetensors`` from ``source`` into a strictly matching encoder.

    Tiny builds carry their (smaller) config in the file's metadata; the released file has none
    and gets the real EfficientNetV2-S config.

    Raises:
        ModelUnavailable: the file is missing, or its keys or shapes do not match the module.
    """
    state, metadata, where = read_safetensors(source, EFFNET_FILE, ctx)
    config = EffnetConfig.from_json(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else EffnetConfig()
    with torch.device("meta"):
        module = EfficientNetEncoder(config)
    load_state_dict_strict(module, state, where)
    return module.to(dtype).eval().requires_grad_(False)
