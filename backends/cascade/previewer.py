"""Stable Cascade's previewer in plain torch: a stage C latent to a small RGB image, fast.

The previewer was trained (``decode_latents`` in the official train_c.py) to show what a stage C
latent depicts, at 8x its size (24x24 -> 192x192), without running stages B and A. We use it for
live previews while stage C denoises. The module tree reproduces the released
``previewer.safetensors`` key for key (``shared/data/cascade_previewer_keys.json``: 58 tensors):
one ``blocks`` Sequential of [conv, GELU, BatchNorm] groups and a final 1x1 conv.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from PIL import Image
from torch import nn

from backends.cascade.spec import PREVIEWER_FILE
from backends.runtime.loading import LoadContext, Source, load_state_dict_strict, read_safetensors

logger = logging.getLogger(__name__)

#: Safetensors metadata key of our tiny builds: ``{"c_in": .., "c_hidden": .., "c_out": ..}``.
CONFIG_KEY = "cascade_studio.previewer_config"
#: Output pixels per latent pixel (three stride-2 transposed convs).
UPSAMPLE = 8


class Previewer(nn.Module):
    """``blocks``: four resolutions, each a conv (1x1 first, else 3x3) and at three of them a 2x
    transposed conv, every conv followed by GELU and BatchNorm; then a 1x1 conv to RGB.

    Widths go ``c_hidden`` -> ``c_hidden / 2`` -> ``c_hidden / 4`` -> ``c_hidden / 4``; the released
    model has ``c_hidden`` 512. The output is roughly in [0, 1]; callers clamp it.
    """

    def __init__(self, c_in: int = 16, c_hidden: int = 512, c_out: int = 3) -> None:
        super().__init__()
        self.c_in, self.c_hidden, self.c_out = c_in, c_hidden, c_out
        widths = (c_hidden, c_hidden // 2, c_hidden // 4, c_hidden // 4)
        layers: list[nn.Module] = []

        def add(conv: nn.Module, channels: int) -> None:
            layers.extend([conv, nn.GELU(), nn.BatchNorm2d(channels)])

        add(nn.Conv2d(c_in, widths[0], 1), widths[0])
        for level, width in enumerate(widths):
            if level:  # each deeper level starts by doubling the size
                add(nn.ConvTranspose2d(widths[level - 1], width, 2, stride=2), width)
            add(nn.Conv2d(width, width, 3, padding=1), width)
        layers.append(nn.Conv2d(widths[-1], c_out, 1))
        self.blocks = nn.Sequential(*layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.blocks[0].weight.dtype

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, c_in, h, w) -> (B, c_out, 8h, 8w)."""
        return self.blocks(latents)

    def working_bytes(self, height: int, width: int, batch: int = 1) -> int:
        """Peak activation memory for latents of ``height`` x ``width``: the last level's 8x-size
        tensors (a quarter of ``c_hidden`` wide, three alive at once), in the weights' dtype."""
        size = torch.finfo(self.dtype).bits // 8
        return 3 * batch * (self.c_hidden // 4) * height * width * UPSAMPLE**2 * size


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """Previewer output (B, 3, H, W), roughly in [0, 1], as 8-bit RGB images."""
    array = pixels.clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()  # numpy has no bfloat16
    return [Image.fromarray(image) for image in (array * 255).round().astype(np.uint8)]


def load_previewer(source: Source, ctx: LoadContext, dtype: torch.dtype) -> Previewer:
    """Read ``previewer.safetensors`` from ``source`` into a strictly matching previewer.

    Raises:
        ModelUnavailable: the file is missing, or its keys or shapes do not match the module.
    """
    state, metadata, where = read_safetensors(source, PREVIEWER_FILE, ctx)
    config = json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else {}
    with torch.device("meta"):
        module = Previewer(**config)
    load_state_dict_strict(module, state, where)
    return module.to(dtype).eval().requires_grad_(False)
