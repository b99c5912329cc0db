"""The Studio every image/video scenario benchmarks, and the real-size random-weight models.

``--size tiny`` runs the app exactly as ``--preset tiny`` does. ``--size real`` keeps the tiny
preset's tokenizers, schedulers and feature extractor (their ids and configs are valid for the
real architectures; StableLM's model config and SD3.5's transformer config are the real shapes',
see ``stablelm_config_folder`` and ``bench.sd_models``)
but registers builders of real-size, random-weight modules with the memory
manager *before* the backends are built. ``MemoryManager.register`` is idempotent, so the
backends then run on those modules through their normal path: nothing is downloaded and no
app code knows it is being benchmarked. Speed and memory do not depend on weight values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image

from bench.common import BenchOptions

logger = logging.getLogger(__name__)

#: NOTES.md, "Real architecture configs" (from diffusers' conversion scripts).
_CTA = (("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),) * 2
PRIOR_FULL: dict[str, Any] = dict(
    in_channels=16, out_channels=16, timestep_ratio_embedding_dim=64, patch_size=1, conditioning_dim=2048,
    block_out_channels=(2048, 2048), num_attention_heads=(32, 32), down_num_layers_per_block=(8, 24),
    up_num_layers_per_block=(24, 8), down_blocks_repeat_mappers=(1, 1), up_blocks_repeat_mappers=(1, 1),
    block_types_per_layer=_CTA, clip_text_in_channels=1280, clip_text_pooled_in_channels=1280,
    clip_image_in_channels=768, clip_seq=4, kernel_size=3, dropout=(0.1, 0.1), self_attn=True,
    timestep_conditioning_type=("sca", "crp"), switch_level=(False,))
PRIOR_LITE = {**PRIOR_FULL, "conditioning_dim": 1536, "block_out_channels": (1536, 1536),
              "num_attention_heads": (24, 24), "down_num_layers_per_block": (4, 12),
              "up_num_layers_per_block": (12, 4)}
_DECODER_TYPES = (("SDCascadeResBlock", "SDCascadeTimestepBlock"),) * 2 + (
    ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),) * 2
DECODER_FULL: dict[str, Any] = dict(
    in_channels=4, out_channels=4, timestep_ratio_embedding_dim=64, patch_size=2, conditioning_dim=1280,
    block_out_channels=(320, 640, 1280, 1280), down_num_layers_per_block=(2, 6, 28, 6),
    up_num_layers_per_block=(6, 28, 6, 2), down_blocks_repeat_mappers=(1, 1, 1, 1),
    up_blocks_repeat_mappers=(3, 3, 2, 2), num_attention_heads=(0, 0, 20, 20),
    block_types_per_layer=_DECODER_TYPES, clip_text_pooled_in_channels=1280, clip_seq=4,
    effnet_in_channels=16, pixel_mapper_in_channels=3, kernel_size=3, dropout=(0, 0, 0.1, 0.1),
    self_attn=True, timestep_conditioning_type=("sca",))
DECODER_LITE = {**DECODER_FULL, "block_out_channels": (320, 576, 1152, 1152),
                "down_num_layers_per_block": (2, 4, 14, 4), "up_num_layers_per_block": (4, 14, 4, 2),
                "up_blocks_repeat_mappers": (2, 2, 2, 2), "num_attention_heads": (0, 9, 18, 18)}
#: CLIP ViT-bigG text tower (Stable Cascade's text encoder).
TEXT_BIGG: dict[str, Any] = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, projection_dim=1280,
                                 num_hidden_layers=32, num_attention_heads=20, max_position_embeddings=77,
                                 hidden_act="gelu")
#: CLIP ViT-H/14 vision tower (SVD's image encoder).
VISION_H: dict[str, Any] = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                                intermediate_size=5120, patch_size=14, image_size=224, projection_dim=1024,
                                hidden_act="gelu")
#: SVD-XT's VAE (``vae/config.json`` of stabilityai/stable-video-diffusion-img2vid-xt): the SD KL
#: encoder and a temporal decoder, 8x down. ``AutoencoderKLTemporalDecoder()``'s own defaults are a
#: one-level, 64-channel toy that does not downsample at all (the UNet would then run on
#: full-resolution "latents"), so unlike the UNet's they are not the real architecture.
SVD_VAE: dict[str, Any] = dict(down_block_types=("DownEncoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                               layers_per_block=2, latent_channels=4, sample_size=768, scaling_factor=0.18215,
                               force_upcast=True)
#: SV3D's UNet (shared/data/sv3d_p_unet_keys.json, ``diffusers_mapping_check``): diffusers' SVD
#: UNet defaults (8 input channels, 320-1280 wide, 1024-wide cross-attention, 64-channel heads)
#: with 21 frames and a per-frame vector of ``SV3D_ADM[variant]`` features; 1,525,278,442 parameters.
SV3D_UNET: dict[str, Any] = dict(num_frames=21)
SV3D_ADM = {"u": 256, "p": 1280}
#: SV3D's VAE as the converter builds it (``backends/sv3d/convert.py``): the SD KL autoencoder
#: (ch 128, mult 1-2-4-4, two resnets a level) without a post-quant conv; 83,653,843 parameters.
SV3D_VAE: dict[str, Any] = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                                block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                                scaling_factor=0.18215, use_post_quant_conv=False)
VARIANTS = {"lite": (PRIOR_LITE, DECODER_LITE), "full": (PRIOR_FULL, DECODER_FULL)}
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def built(factory: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Build on the device (fast random init), then ``.to`` it: a device context misses some
    parameters (NOTES.md, AlphaBlender), and the manager wants its CPU home anyway.

    Built with ``dtype`` as torch's default, so the parameters are born in it: building in
    float32 and casting would hold both copies at once (3x the bf16 bytes), a peak that real
    checkpoints, read in their own dtype, never have and that would swamp a peak-RSS reading.
    """
    with torch.device(device), _default_dtype(dtype):
        module = factory()
    # Cast where it was built, then copy: half the bytes over the slow device-to-host path.
    return module.to(dtype).to("cpu").eval().requires_grad_(False)


