"""Stock diffusers Stable Cascade, assembled from the very modules our backend loaded.

Built as ``tests/backends/cascade/test_backend.py::test_matches_the_stock_diffusers_pipelines`` does:
the prior and decoder pipelines get our tokenizer, schedulers and modules, so both paths run the
same weights, and the same seeds give the same latents (reported as ``same_latents``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from backends.runtime.requests import image_seed

logger = logging.getLogger(__name__)


class StockCascade:
    """``StableCascadePriorPipeline`` + ``StableCascadeDecoderPipeline`` over given modules."""

    def __init__(self, backend: Any, modules: dict[str, torch.nn.Module]) -> None:
        """Args:
            backend: our ``CascadeBackend`` (for its tokenizer and scheduler configs).
            modules: ``text_encoder``, ``prior``, ``decoder``, ``vqgan`` (``models.cascade_modules``).
        """
        from diffusers import DDPMWuerstchenScheduler, StableCascadeDecoderPipeline, StableCascadePriorPipeline

        tokenizer, prior_scheduler, decoder_scheduler = backend._aux()
        with warnings.catch_warnings():
            # The pipelines are deprecated in diffusers 0.42 and warn on construction (NOTES.md).
            warnings.simplefilter("ignore", FutureWarning)
            self.prior = StableCascadePriorPipeline(
                tokenizer=tokenizer, text_encoder=modules["text_encoder"], prior=modules["prior"],
                scheduler=DDPMWuerstchenScheduler.from_config(prior_scheduler.config))
            self.decoder = StableCascadeDecoderPipeline(
                decoder=modules["decoder"], tokenizer=tokenizer, text_encoder=modules["text_encoder"],
                scheduler=DDPMWuerstchenScheduler.from_config(decoder_scheduler.config), vqgan=modules["vqgan"])
        for pipe in (self.prior, self.decoder):
            pipe.set_progress_bar_config(disable=True)

    def enable_model_cpu_offload(self, device: torch.device) -> None:
        """Stock offload: each model on the GPU only while it runs. Raises without an accelerator
        (diffusers 0.42: ``RuntimeError ... requires accelerator``), so callers guard it."""
        for pipe in (self.prior, self.decoder):
            pipe.enable_model_cpu_offload(device=device)

    def remove_offload(self) -> None:
        """Take accelerate's hooks off again, so the modules are plain for whoever runs next."""
        for pipe in (self.prior, self.decoder):
            pipe.remove_all_hooks()

    def run(self, request: Any) -> tuple[torch.Tensor, list[Any]]:
        """One text-to-image: stage C latents and PIL images, seeded as our backend seeds them
        (image i at ``image_seed(seed, i)``, its stage B at that + 1)."""
        all_embeddings, images = [], []
        for index in range(request.num_images):
            seed = image_seed(request.seed, index)
            embeddings = self.prior(
                prompt=request.prompt, negative_prompt=request.negative_prompt, height=request.height,
                width=request.width, num_inference_steps=request.prior_steps, guidance_scale=request.prior_guidance,
                num_images_per_prompt=1, generator=torch.Generator("cpu").manual_seed(seed),
            ).image_embeddings
            images += self.decoder(
                image_embeddings=embeddings, prompt=request.prompt, negative_prompt=request.negative_prompt,
                num_inference_steps=request.decoder_steps, guidance_scale=request.decoder_guidance,
                generator=torch.Generator("cpu").manual_seed(seed + 1), output_type="pil",
            ).images
            all_embeddings.append(embeddings)
        return torch.cat(all_embeddings), images
