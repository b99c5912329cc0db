"""Tensor steps of the SVD pipeline that our sampling loop must reproduce bit for bit.

``backends.svd.backend`` runs its own loop over the models; these are the pieces where the stock
``StableVideoDiffusionPipeline`` (diffusers 0.42.1) does something particular: the memory layout of
the input picture, the CLIP resize, the 8-bit rounding of the frames, and the float32 encode of a
float16 VAE. The equivalence tests in ``tests/backends/svd/test_backend.py`` fail if any of them drifts.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

#: SVD resizes the conditioning image to CLIP's input size itself, with antialiasing.
CLIP_SIZE = (224, 224)


def image_tensor(image: Image.Image) -> torch.Tensor:
    """A picture as a (1, 3, H, W) float tensor in [0, 1], laid out as diffusers lays it out.

    Like ``VaeImageProcessor``, the pixels stay in height-width-channel memory, viewed as NCHW.
    Convolutions pick their algorithm by memory layout, so another layout changes the last bits of
    the latents (measured: 1.6e-6 on the tiny VAE) and the equivalence with the pipeline is lost.
    """
    array = np.stack([np.array(image).astype(np.float32) / 255.0])
    return torch.from_numpy(array.transpose(0, 3, 1, 2))


def clip_resize(pixels: torch.Tensor) -> torch.Tensor:
    """Resize [-1, 1] images to 224 px exactly as the SVD pipeline does (blur, then bicubic).

    This is a private helper of diffusers 0.42.1's SVD pipeline module. We import it instead of
    re-deriving its Gaussian kernel so the CLIP input matches bit for bit; the equivalence test
    fails if a diffusers update changes it.
    """
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
        _resize_with_antialiasing,
    )

    return _resize_with_antialiasing(pixels, CLIP_SIZE)


def to_pil_frames(decoded: torch.Tensor) -> list[Image.Image]:
    """Decoded frames in [-1, 1], (n, 3, H, W), to 8-bit images (the pipeline's rounding)."""
    array = (decoded.float() * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(frame) for frame in (array * 255).round().astype(np.uint8)]


def set_forward_chunking(unet: torch.nn.Module, enabled: bool) -> None:
    """Run the transformer feed-forward layers one sample at a time (or not).

    diffusers 0.42.1 has ``enable_forward_chunking`` but no way back on this UNet; its blocks'
    ``set_chunk_feed_forward(None)`` switches chunking off again.
    """
    if enabled:
        unet.enable_forward_chunking()
        return
    for module in unet.modules():
        if hasattr(module, "set_chunk_feed_forward"):
            module.set_chunk_feed_forward(chunk_size=None, dim=0)


def float32_call(module: torch.nn.Module, inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Run ``module`` on float32 copies of its weights (its own tensors are left untouched)."""
    weights = {name: tensor.to(device, torch.float32)
               for name, tensor in (*module.named_parameters(), *module.named_buffers())}
    return torch.func.functional_call(module, weights, (inputs.to(device, torch.float32),))
