"""How many steps the base and the refiner run for a job, worked out before any model loads.

The pipelines decide this inside their calls (``get_timesteps`` for img2img's strength, then the
``denoising_end`` / ``denoising_start`` cut-off for the ensemble of experts); we compute the same
counts first, from a scheduler of the same config, so that a job whose hand-over leaves one of
the models no step is refused before any work, with an error naming the field, and so that
img2img's "strength too low for any step" is known before the VAE runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backends.runtime.errors import InputError


@dataclass(frozen=True)
class StepPlan:
    """The steps each model runs for one image."""

    #: Steps the base UNet runs (0: img2img's strength leaves no step; the picture only goes
    #: through the VAE).
    base: int
    #: Steps the refiner runs (0 when the refiner is off or nothing is denoised).
    refiner: int


def plan_steps(scheduler: Any, steps: int, strength: float | None, refiner: bool, high_noise_frac: float) -> StepPlan:
    """The base's and the refiner's step counts, as diffusers 0.42.1's SDXL pipelines count them.

    Args:
        scheduler: a scheduler of the job's config (its state is not touched: a copy is used).
        strength: img2img and inpaint's; None for text-to-image.

    Raises:
        InputError: with the refiner, a hand-over that leaves the base or the refiner no step
            (field ``high_noise_frac``).
    """
    schedule = type(scheduler).from_config(scheduler.config)
    schedule.set_timesteps(steps)
    timesteps = schedule.timesteps
    if strength is not None:  # img2img / inpaint ``get_timesteps``
        kept = min(int(steps * strength), steps)
        timesteps = timesteps[max(steps - kept, 0) * schedule.order:]
    if len(timesteps) == 0 or not refiner:
        return StepPlan(base=len(timesteps), refiner=0)
    trained = schedule.config.num_train_timesteps
    cutoff = int(round(trained - high_noise_frac * trained))
    base = int((timesteps >= cutoff).sum())
    later = int((schedule.timesteps < cutoff).sum())
    if schedule.order == 2 and later % 2 == 0:  # as the refiner's get_timesteps does for 2nd-order solvers
        later += 1
    left = f"the {len(timesteps)} steps that strength {strength:g} leaves" if strength is not None else \
        f"{steps} steps"
    if base == 0:
        raise InputError("high_noise_frac", f"{high_noise_frac:g} leaves the base model none of {left} (they all "
                                            "come after the hand-over to the refiner); lower high_noise_frac, "
                                            "use more steps or a higher strength, or turn the refiner off")
    if later == 0:
        raise InputError("high_noise_frac", f"{high_noise_frac:g} leaves the refiner none of {left}; lower "
                                            "high_noise_frac or turn the refiner off")
    return StepPlan(base=base, refiner=later)
