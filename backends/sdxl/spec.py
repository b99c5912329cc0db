"""Stable Diffusion XL's spec: its settings with their defaults, and what the registry needs to know.

SDXL 1.0 is two models that work as one: the base (a 2.6B UNet conditioned on two CLIP text
encoders) and an optional refiner (a 2.3B UNet trained on the last, low-noise part of the
schedule). The refiner repo's OpenCLIP-bigG text encoder and VAE are the base's own files again,
so they are loaded once, from the base repo; from the refiner only the UNet is taken. Only the
diffusers folders are ever named, in their ``fp16`` variant: the repos' root single files
(``sd_xl_base_1.0.safetensors``) hold the same weights again for other tools (NOTES.md).

The VAE and float16: SDXL's VAE overflows in float16 (its activations exceed 65,504), which is
why its config says ``force_upcast``. We follow that flag exactly as diffusers' SDXL pipelines
do: a VAE whose config asks for it encodes in float32, and decodes in float32 when the weights
are float16 (bfloat16 has float32's range and decodes as it is). The weights stay in the
preset's dtype; float32 copies exist only while the VAE runs (``backends.sdxl.vae``). We keep
Stability's own VAE as the default rather than ``madebyollin/sdxl-vae-fp16-fix`` because it is
the released model, its outputs are the ones the pipelines give (a test holds us to that), and
the upcast costs only working memory during the decode (about 2x the float16 decode). A preset
may point ``vae`` at the fp16-fix repo (``{repo: madebyollin/sdxl-vae-fp16-fix, subfolder:
null, variant: null}``): its config clears ``force_upcast``, so the same code then decodes in
float16, with slightly different pixels.

This module imports no torch; the backend (``backends.sdxl.backend``) is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.runtime.loading import Source
from backends.runtime.settings import choices
from backends.runtime.spec import BackendSpec
from backends.runtime.tiny import TinyFamily

BASE_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
REFINER_REPO = "stabilityai/stable-diffusion-xl-refiner-1.0"
#: The ``model`` values of the SD endpoints this family serves (DESIGN.md).
MODELS = ("sdxl",)


@dataclass
class SdxlDefaults:
    """Generation defaults the Image tab's SDXL controls start with.

    The base model card's ensemble example runs 40 steps with ``high_noise_frac`` 0.8; diffusers'
    pipelines default to guidance 5.0 (and 50 steps). 30 steps is the common lighter choice.
    """

    #: Denoising steps (with the refiner: base and refiner together).
    steps: int = 30
    #: Classifier-free guidance; 1 or less runs one UNet pass per step instead of two.
    guidance: float = 5.0
    #: Output width and height in pixels (multiples of 64); SDXL is trained at about 1024².
    width: int = 1024
    height: int = 1024
    #: Whether the refiner takes over the last, low-noise steps (an extra 2.3B UNet to load).
    refiner: bool = False
    #: The share of the schedule the base denoises before the refiner takes over (0-1, exclusive).
    high_noise_frac: float = 0.8
    #: img2img and inpaint: how far the input is noised before it is denoised again (0 keeps it,
    #: 1 ignores it).
    strength: float = 0.8


@dataclass
class SdxlSettings:
    """Stable Diffusion XL base and refiner: which files, dtype, memory mode, which models are offered."""

    #: The base UNet (``UNet2DConditionModel``, 2.6B, 5.1 GB in fp16).
    unet: Source = field(default_factory=lambda: Source(BASE_REPO, "unet", "fp16"))
    #: The VAE (``AutoencoderKL``, 84M), shared by base and refiner; see the module docstring on fp16.
    vae: Source = field(default_factory=lambda: Source(BASE_REPO, "vae", "fp16"))
    #: CLIP ViT-L/14 text encoder (``CLIPTextModel``, 123M); the base only.
    text_encoder: Source = field(default_factory=lambda: Source(BASE_REPO, "text_encoder", "fp16"))
    #: OpenCLIP ViT-bigG/14 text encoder with projection (695M), shared by base and refiner.
    text_encoder_2: Source = field(default_factory=lambda: Source(BASE_REPO, "text_encoder_2", "fp16"))
    #: The two CLIP tokenizers (the second pads with "!", as OpenCLIP did).
    tokenizer: Source = field(default_factory=lambda: Source(BASE_REPO, "tokenizer"))
    tokenizer_2: Source = field(default_factory=lambda: Source(BASE_REPO, "tokenizer_2"))
    #: ``EulerDiscreteScheduler`` config, the same in both repos.
    scheduler: Source = field(default_factory=lambda: Source(BASE_REPO, "scheduler"))
    #: The refiner UNet (2.3B, 4.5 GB in fp16); loaded only when a job asks for the refiner.
    refiner_unet: Source = field(default_factory=lambda: Source(REFINER_REPO, "unet", "fp16"))
    #: Weights dtype; the repos ship fp16 files. bfloat16 and float32 work too.
    dtype: str = "float16"
    #: auto, gpu, offload or sequential (``backends.runtime.placement.MemoryMode``).
    memory_mode: str = "auto"
    #: Which of ``SPEC.models`` this preset offers; the first is the family's default model.
    offer: list[str] = field(default_factory=lambda: ["sdxl"], metadata=choices(*MODELS))
    #: Inpaint: Gaussian blur radius (pixels) of the mask edge when the input's pixels are laid back
    #: over the result, so the repainted area blends in; 4 as A1111's default mask blur.
    mask_blur: int = 4
    #: Generation defaults for the Image tab.
    defaults: SdxlDefaults = field(default_factory=SdxlDefaults)

    def unused_sources(self) -> tuple[str, ...]:
        """Settings keys a preset's download plan leaves out: the refiner (4.5 GB) unless the
        preset turns it on by default. A job that asks for it fetches it first
        (``downloads.fetch_component``), with the download shown as the job's progress."""
        return () if self.defaults.refiner else ("refiner_unet",)


SPEC = BackendSpec(
    name="sdxl",
    family="Stable Diffusion XL",
    tasks=("sdxl_text_to_image", "sdxl_img2img", "sdxl_inpaint"),
    factory="backends.sdxl.backend:SdxlBackend",
    settings=SdxlSettings,
    license="CreativeML Open RAIL++-M",
    license_url="https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md",
    components=("unet", "vae", "text_encoder", "text_encoder_2", "refiner_unet"),
    # Millions of parameters, counted on the meta device from the released configs with diffusers
    # 0.42.1 / transformers 5.24 (base UNet 2567.5, refiner UNet 2259.5, CLIP-L 123.1, bigG with its
    # projection 694.7, VAE 83.7). The registry keys sizes by subfolder, and both UNets live in a
    # subfolder named ``unet``, so the refiner's hint is the base's (14 % high) until it loads.
    params_m={"unet": 2567.5, "vae": 83.7, "text_encoder": 123.1, "text_encoder_2": 694.7},
    tiny=TinyFamily(name="sdxl", builder="backends.sdxl.tiny:build", version="v1"),
    models=MODELS,
)
