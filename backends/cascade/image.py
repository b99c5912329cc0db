"""Stable Cascade from an image: variations, img2img, and the previewer behind live previews.

Split from ``backends.cascade.backend`` along the "image side" seam: the three extra components (CLIP
image encoder, EfficientNet encoder, previewer) and what they feed into the shared stages.

- **Variation** follows ``StableCascadePriorPipeline(images=[...])`` of diffusers 0.42.1: the
  feature extractor's 224 px crop through the CLIP image encoder gives ``clip_img`` for stage C
  (zeros for the unconditional half of classifier-free guidance); the prompt may be empty, as
  in the official notebook.
- **img2img** follows the official notebooks: the EfficientNet latent of the image, noised to
  ``strength``, denoised for the remaining steps; no image embedding (``eval_image_embeds=False``).
  The image is cropped to the output's aspect and resized to 32 px per stage C latent pixel, so
  its latent has exactly the size stage C makes for that output (24x24 for 1024 px, the size the
  official reconstruction notebook and stage C training use).
- **Previews** decode the model's current estimate of the clean latent with the previewer.

The three components register with the memory manager on first use, so a text-only session's
``/status`` lists only what it loaded.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence

import torch
from PIL import Image

from backends.cascade.effnet import DOWNSAMPLE, effnet_pixels, load_effnet
from backends.cascade.previewer import load_previewer, to_images
from backends.cascade.sampling import StageCStart, StepObserver, predicted_clean
from backends.cascade.stages import CascadeJob, ImageResult, stage_c_size
from backends.runtime.loading import describe_source, load_pretrained
from backends.runtime.previews import WithPreviews
from backends.runtime.progress import ProgressFn

if TYPE_CHECKING:
    from backends.cascade.requests import ImageVariationRequest, Img2ImgRequest
    from backends.cascade.spec import CascadeSettings
    from backends.runtime.loading import LoadContext
    from backends.runtime.memory import MemoryManager

logger = logging.getLogger(__name__)

IMAGE_ENCODER = "cascade.image_encoder"
EFFNET = "cascade.effnet"
PREVIEWER = "cascade.previewer"


def _clip_working_bytes(module: torch.nn.Module) -> int:
    """One 224 px image through the CLIP vision tower: every token's MLP plus its attention scores."""
    config = module.config
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    size = torch.finfo(module.dtype).bits // 8
    return 2 * tokens * (config.intermediate_size + config.num_attention_heads * tokens) * size


class StageRunner(Protocol):
    """What the image side needs of the backend that owns it (``CascadeBackend``).

    A protocol rather than an import, so this module stands below ``backends.cascade.backend``.
    """

    settings: CascadeSettings
    manager: MemoryManager
    ctx: LoadContext
    dtype: torch.dtype

    def generate(self, task: str, request: CascadeJob, progress: ProgressFn, started: float,
                 timings: dict[str, float], *, clip_img: torch.Tensor | None = None,
                 start: StageCStart | None = None, extra_info: Mapping[str, Any] | None = None,
                 notices: Sequence[str] = ()) -> ImageResult: ...


