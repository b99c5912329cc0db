"""The SV3D UNet: diffusers' spatio-temporal UNet with one added embedding per frame.

diffusers 0.42.1's ``UNetSpatioTemporalConditionModel.forward`` embeds one ``added_time_ids`` row
per video and repeats it over the frames, and it embeds every id with the same width. SV3D_p
conditions each frame on its own camera (cond_aug 256 + polar 512 + azimuth 512 sinusoids, 1280
wide; ``shared/data/sv3d_p_unet_keys.json`` -> ``vector_conditioning``), so neither holds. This
subclass keeps every module and weight name of the parent and only replaces ``forward``: it takes
the already built vector ``y`` of shape (batch * frames, adm) and adds ``add_embedding(y)`` to each
frame's time embedding, as sgm's VideoUNet does (``emb = time_embed(t) + label_emb(y)``).
SV3D_u goes through the same path with its 256-wide cond_aug vector.

It also restores sgm's normalisation epsilon in the resnets: diffusers 0.42.1's cross-attention
down blocks and all its spatio-temporal up blocks build their ``SpatioTemporalResBlock``s with
GroupNorm eps 1e-6 whatever ``resnet_eps`` the UNet passes (72 of the 88 resnet norms of the SV3D
layout), whereas SV3D was trained with sgm's ``GroupNorm32`` (torch's default 1e-5). With 1e-5 this
UNet equals sgm's ``VideoUNet`` to 1e-14 in float64 (shared/NOTES.md, December 2026 review). The
transformers' input GroupNorms keep 1e-6: sgm builds those with ``attention.Normalize`` (1e-6) too.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from diffusers import UNetSpatioTemporalConditionModel

#: Epsilon of sgm's ``GroupNorm32`` (``normalization(channels)`` = ``GroupNorm32(32, channels)``,
#: torch's default), which every resnet norm of SV3D's ``VideoUNet`` uses, temporal ones included.
SGM_RESNET_EPS = 1e-5


def sinusoid(values: torch.Tensor, width: int) -> torch.Tensor:
    """sgm's ``timestep_embedding`` of raw scalars: cos then sin, max period 10000, (n, width).

    The manifests record it equals diffusers ``Timesteps(width, flip_sin_to_cos=True,
    downscale_freq_shift=0)``; ``tests/backends/sv3d/test_backend.py`` checks that.
    """
    half = width // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = values.float().reshape(-1, 1) * freqs.to(values.device).reshape(1, -1)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class Sv3dUNet(UNetSpatioTemporalConditionModel):
    """``UNetSpatioTemporalConditionModel`` whose added embedding is given per frame."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Build the parent unchanged, then set sgm's eps on every resnet GroupNorm.

        Done here, not after loading, so every way of building the UNet (``from_pretrained``, the
        converter's meta-device build, a test) gets the same numerics. Takes exactly the
        parent's arguments (see the ``__signature__`` below).
        """
        super().__init__(*args, **kwargs)
        for block in (*self.down_blocks, self.mid_block, *self.up_blocks):
            for resnet in block.resnets:
                for module in resnet.modules():
                    if isinstance(module, torch.nn.GroupNorm):
                        module.eps = SGM_RESNET_EPS

    # diffusers' ConfigMixin reads the accepted config keys off ``inspect.signature(cls.__init__)``
    # (configuration_utils.extract_init_dict, 0.42.1); with a bare ``*args, **kwargs`` it would drop
    # every key of a saved config.json and build the default (SVD-sized) UNet instead.
    __init__.__signature__ = inspect.signature(UNetSpatioTemporalConditionModel.__init__)  # type: ignore[attr-defined]

    def forward(self, sample: torch.Tensor, c_noise: torch.Tensor, encoder_hidden_states: torch.Tensor,
                y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """One denoiser evaluation.

        Args:
            sample: (batch, frames, in_channels, h, w): scaled noisy latents and the concat latent.
            c_noise: (batch,) noise conditioning (0.25 ln sigma), the same for all frames of a video.
            encoder_hidden_states: (batch, 1, cross_attention_dim), repeated over the frames here.
            y: (batch * frames, adm) the conditioning vector, one row per frame.

        Returns:
            (batch, frames, out_channels, h, w) network output (v-prediction).
        """
        batch, frames = sample.shape[:2]
        t_emb = self.time_proj(c_noise.reshape(-1).expand(batch)).to(sample.dtype)
        emb = self.time_embedding(t_emb).repeat_interleave(frames, dim=0)
        emb = emb + self.add_embedding(y.to(emb.dtype))
        context = encoder_hidden_states.repeat_interleave(frames, dim=0)
        hidden = self.conv_in(sample.flatten(0, 1))
        # All frames are video frames (sgm passes zeros too), so the temporal layers always mix.
        indicator = torch.zeros(batch, frames, dtype=hidden.dtype, device=hidden.device)
        skips: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            extra = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            hidden, res = block(hidden_states=hidden, temb=emb, image_only_indicator=indicator, **extra)
            skips += res
        hidden = self.mid_block(hidden_states=hidden, temb=emb, encoder_hidden_states=context,
                                image_only_indicator=indicator)
        for index, block in enumerate(self.up_blocks):
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            extra = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            upsample_size = skips[-1].shape[2:] if index < len(self.up_blocks) - 1 and skips else None
            hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res,
                           upsample_size=upsample_size, image_only_indicator=indicator, **extra)
        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return hidden.reshape(batch, frames, *hidden.shape[1:])
