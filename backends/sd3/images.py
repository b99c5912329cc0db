"""Picture-side steps of SD3.5's img2img and inpaint: how many steps run, and the inpaint overlay.

Split from the backend so that each is one small function a test can hold against diffusers.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from backends.runtime.image_requests import MASK_THRESHOLD


def steps_run(steps: int, strength: float) -> int:
    """Denoising steps img2img and inpaint actually run: the pipelines' ``get_timesteps`` arithmetic.

    The pipelines skip the first ``int(steps - steps * strength)`` of ``steps`` timesteps, so
    strength 0.8 of 4 steps runs all 4 (``int(0.8)`` is 0) and strength 0 runs none.
    """
    start = int(max(steps - min(steps * strength, steps), 0))
    return steps - start


def binary_mask(mask: Image.Image) -> Image.Image:
    """The repaint mask as the pipelines binarise it: 255 where at least ``MASK_THRESHOLD``, else 0."""
    return mask.convert("L").point(lambda value: 255 if value >= MASK_THRESHOLD else 0)


def seam_mask(mask: Image.Image, blur: int) -> Image.Image:
    """The overlay's mask: the binary mask with its edge feathered by a Gaussian blur of ``blur`` px.

    Pixels where this is 0 keep the input exactly; 255 take the result; in between they blend.
    """
    from diffusers.image_processor import VaeImageProcessor

    binary = binary_mask(mask)
    return VaeImageProcessor.blur(binary, blur) if blur > 0 else binary


def overlay(processor: Any, mask: Image.Image, original: Image.Image, result: Image.Image,
            blur: int) -> Image.Image:
    """Lay the input's own pixels back over an inpaint result outside the (feathered) mask.

    Outside the mask the decoded pixels are only a VAE round trip of the input (the latents there
    are the input's), which softens detail; A1111 and diffusers' ``padding_mask_crop`` path paste
    the original back the same way, with ``VaeImageProcessor.apply_overlay``.

    Args:
        processor: the pipeline's ``VaeImageProcessor`` (``apply_overlay`` is a method of it).
        mask: the request's mask, white = repaint.
        original: the input picture (RGB, the result's size).
        result: the decoded picture.
        blur: the seam's blur radius in pixels (``sd3.mask_blur``).
    """
    return processor.apply_overlay(seam_mask(mask, blur), original.convert("RGB"), result)
