"""The Würstchen DDPM sampling loop shared by stages C and B, and where stage C may start.

Split from ``backends.cascade.backend`` (which orchestrates the stages) because img2img and previews
change only these two things: the starting point and schedule (an encoded image noised to a
strength instead of pure noise), and what happens after each step (a preview of the latent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from backends.runtime.progress import ProgressFn

#: Called after each step with (step, total, sample before the step, noise prediction, ratio t).
StepObserver = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device,
          dtype: torch.dtype) -> torch.Tensor:
    """Gaussian noise drawn on the CPU generator, then moved: the same numbers on every device."""
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


@dataclass(frozen=True)
class StageCStart:
    """img2img: stage C starts from the input's latent noised to ``strength``, not pure noise.

    The official notebooks noise the EfficientNet latent to ``t = strength`` and run
    ``int(steps * strength)`` steps from there to 0; we do the same with the diffusers scheduler's
    ``add_noise`` and a schedule from ``strength`` to 0, with the step count rounded (not cut)
    and at least one step, so any noise added is also removed.
    """

    #: The encoded input, (1, 16, h, w) at the request's stage C size, any device.
    latents: torch.Tensor
    #: In [0, 1]: 0 keeps the latent (stage C does not run), 1 is plain text-to-image.
    strength: float

    def steps(self, total_steps: int) -> int:
        """How many of the request's ``total_steps`` run from this start (0 at strength 0)."""
        if self.strength <= 0:
            return 0
        return max(1, round(total_steps * self.strength))

    def begin(self, pure_noise: torch.Tensor, scheduler: Any, total_steps: int
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Initial latents and the timestep ratios to run (None: the scheduler's full schedule).

        ``pure_noise`` is the same draw text-to-image starts from, so strength 1 is exactly
        text-to-image at the same seed.
        """
        if self.strength >= 1:
            return pure_noise, None
        batch = pure_noise.shape[0]
        image = self.latents.to(pure_noise.device, pure_noise.dtype).expand(batch, -1, -1, -1)
        start = torch.full((batch,), self.strength, device=pure_noise.device)
        noised = scheduler.add_noise(image, pure_noise, start)
        timesteps = torch.linspace(self.strength, 0.0, self.steps(total_steps) + 1, device=pure_noise.device)
        return noised, timesteps


def predicted_clean(scheduler: Any, sample: torch.Tensor, prediction: torch.Tensor,
                    ratio: torch.Tensor) -> torch.Tensor:
    """The model's current estimate of the clean latent: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a).

    ``a`` (alpha-cumprod at ``ratio``) comes from the scheduler's public ``add_noise`` applied to
    ones and zeros, because its schedule function is private in diffusers 0.42.1.
    """
    shape = (sample.shape[0], 1, 1, 1)
    t = ratio.float()
    ones = torch.ones(shape, device=sample.device)
    signal = scheduler.add_noise(ones, torch.zeros_like(ones), t)  # sqrt(a)
    sigma = scheduler.add_noise(torch.zeros_like(ones), ones, t)  # sqrt(1 - a)
    return ((sample.float() - sigma * prediction.float()) / signal).to(sample.dtype)


def denoise(model: torch.nn.Module, scheduler: Any, latents: torch.Tensor, steps: int, guidance: float,
            generator: torch.Generator, stage: str, progress: ProgressFn, *,
            timesteps: torch.Tensor | None = None, observe: StepObserver | None = None,
            **conditioning: torch.Tensor) -> torch.Tensor:
    """The Würstchen DDPM loop shared by stages C and B.

    ``conditioning`` is already doubled (conditional first, unconditional second) when
    ``guidance > 1``; the latents are doubled here. The timestep ratio is cast to the model dtype
    before it reaches the scheduler, exactly as the pipelines do, so bfloat16 runs match them too.
    ``timesteps`` (ratios ending at 0) replaces the full schedule of ``steps`` steps; ``observe``
    sees every step after it is reported to ``progress``.
    """
    cfg = guidance > 1
    if timesteps is None:
        scheduler.set_timesteps(steps, device=latents.device)
    else:
        scheduler.set_timesteps(timesteps=timesteps.to(latents.device))
    # The scheduler lists the ratios down to 0; the last one is only the target of the final step.
    schedule = scheduler.timesteps[:-1]
    latents = latents * scheduler.init_noise_sigma
    for index, t in enumerate(schedule):
        ratio = t.expand(latents.size(0)).to(latents.dtype)
        prediction = model(
            sample=torch.cat([latents] * 2) if cfg else latents,
            timestep_ratio=torch.cat([ratio] * 2) if cfg else ratio,
            return_dict=False,
            **conditioning,
        )[0]
        if cfg:
            conditional, unconditional = prediction.chunk(2)
            prediction = torch.lerp(unconditional, conditional, guidance)
        sample = latents
        latents = scheduler.step(model_output=prediction, timestep=ratio, sample=latents,
                                 generator=generator).prev_sample
        progress(stage, index + 1, len(schedule))
        if observe is not None:
            observe(index + 1, len(schedule), sample, prediction, ratio)
    return latents