def cascade_builders(variant: str, device: torch.device, dtype: torch.dtype,
                     eos_token_id: int) -> dict[str, Callable[[], torch.nn.Module]]:
    """Manager name -> builder of the real-size Stable Cascade ``variant`` (lite or full)."""
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    prior, decoder = VARIANTS[variant]
    # Pooling picks the first eos token; it must be the (tiny) tokenizer's (NOTES.md).
    text = CLIPTextConfig(**TEXT_BIGG, eos_token_id=eos_token_id)
    return {
        "cascade.text_encoder": lambda: built(lambda: CLIPTextModelWithProjection(text), device, dtype),
        "cascade.prior": lambda: built(lambda: StableCascadeUNet(**prior), device, dtype),
        "cascade.decoder": lambda: built(lambda: StableCascadeUNet(**decoder), device, dtype),
        "cascade.vqgan": lambda: built(PaellaVQModel, device, dtype),
    }


def svd_builders(device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], torch.nn.Module]]:
    """Manager name -> builder of real-size SVD-XT (the UNet's diffusers defaults are its architecture)."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return {
        "svd.unet": lambda: built(UNetSpatioTemporalConditionModel, device, dtype),
        "svd.vae": lambda: built(lambda: AutoencoderKLTemporalDecoder(**SVD_VAE), device, dtype),
        "svd.image_encoder": lambda: built(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION_H)),
                                           device, dtype),
    }


def sv3d_builders(device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], torch.nn.Module]]:
    """Manager name -> builder of real-size SV3D_u and SV3D_p (``sv3d.<u|p>.<part>``).

    The VAE is float32 whatever ``dtype`` is, as the SV3D backend keeps it (it overflows in float16).
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from backends.sv3d.unet import Sv3dUNet

    builders: dict[str, Callable[[], torch.nn.Module]] = {}
    for variant, adm in SV3D_ADM.items():
        config = {**SV3D_UNET, "projection_class_embeddings_input_dim": adm}
        builders[f"sv3d.{variant}.unet"] = lambda config=config: built(lambda: Sv3dUNet(**config), device, dtype)
        builders[f"sv3d.{variant}.vae"] = lambda: built(lambda: AutoencoderKL(**SV3D_VAE), device, torch.float32)
        builders[f"sv3d.{variant}.image_encoder"] = lambda: built(
            lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION_H)), device, dtype)
    return builders


def stablelm_config_folder(cache_dir: Path) -> Path:
    """A folder holding the 1.6B shape's ``config.json``, for the StableLM backend to read.

    The backend sizes a reply's working memory and the context window from the model config it
    reads from its source, not from the loaded module; with the tiny preset's source that would be
    the tiny model's, so the real-size run points ``stablelm.model`` here instead.
    """
    from transformers import StableLmConfig

    from bench.chat import REAL_CONFIG

    folder = Path(cache_dir) / "bench-real" / "stablelm-2-1_6b-shape"
    if not (folder / "config.json").is_file():
        StableLmConfig(**REAL_CONFIG).save_pretrained(folder)
    return folder


def stablelm_builders(device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], torch.nn.Module]]:
    """Manager name -> builder of a StableLM-2-1.6B-shaped model (the only LM shape in NOTES.md)."""
    from bench.chat import build_real_model

    return {"stablelm.model": lambda: build_real_model(device, dtype).to("cpu")}