class ImageParts:
    """The image-side components of one ``CascadeBackend`` and the two image tasks."""

    def __init__(self, backend: StageRunner) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._feature_extractor: Any = None
        self._loaders: dict[str, Callable[[], torch.nn.Module]] = {
            IMAGE_ENCODER: self._load_image_encoder,
            EFFNET: lambda: load_effnet(backend.settings.effnet, backend.ctx, backend.dtype),
            PREVIEWER: lambda: load_previewer(backend.settings.previewer, backend.ctx, backend.dtype),
        }

    def component_names(self) -> list[str]:
        """Manager names of the image-side modules (registered once first used)."""
        return list(self._loaders)

    # ----- components ------------------------------------------------------------------------
    def _use(self, name: str, working: Callable[[Any], int]) -> contextlib.AbstractContextManager[Any]:
        self.backend.manager.register(name, self._loaders[name])  # idempotent
        return self.backend.manager.use(name, working)

    def _load_image_encoder(self) -> torch.nn.Module:
        from transformers import CLIPVisionModelWithProjection

        backend = self.backend
        module = load_pretrained(CLIPVisionModelWithProjection, backend.settings.image_encoder, backend.ctx,
                                 dtype=backend.dtype)
        return module.eval().requires_grad_(False)

    def _processor(self) -> Any:
        """The CLIP image processor: small, loaded once and kept."""
        with self._lock:
            if self._feature_extractor is None:
                from transformers import CLIPImageProcessor

                backend = self.backend
                self._feature_extractor = load_pretrained(CLIPImageProcessor, backend.settings.feature_extractor,
                                                          backend.ctx)
            return self._feature_extractor

    # ----- encoders --------------------------------------------------------------------------
    def image_embeds(self, image: Image.Image) -> torch.Tensor:
        """The prior's ``clip_img`` for ``image``: (1, 1, C), as the prior pipeline computes it."""
        pixels = self._processor()(image, return_tensors="pt").pixel_values
        with self._use(IMAGE_ENCODER, _clip_working_bytes) as encoder, torch.inference_mode():
            embeds = encoder(pixels.to(self.backend.manager.device, encoder.dtype)).image_embeds
        return embeds.unsqueeze(1)

    def encode(self, image: Image.Image, width: int, height: int) -> torch.Tensor:
        """The stage C latent of ``image`` for a ``width`` x ``height`` output: (1, 16, h, w) on the CPU.

        Deterministic: img2img at strength 0 hands exactly this to stage B.
        """
        latent_h, latent_w = stage_c_size(height, width)
        pixels = effnet_pixels(image, latent_w * DOWNSAMPLE, latent_h * DOWNSAMPLE)

        def working(module: Any) -> int:
            return module.working_bytes(pixels.shape[2], pixels.shape[3])

        with self._use(EFFNET, working) as effnet, torch.inference_mode():
            latents = effnet(pixels.to(self.backend.manager.device, effnet.dtype))
        return latents.cpu()

    # ----- previews --------------------------------------------------------------------------
    @contextlib.contextmanager
    def previewer(self, channel: WithPreviews | None, request: CascadeJob) -> Iterator[Any]:
        """The previewer for stage C when ``channel`` asks for previews, else None (nothing loads)."""
        if channel is None:
            yield None
            return
        latent_h, latent_w = stage_c_size(request.height, request.width)

        def working(module: Any) -> int:
            return module.working_bytes(latent_h, latent_w, 1)  # stage C runs one image at a time

        with self._use(PREVIEWER, working) as module:
            yield module

    def preview_observer(self, channel: WithPreviews | None, previewer: Any, scheduler: Any) -> StepObserver | None:
        """A step observer that sends previews of the current clean-latent estimate to ``channel``.

        The estimate (not the noisy latent) is what the official sampler yields each step; the
        noisy latent of early steps would preview as noise. It costs one small previewer pass
        and draws no random numbers, so the final image is the same with previews on or off.
        """
        if channel is None or previewer is None:
            return None

        def observe(step: int, total: int, sample: torch.Tensor, prediction: torch.Tensor,
                    ratio: torch.Tensor) -> None:
            if not channel.wants(step, total):
                return
            clean = predicted_clean(scheduler, sample, prediction, ratio)
            channel.preview(to_images(previewer(clean.to(previewer.dtype))), step, total)

        return observe

    # ----- the tasks -------------------------------------------------------------------------
    def variation(self, request: ImageVariationRequest, progress: ProgressFn) -> ImageResult:
        """Images like ``request.image``: its CLIP embedding (and the prompt) condition stage C."""
        started = time.perf_counter()
        timings: dict[str, float] = {}
        embeds = self.image_embeds(request.image)  # shared by the images, made one at a time
        timings["image_encoder"] = time.perf_counter() - started
        extra = {"input_size": list(request.input_size),
                 "image_encoder": describe_source(self.backend.settings.image_encoder)}
        return self.backend.generate("image_variation", request, progress, started, timings,
                                     clip_img=embeds, extra_info=extra, notices=request.notices)

    def img2img(self, request: Img2ImgRequest, progress: ProgressFn) -> ImageResult:
        """``request.image`` re-imagined: its stage C latent noised to ``strength`` and denoised."""
        started = time.perf_counter()
        timings: dict[str, float] = {}
        start = None
        if request.strength < 1:  # at 1 the input is ignored: plain text-to-image, nothing to encode
            start = StageCStart(self.encode(request.image, request.width, request.height), request.strength)
            timings["effnet"] = time.perf_counter() - started
        steps_run = start.steps(request.prior_steps) if start is not None else request.prior_steps
        extra = {"strength": request.strength, "prior_steps_run": steps_run,
                 "input_size": list(request.input_size),
                 "effnet": describe_source(self.backend.settings.effnet)}
        return self.backend.generate("img2img", request, progress, started, timings, start=start,
                                     extra_info=extra, notices=request.notices)
