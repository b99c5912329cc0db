"""Typed settings that a preset fills in: one dataclass per backend, one commented line per field.

The dataclasses are the preset schema: ``backends.presets`` checks YAML against them (unknown keys,
wrong types, values outside ``CHOICES``) and merges a sparse file over these defaults. The defaults
are the lite preset, the one most GPUs can run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.loading import Source

#: Allowed values of the enumerated fields, by field name; the validator quotes these in errors.
CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": ("bfloat16", "float16", "float32"),
    "memory_mode": ("auto", "gpu", "offload", "sequential"),
    "device": ("auto", "cuda", "cpu"),
    "fit": ("crop", "pad"),
    "prompt_format": ("chat_template", "tuned_alpha"),
}

CASCADE_PRIOR_REPO = "stabilityai/stable-cascade-prior"
CASCADE_DECODER_REPO = "stabilityai/stable-cascade"
SVD_REPO = "stabilityai/stable-video-diffusion-img2vid"
STABLELM_REPO = "stabilityai/stablelm-2-zephyr-1_6b"
SV3D_REPO = "stabilityai/sv3d"


@dataclass
class CascadeDefaults:
    """Generation defaults the Image tab starts with (the official ones, see NOTES.md)."""

    #: Output width in pixels (multiple of 128).
    width: int = 1024
    #: Output height in pixels (multiple of 128).
    height: int = 1024
    #: Stage C denoising steps.
    prior_steps: int = 20
    #: Stage B denoising steps.
    decoder_steps: int = 10
    #: Stage C classifier-free guidance.
    prior_guidance: float = 4.0
    #: Stage B guidance; 0 turns classifier-free guidance off (one pass per step instead of two).
    decoder_guidance: float = 0.0
    #: Images per request.
    num_images: int = 1
    #: Negative prompt pre-filled in the UI.
    negative_prompt: str = ""
    #: img2img: how far the input is noised before stage C denoises it again (0 keeps the image,
    #: 1 ignores it); 0.8 as in the official notebooks and demo app.
    strength: float = 0.8
    #: Live previews (when the user turns them on): one every this many stage C steps, plus the last.
    preview_every: int = 2


@dataclass
class CascadeSettings:
    """Stable Cascade: which files to load, in which dtype and memory mode."""

    #: Stage C, the text-conditional prior that makes the 24x24 semantic latent.
    prior: Source = field(default_factory=lambda: Source(CASCADE_PRIOR_REPO, "prior_lite", "bf16"))
    #: Stage B, the decoder from stage C latents to VQGAN latents.
    decoder: Source = field(default_factory=lambda: Source(CASCADE_DECODER_REPO, "decoder_lite", "bf16"))
    #: CLIP ViT-bigG text encoder, shared by both stages (one copy in memory instead of two).
    text_encoder: Source = field(default_factory=lambda: Source(CASCADE_DECODER_REPO, "text_encoder", "bf16"))
    #: CLIP tokenizer.
    tokenizer: Source = field(default_factory=lambda: Source(CASCADE_DECODER_REPO, "tokenizer"))
    #: Stage A, the VQGAN that turns stage B latents into pixels.
    vqgan: Source = field(default_factory=lambda: Source(CASCADE_DECODER_REPO, "vqgan", "bf16"))
    #: Scheduler config of stage C.
    prior_scheduler: Source = field(default_factory=lambda: Source(CASCADE_PRIOR_REPO, "scheduler"))
    #: Scheduler config of stage B.
    decoder_scheduler: Source = field(default_factory=lambda: Source(CASCADE_DECODER_REPO, "scheduler"))
    #: CLIP ViT-L/14 image encoder: the input's embedding conditions stage C for variations. No
    #: variant: a bf16 file in that folder is unverified (hf_repos.md); the fp32 one loads as dtype.
    image_encoder: Source = field(default_factory=lambda: Source(CASCADE_PRIOR_REPO, "image_encoder"))
    #: CLIP preprocessing (resize, crop, normalise) for the image encoder.
    feature_extractor: Source = field(default_factory=lambda: Source(CASCADE_PRIOR_REPO, "feature_extractor"))
    #: EfficientNet encoder for img2img (image -> stage C latent): ``effnet_encoder.safetensors``
    #: in this folder (the repo root for the released file).
    effnet: Source = field(default_factory=lambda: Source(CASCADE_DECODER_REPO))
    #: Previewer for live previews (stage C latent -> small RGB image): ``previewer.safetensors``
    #: in this folder (the repo root for the released file).
    previewer: Source = field(default_factory=lambda: Source(CASCADE_DECODER_REPO))
    #: Weights dtype; stage C does not support float16 (see hf_repos.md), use bfloat16 or float32.
    dtype: str = "bfloat16"
    #: auto / gpu keep components resident and evict by LRU; offload moves each back after use;
    #: sequential streams blocks for cards too small for a whole component.
    memory_mode: str = "auto"
    #: Generation defaults for the Image tab.
    defaults: CascadeDefaults = field(default_factory=CascadeDefaults)


@dataclass
class SvdDefaults:
    """Generation defaults the Video tab starts with (the official ones, see NOTES.md)."""

    #: Frames to generate: SVD is trained on 14, SVD-XT on 25.
    num_frames: int = 14
    #: Frames per second of the MP4, also a conditioning input of the model (5-30).
    fps: int = 6
    #: How much motion (1-255).
    motion_bucket_id: int = 127
    #: Noise added to the conditioning image; more gives more motion and less fidelity.
    noise_aug_strength: float = 0.02
    #: Denoising steps (SVD 25, SVD-XT 30 in the official scripts).
    steps: int = 25
    #: Frames decoded at once; 0 picks it from the live free VRAM. The main VRAM knob.
    decode_chunk_size: int = 0
    #: Model input width and height (landscape; portrait swaps them).
    width: int = 1024
    height: int = 576
    #: How an input of another aspect is fitted: crop (fill the frame) or pad (letterbox, white).
    fit: str = "crop"
    #: Classifier-free guidance of the first frame; it rises linearly to ``max_guidance`` at the
    #: last frame (the pipeline's defaults, 1 and 3). A max of 1 or less turns guidance off.
    min_guidance: float = 1.0
    max_guidance: float = 3.0


@dataclass
class SvdSettings:
    """Stable Video Diffusion (SVD or SVD-XT): which files, dtype and memory mode."""

    #: The spatio-temporal UNet (``UNetSpatioTemporalConditionModel``).
    unet: Source = field(default_factory=lambda: Source(SVD_REPO, "unet", "fp16"))
    #: The temporal VAE decoder (``AutoencoderKLTemporalDecoder``).
    vae: Source = field(default_factory=lambda: Source(SVD_REPO, "vae", "fp16"))
    #: CLIP ViT-H/14 image encoder for the conditioning embedding.
    image_encoder: Source = field(default_factory=lambda: Source(SVD_REPO, "image_encoder", "fp16"))
    #: CLIP image preprocessing config.
    feature_extractor: Source = field(default_factory=lambda: Source(SVD_REPO, "feature_extractor"))
    #: EulerDiscreteScheduler config.
    scheduler: Source = field(default_factory=lambda: Source(SVD_REPO, "scheduler"))
    #: Weights dtype; SVD ships fp16 files.
    dtype: str = "float16"
    #: See ``CascadeSettings.memory_mode``.
    memory_mode: str = "auto"
    #: Most frames the automatic decode chunk (decode_chunk_size 0) takes even when memory allows
    #: more: a guard against an optimistic per-frame estimate. 7 as in the official demo app; the
    #: official sampling script decodes 14. 0 means no limit.
    auto_decode_chunk_max: int = 7
    #: Generation defaults for the Video tab.
    defaults: SvdDefaults = field(default_factory=SvdDefaults)


@dataclass
class Sv3dDefaults:
    """Defaults the 3D orbit tab starts with (the reference script's, shared/data/sv3d_*_keys.json)."""

    #: u (no camera input) or p (a camera path).
    variant: str = "p"
    #: Camera elevation of the input view in degrees (-90-90); 10 in the reference script.
    elevation_deg: float = 10.0
    #: p only: ``constant`` elevation, or a ``sine`` path to ``elevation_end_deg`` opposite the input view.
    path: str = "constant"
    elevation_end_deg: float = 30.0
    #: Euler EDM steps (50 in the reference script).
    steps: int = 50
    #: Square model size in pixels (576; a multiple of 64) and views per orbit (21).
    size: int = 576
    num_frames: int = 21
    #: Noise added to the conditioning frame (the reference forces 1e-5).
    cond_aug: float = 1e-5
    #: Triangle guidance: min_guidance at the first and last frame, max_guidance in the middle.
    min_guidance: float = 1.0
    max_guidance: float = 2.5
    #: Frames per second of the orbit MP4.
    fps: int = 7


@dataclass
class Sv3dSettings:
    """SV3D_u / SV3D_p: the two single sgm files (converted once into the cache), dtype, memory."""

    #: Folder or repo holding ``sv3d_u.safetensors`` (gated repo stabilityai/sv3d).
    checkpoint_u: Source = field(default_factory=lambda: Source(SV3D_REPO))
    #: Folder or repo holding ``sv3d_p.safetensors``.
    checkpoint_p: Source = field(default_factory=lambda: Source(SV3D_REPO))
    #: UNet and CLIP dtype after conversion (the VAE always stays float32: it overflows in float16).
    dtype: str = "float16"
    #: See ``CascadeSettings.memory_mode``.
    memory_mode: str = "auto"
    #: Most frames decoded at once even when memory allows more (the reference decodes 14).
    decode_chunk_max: int = 14
    #: Defaults for the Orbit tab.
    defaults: Sv3dDefaults = field(default_factory=Sv3dDefaults)


@dataclass
class ChatDefaults:
    """Sampling defaults the Chat tab starts with."""

    #: System prompt pre-filled in the tab; unset (null) means the prompt format's own default:
    #: "You are a helpful assistant." for chat_template, the official prompt for tuned_alpha.
    system_prompt: str | None = None
    #: 0 is greedy decoding (0-2).
    temperature: float = 0.7
    #: Nucleus sampling mass, in (0, 1].
    top_p: float = 0.95
    #: 0 turns top-k filtering off.
    top_k: int = 0
    #: Longest reply in tokens (1-4096); shortened with a notice when the context window is full.
    max_new_tokens: int = 512
    #: 1.0 is off (1-2).
    repetition_penalty: float = 1.0


@dataclass
class StableLMSettings:
    """StableLM chat: which model, its prompt format, dtype and memory mode."""

    #: The causal LM (StableLM 2 Zephyr 1.6B by default; native transformers, no remote code).
    model: Source = field(default_factory=lambda: Source(STABLELM_REPO))
    #: Its tokenizer (usually the same repo).
    tokenizer: Source = field(default_factory=lambda: Source(STABLELM_REPO))
    #: chat_template uses the tokenizer's own template (Zephyr models); tuned_alpha is our
    #: formatter for ``<|SYSTEM|>…<|USER|>…<|ASSISTANT|>`` with its stop tokens.
    prompt_format: str = "chat_template"
    #: Human name and license shown in the tab.
    display_name: str = "StableLM 2 Zephyr 1.6B"
    license: str = "Stability AI Non-Commercial Research Community License"
    dtype: str = "bfloat16"
    #: See ``CascadeSettings.memory_mode``.
    memory_mode: str = "auto"
    #: Decode StableLM models with our fused layer loop (several times faster than generate() at
    #: batch 1); false uses the model's own forward with a DynamicCache. Other architectures
    #: (GPT-NeoX for Tuned Alpha) always use the latter.
    fused_decode: bool = True
    #: Sampling defaults for the Chat tab.
    defaults: ChatDefaults = field(default_factory=ChatDefaults)


@dataclass
class PresetSettings:
    """A whole preset after merging: the app-wide keys plus one section per backend."""

    #: One line for the UI and the README.
    description: str = ""
    #: cuda, cpu, or auto (cuda when available).
    device: str = "auto"
    #: Smallest total VRAM, in GB, this preset is meant for; `--preset auto` uses it.
    min_vram_gb: float = 0.0
    #: Stable Cascade text-to-image (and later variation and img2img).
    cascade: CascadeSettings = field(default_factory=CascadeSettings)
    #: Stable Video Diffusion image-to-video.
    svd: SvdSettings = field(default_factory=SvdSettings)
    #: StableLM chat.
    stablelm: StableLMSettings = field(default_factory=StableLMSettings)
    #: SV3D 3D orbits.
    sv3d: Sv3dSettings = field(default_factory=Sv3dSettings)