def make_studio(options: BenchOptions, budget_bytes: int | None = None, variant: str = "lite",
                dtype: torch.dtype = torch.bfloat16, outputs: Path | None = None, sd3_t5: str = "off") -> Any:
    """A Studio on the tiny preset; for ``--size real`` with real-size modules of ``variant``.

    At real size SD3.5 offers Medium only (the one real-size transformer ``bench.sd_models``
    builds: a Large request then fails loudly instead of running the tiny Large), and T5 runs as
    ``sd3_t5`` says: ``off`` (the default: T5-XXL is 19 GB in float32) or ``device`` (real-size
    T5 built by the manager; a GPU's ``never_oom``).
    """
    from transformers import CLIPTokenizer

    from backends.families import FAMILIES, load_context
    from backends.runtime.loading import Source, load_pretrained
    from backends.runtime.studio import Studio, StudioConfig
    from bench.sd_models import sd3_builders, sd3_config_folder, sdxl_builders

    config = StudioConfig(preset="tiny", vram_budget_bytes=budget_bytes, cache_dir=options.cache_dir,
                          outputs_dir=outputs or options.cache_dir / "bench-outputs", offline=True)
    studio = Studio(config, FAMILIES)
    if studio.device.type != options.device.type:
        # The tiny preset runs on CUDA when there is one; the manager's probe follows that choice.
        raise SystemExit(f"--device {options.device.type}: the Studio picked {studio.device.type} on this machine")
    if options.size != "real":
        return studio
    name = _DTYPE_NAMES[dtype]
    settings = studio.registry.preset
    # The backends cast inputs to the preset dtype; it must be the built modules' dtype.
    for key in ("cascade", "svd", "sv3d", "stablelm", "sd3", "sdxl"):
        setattr(settings, key, dataclasses.replace(getattr(settings, key), dtype=name))
    if sd3_t5 not in ("off", "device"):
        raise ValueError(f"sd3_t5 must be off or device for real-size modules, got {sd3_t5!r}")
    config_folder = Source(str(stablelm_config_folder(options.cache_dir)))
    settings.stablelm = dataclasses.replace(settings.stablelm, model=config_folder)
    transformer = Source(str(sd3_config_folder(options.cache_dir)))
    settings.sd3 = dataclasses.replace(settings.sd3, offer=["sd3.5-medium"], t5=sd3_t5, transformer_medium=transformer)
    ctx = load_context(options.cache_dir, offline=True)
    tokenizer = load_pretrained(CLIPTokenizer, settings.cascade.tokenizer, ctx)

    def eos(family: Any) -> tuple[int, int]:
        first, second = (load_pretrained(CLIPTokenizer, source, ctx) for source in (family.tokenizer,
                                                                                     family.tokenizer_2))
        return first.eos_token_id, second.eos_token_id

    builders = {**cascade_builders(variant, options.device, dtype, tokenizer.eos_token_id),
                **svd_builders(options.device, dtype), **sv3d_builders(options.device, dtype),
                **stablelm_builders(options.device, dtype),
                **sd3_builders(options.device, dtype, eos(settings.sd3), t5=sd3_t5 == "device"),
                **sdxl_builders(options.device, dtype, eos(settings.sdxl))}
    for component, build in builders.items():
        studio.manager.register(component, build)
    return studio


def image_request(options: BenchOptions, **overrides: Any) -> Any:
    """The Image tab's request: tiny preset defaults (256², 4 + 3 steps), or 1024², 20 + 10 for real."""
    from backends.cascade.requests import TextToImageRequest

    size, prior_steps, decoder_steps = (1024, 20, 10) if options.size == "real" else (256, 4, 3)
    values: dict[str, Any] = dict(prompt="a red lighthouse on a cliff at dusk", negative_prompt="", width=size,
                                  height=size, prior_steps=prior_steps, decoder_steps=decoder_steps,
                                  prior_guidance=4.0, decoder_guidance=0.0, num_images=1, seed=7)
    values.update(overrides)
    return TextToImageRequest.build(**values)


def video_request(options: BenchOptions) -> Any:
    """A short video request: enough to move the SVD family in, not a video benchmark. Real
    size uses 4 frames at 512x320 (the 576x1024 harness ran out of memory, anchor JSON)."""
    from backends.svd.requests import VideoRequest

    frames, steps, width, height = (4, 2, 512, 320) if options.size == "real" else (6, 3, 128, 64)
    picture = Image.new("RGB", (width, height), (200, 80, 40))
    return VideoRequest.build(picture, frames, 6, 127, 0.02, steps, 0, 3, width=width, height=height)


def no_progress(*_: Any) -> None:
    """Progress sink: the benchmarks time the work, not the UI."""


def cascade_modules(manager: Any) -> dict[str, torch.nn.Module]:
    """The four loaded Stable Cascade modules, by stage (after one run of ours)."""
    stages = ("text_encoder", "prior", "decoder", "vqgan")
    return {stage: manager.component(f"cascade.{stage}").home.module for stage in stages}


def component_loads(manager: Any) -> dict[str, int]:
    """How often each registered component was read from disk (or built)."""
    return {status.name: manager.component(status.name).loads for status in manager.statuses()}
