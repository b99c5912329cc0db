"""The download manager against a fake hub on 127.0.0.1 (tests/fakehub.py), and plans of the shipped presets."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from huggingface_hub.utils import filter_repo_objects

from backends.families import load_context, load_preset
from backends.runtime import downloads
from backends.runtime.errors import Cancelled, ModelUnavailable
from backends.runtime.loading import LoadContext, Source
from tests.fakehub import FakeHub, FakeRepo, point_client_at

MIB = 1 << 20
#: huggingface_hub 2.4 hands bytes over in 10 MiB chunks (constants.DOWNLOAD_CHUNK_SIZE): a file must
#: span several of them for a cut transfer to leave whole chunks on disk to resume from.
BF16 = random.Random(1).randbytes(24 * MIB + 123)
PLAIN = random.Random(2).randbytes(3 * MIB)
ORIGINAL = random.Random(3).randbytes(6 * MIB)
PRIOR = "prior/diffusion_pytorch_model.bf16.safetensors"
PRIOR_CONFIG = b'{"_class_name": "StableCascadeUNet"}'
SCHEDULER_CONFIG = b'{"_class_name": "DDPMWuerstchenScheduler"}'
#: What a bf16 plan of the fake cascade repo downloads.
WANTED_BYTES = len(BF16) + len(PRIOR_CONFIG) + len(SCHEDULER_CONFIG)


@dataclass
class CascadeLike:
    """A settings section of our own, so other developers' new Source fields cannot change these tests."""

    prior: Source
    prior_scheduler: Source


@dataclass
class SettingsLike:
    cascade: CascadeLike


def cascade_plans(repo: str = "fake/cascade", variant: str | None = "bf16") -> list[downloads.RepoPlan]:
    settings = SettingsLike(CascadeLike(Source(repo, "prior", variant), Source(repo, "scheduler")))
    return downloads.plan(settings, components={"cascade": ("prior",)})


def cascade_repo() -> FakeRepo:
    return FakeRepo("fake/cascade", {
        "model_index.json": b'{"_class_name": "StableCascadePriorPipeline"}',
        "prior/config.json": PRIOR_CONFIG,
        "prior/diffusion_pytorch_model.safetensors": PLAIN,
        PRIOR: BF16,
        "prior/diffusion_pytorch_model.bin": b"pickle, never fetched",
        "scheduler/scheduler_config.json": SCHEDULER_CONFIG,
        "stage_c_bf16.safetensors": ORIGINAL,  # an original checkpoint at the root: never fetched
    })


def gated_repo() -> FakeRepo:
    return FakeRepo("fake/gated-video", {"unet/config.json": b"{}",
                                         "unet/diffusion_pytorch_model.fp16.safetensors": PLAIN}, gated=True)


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    server = FakeHub.of(cascade_repo(), gated_repo()).start()
    point_client_at(server, monkeypatch)
    yield server
    server.stop()


@pytest.fixture()
def ctx(tmp_path: Path) -> LoadContext:
    return load_context(cache_dir=tmp_path / "studio", models_dir=tmp_path / "hub")


def cached(ctx: LoadContext, repo: str, path: str) -> bytes:
    """The file as from_pretrained would read it: through the snapshot that refs/main points at."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, path, cache_dir=str(ctx.models_dir), local_files_only=True)).read_bytes()


def test_only_the_variant_weights_and_configs_are_fetched(hub: FakeHub, ctx: LoadContext) -> None:
    fetched = downloads.ensure(cascade_plans(), ctx)
    assert {f.path for f in fetched} == {"prior/config.json", PRIOR, "scheduler/scheduler_config.json"}
    assert cached(ctx, "fake/cascade", PRIOR) == BF16
    for never in ("prior/diffusion_pytorch_model.safetensors", "prior/diffusion_pytorch_model.bin",
                  "stage_c_bf16.safetensors", "model_index.json"):
        assert hub.seen(never, "GET") == [] and hub.seen(never, "HEAD") == [], never
    assert len(hub.served(PRIOR)) == 1
    assert downloads.missing(cascade_plans(), ctx) == []
    assert downloads.ensure(cascade_plans(), ctx) == []  # a second run fetches nothing
    assert len(hub.served(PRIOR)) == 1


def test_progress_is_monotonic_and_reaches_the_total(hub: FakeHub, ctx: LoadContext) -> None:
    reports: list[tuple[str, int, int]] = []
    downloads.ensure(cascade_plans(), ctx, lambda label, done, total: reports.append((label, done, total)))
    totals = {total for _, _, total in reports}
    dones = [done for _, done, _ in reports]
    assert totals == {WANTED_BYTES}
    assert dones == sorted(dones) and dones[0] == 0 and dones[-1] == WANTED_BYTES
    assert any(PRIOR in label for label, _, _ in reports)


def test_a_cut_transfer_resumes_with_a_range_request(hub: FakeHub, ctx: LoadContext) -> None:
    hub.cut_next(PRIOR, 15 * MIB)  # one full 10 MiB chunk reaches the disk before the cut
    downloads.ensure(cascade_plans(), ctx)
    ranges = [r.range for r in hub.served(PRIOR)]
    assert ranges == [None, f"bytes={10 * MIB}-"]
    assert cached(ctx, "fake/cascade", PRIOR) == BF16


def test_a_stopped_download_resumes_on_the_next_call(hub: FakeHub, ctx: LoadContext) -> None:
    def stop_in_second_chunk(label: str, done: int, total: int) -> None:
        if done >= 20 * MIB:  # reported before the chunk is written: the first 10 MiB stay on disk
            raise Cancelled("Stopped by the user")

    with pytest.raises(Cancelled):
        downloads.ensure(cascade_plans(), ctx, stop_in_second_chunk)
    assert downloads.missing(cascade_plans(), ctx)  # nothing half-done is linked into the snapshot
    (prior,) = [f for f in downloads.sizes(cascade_plans(), models_dir=ctx.models_dir) if f.path == PRIOR]
    assert (prior.present, prior.on_disk, prior.to_fetch) == (False, 10 * MIB, len(BF16) - 10 * MIB)
    reports: list[int] = []
    downloads.ensure(cascade_plans(), ctx, lambda label, done, total: reports.append(done))
    assert [r.range for r in hub.served(PRIOR)] == [None, f"bytes={10 * MIB}-"]
    assert reports[0] >= 10 * MIB and reports == sorted(reports)  # counts the bytes kept from before
    assert cached(ctx, "fake/cascade", PRIOR) == BF16


def test_the_patterns_mean_the_same_to_snapshot_download(hub: FakeHub, tmp_path: Path) -> None:
    """Spaces' preload_from_hub and ``hf download`` take the same patterns: they must select the same files."""
    from huggingface_hub import snapshot_download

    (p,) = cascade_plans()
    folder = Path(snapshot_download(p.repo, allow_patterns=list(p.allow_patterns), cache_dir=str(tmp_path)))
    assert sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file()) == [
        "prior/config.json", PRIOR, "scheduler/scheduler_config.json"]


def test_a_server_error_is_explained_and_the_next_call_completes(hub: FakeHub, ctx: LoadContext) -> None:
    hub.fail_next(PRIOR, 503)
    with pytest.raises(ModelUnavailable, match="The hub answered 503 for fake/cascade.*Try again later"):
        downloads.ensure(cascade_plans(), ctx)
    again = {f.path for f in downloads.ensure(cascade_plans(), ctx)}
    assert again == {PRIOR, "scheduler/scheduler_config.json"}  # prior/config.json, fetched first, was kept
    assert cached(ctx, "fake/cascade", PRIOR) == BF16


def test_short_disk_fails_before_any_byte_is_written(hub: FakeHub, ctx: LoadContext) -> None:
    asked: list[Path] = []

    def five_mib_free(folder: Path) -> int:
        asked.append(folder)
        return 5 * MIB

    with pytest.raises(ModelUnavailable) as error:
        downloads.ensure(cascade_plans(), ctx, free_space=five_mib_free)
    message = str(error.value)
    assert f"{WANTED_BYTES:,} bytes" in message and f"{5 * MIB:,} bytes" in message and str(ctx.models_dir) in message
    assert asked == [ctx.models_dir]
    assert [r for r in hub.requests if r.method == "GET" and r.file] == []
    assert not list(Path(str(ctx.models_dir)).rglob("blobs/*"))


def test_gated_repo_explains_the_license_and_hf_token(hub: FakeHub, ctx: LoadContext) -> None:
    settings = SettingsLike(CascadeLike(Source("fake/gated-video", "unet", "fp16"), Source("fake/gated-video", "unet")))
    plans = downloads.plan(settings, components={"cascade": ("prior",)})
    for token, status in ((None, "401"), ("hf_wrong", "403")):
        with pytest.raises(ModelUnavailable) as error:
            downloads.ensure(plans, ctx, token=token)
        message = str(error.value)
        assert "https://huggingface.co/fake/gated-video" in message and "HF_TOKEN" in message, message
        assert status in message and "hf auth login" in message
    assert not (Path(ctx.models_dir) / "models--fake--gated-video" / "blobs").exists()
    downloads.ensure(plans, ctx, token=hub.token)
    assert cached(ctx, "fake/gated-video", "unet/diffusion_pytorch_model.fp16.safetensors") == PLAIN
    cdn = [r for r in hub.requests if r.cdn]
    assert cdn and not any(r.authorized for r in cdn)  # the token stays on the hub, never goes to the CDN


def test_offline_lists_what_is_missing_and_the_command(hub: FakeHub, tmp_path: Path) -> None:
    offline = load_context(cache_dir=tmp_path / "studio", models_dir=tmp_path / "hub", offline=True)
    with pytest.raises(ModelUnavailable) as error:
        downloads.ensure(cascade_plans(), offline, preset="lite")
    message = str(error.value)
    assert "fake/cascade" in message and PRIOR in message and "scheduler/" in message
    assert "python app.py --download-only --preset lite" in message and "offline" in message
    assert hub.requests == []
    online = load_context(cache_dir=offline.cache_dir, models_dir=offline.models_dir)
    downloads.ensure(cascade_plans(), online)
    assert downloads.ensure(cascade_plans(), offline) == []  # complete: offline is fine


def test_an_unreachable_hub_counts_as_offline(hub: FakeHub, ctx: LoadContext) -> None:
    hub.stop()
    with pytest.raises(ModelUnavailable, match=r"could not be reached(.|\n)*--download-only --preset bf16"):
        downloads.ensure(cascade_plans(), ctx, preset="bf16")


def test_a_variant_the_repo_lacks_fails_before_downloading(hub: FakeHub, ctx: LoadContext) -> None:
    with pytest.raises(ModelUnavailable, match=r"fake/cascade .*no file for cascade.prior weights \(fp16\)"):
        downloads.ensure(cascade_plans(variant="fp16"), ctx)
    assert [r for r in hub.requests if r.file] == []


def test_downloads_land_where_from_pretrained_looks(tiny_cache: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve the tiny cascade build as a hub repo (bf16-named weights only), download, load offline."""
    import torch
    from diffusers.models import StableCascadeUNet
    from transformers import CLIPTokenizer

    from backends.runtime.loading import load_pretrained, resolve_repo

    root = Path(resolve_repo(Source("tiny:cascade"), load_context(cache_dir=tiny_cache, offline=True)))
    files = {p.relative_to(root).as_posix().replace(".safetensors", ".bf16.safetensors"): p.read_bytes()
             for sub in ("prior", "tokenizer", "scheduler") for p in (root / sub).iterdir()}
    server = FakeHub.of(FakeRepo("fake/tiny-cascade", {**files, "stage_c.safetensors": ORIGINAL})).start()
    point_client_at(server, monkeypatch)
    ctx = load_context(cache_dir=tiny_cache, models_dir=tmp_path / "hub")
    settings = SettingsLike(CascadeLike(Source("fake/tiny-cascade", "prior", "bf16"),
                                        Source("fake/tiny-cascade", "scheduler")))
    plans = downloads.plan(settings, components={"cascade": ("prior",)})
    tokenizer = Source("fake/tiny-cascade", "tokenizer")
    plans += downloads.plan(SettingsLike(CascadeLike(tokenizer, tokenizer)), components={})
    downloads.ensure(plans, ctx)
    server.stop()
    offline = load_context(cache_dir=tiny_cache, models_dir=ctx.models_dir, offline=True)
    unet = load_pretrained(StableCascadeUNet, Source("fake/tiny-cascade", "prior", "bf16"), offline,
                           dtype=torch.float32)
    assert sum(p.numel() for p in unet.parameters()) > 0
    assert load_pretrained(CLIPTokenizer, tokenizer, offline)("a cat").input_ids


# --- plans of the shipped presets, checked against the real repos' file lists (data/hf_repos.md) ---

REAL_FILES = {
    "stabilityai/stable-cascade": [
        "model_index.json", "LICENSE", "README.md", "effnet_encoder.safetensors", "previewer.safetensors",
        "stage_a.safetensors", "stage_b.safetensors", "stage_b_bf16.safetensors", "stage_b_lite.safetensors",
        "stage_b_lite_bf16.safetensors", "stage_c.safetensors", "stage_c_bf16.safetensors",
        "stage_c_lite.safetensors", "stage_c_lite_bf16.safetensors",
        *[f"{sub}/{name}" for sub in ("decoder", "decoder_lite", "vqgan")
          for name in ("config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bf16.safetensors")],
        "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.bf16.safetensors",
        *[f"tokenizer/{name}" for name in ("merges.txt", "vocab.json", "tokenizer.json", "tokenizer_config.json",
                                             "special_tokens_map.json")],
        "scheduler/scheduler_config.json", "controlnet/canny.safetensors",
    ],
    "stabilityai/stable-cascade-prior": [
        "model_index.json", "LICENSE", "README.md",
        *[f"{sub}/{name}" for sub in ("prior", "prior_lite")
          for name in ("config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bf16.safetensors")],
        "image_encoder/config.json", "image_encoder/model.safetensors", "feature_extractor/preprocessor_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer.json",
        "scheduler/scheduler_config.json",
    ],
}


def selected(plans: list[downloads.RepoPlan], repo: str) -> set[str]:
    (p,) = [p for p in plans if p.repo == repo]
    return set(filter_repo_objects(REAL_FILES[repo], allow_patterns=list(p.allow_patterns)))


TOKENIZER = {f"tokenizer/{name}" for name in ("merges.txt", "vocab.json", "tokenizer.json", "tokenizer_config.json",
                                               "special_tokens_map.json")}
#: Weights with no variant in the real repos, whatever the preset's variant.
NO_VARIANT = {"effnet_encoder.safetensors", "previewer.safetensors", "image_encoder/model.safetensors"}


@pytest.mark.parametrize("name, prior, decoder, suffix", [
    ("lite", "prior_lite", "decoder_lite", ".bf16"),
    ("cpu", "prior_lite", "decoder_lite", ".bf16"),  # float32 on the CPU, upcast from the bf16 files
    ("bf16", "prior", "decoder", ".bf16"),
    ("full", "prior", "decoder", ""),
])
def test_shipped_presets_pick_their_variant_files_only(name: str, prior: str, decoder: str, suffix: str) -> None:
    plans = downloads.plan(load_preset(name).settings)
    picked = selected(plans, "stabilityai/stable-cascade-prior") | selected(plans, "stabilityai/stable-cascade")
    must = {f"{prior}/config.json", f"{prior}/diffusion_pytorch_model{suffix}.safetensors",
            f"{decoder}/config.json", f"{decoder}/diffusion_pytorch_model{suffix}.safetensors",
            "text_encoder/config.json", f"text_encoder/model{suffix}.safetensors", *TOKENIZER,
            "vqgan/config.json", f"vqgan/diffusion_pytorch_model{suffix}.safetensors", "scheduler/scheduler_config.json",
            "effnet_encoder.safetensors", "previewer.safetensors"}
    assert must <= picked, must - picked
    weights = {f for f in picked if f.endswith(".safetensors")} - NO_VARIANT
    assert all(w.endswith(f"{suffix}.safetensors") and ".bf16." not in w.replace(suffix, "", 1) for w in weights), weights
    assert not any(f.startswith(("stage_", "controlnet/", "prior/" if prior != "prior" else "prior_lite/",
                                 "decoder/" if decoder != "decoder" else "decoder_lite/")) for f in picked), picked
    assert not any(f.endswith((".bin", ".ckpt", ".pt", "README.md", "LICENSE")) for f in picked)
    assert all(p.revision == "main" for p in plans)


def test_single_file_names_match_the_modules_that_read_them() -> None:
    from backends.cascade.effnet import EFFNET_FILE
    from backends.cascade.previewer import PREVIEWER_FILE
    from backends.cascade.spec import SPEC

    assert SPEC.files == {"effnet": EFFNET_FILE, "previewer": PREVIEWER_FILE}


def test_svd_and_stablelm_plans_take_fp16_and_root_weights() -> None:
    plans = {p.repo: p for p in downloads.plan(load_preset("bf16").settings)}
    svd = plans["stabilityai/stable-video-diffusion-img2vid-xt"]
    files = ["svd_xt.safetensors", "svd_xt_image_decoder.safetensors", "model_index.json",
             "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
             "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json"]
    assert set(filter_repo_objects(files, allow_patterns=list(svd.allow_patterns))) == {
        "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
        "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json"}
    lm = plans["stabilityai/stablelm-zephyr-3b"]
    files = ["config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "README.md", "stablelm-zephyr-3b.Q4_0.gguf"]
    assert set(filter_repo_objects(files, allow_patterns=list(lm.allow_patterns))) == {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json"}


def test_tiny_local_and_single_file_sources(tmp_path: Path) -> None:
    assert downloads.plan(load_preset("tiny").settings) == []
    assert downloads.download_preset(load_preset("tiny"), load_context(cache_dir=tmp_path, models_dir=tmp_path / "hub")) == []

    @dataclass(frozen=True)
    class FileSource(Source):
        filename: str | None = None

    settings = SettingsLike(CascadeLike(Source(str(tmp_path)), FileSource("stabilityai/stable-cascade",
                                                                           filename="effnet_encoder.safetensors")))
    (only,) = downloads.plan(settings, components={"cascade": ("prior", "prior_scheduler")})
    assert selected([only], "stabilityai/stable-cascade") == {"effnet_encoder.safetensors"}


def test_sections_limit_the_plan() -> None:
    plans = downloads.plan(load_preset("lite").settings, sections=["cascade"])
    assert {p.repo for p in plans} == {"stabilityai/stable-cascade", "stabilityai/stable-cascade-prior"}


def test_missing_names_every_need_of_an_empty_cache(tmp_path: Path) -> None:
    plans = downloads.plan(load_preset("lite").settings)
    gone = downloads.missing(plans, load_context(cache_dir=tmp_path, models_dir=tmp_path / "hub"))
    assert [m.repo for m in gone] == [p.repo for p in plans]
    text = "\n".join(m.describe() for m in gone)
    assert "cascade.prior weights (bf16) in prior_lite/: prior_lite/diffusion_pytorch_model.bf16.safetensors" in text
    assert "cascade.effnet file: effnet_encoder.safetensors" in text


def test_sd_plans_take_the_diffusers_folders_of_the_offered_models_only() -> None:
    import dataclasses

    lite = load_preset("lite").settings
    plans = {p.repo: p for p in downloads.plan(lite, sections=["sd3", "sdxl"])}
    # Lite offers SD3.5 Medium only: no Large or Large Turbo transformer (16.3 GB each). Its SDXL
    # starts without the refiner, so the refiner (4.5 GB) waits for a job that asks for it.
    assert set(plans) == {"stabilityai/stable-diffusion-3.5-medium", "stabilityai/stable-diffusion-xl-base-1.0"}
    refined = dataclasses.replace(lite, sdxl=dataclasses.replace(
        lite.sdxl, defaults=dataclasses.replace(lite.sdxl.defaults, refiner=True)))
    with_refiner = {p.repo: p for p in downloads.plan(refined, ["sdxl"])}
    # A refiner job fetches exactly what a plan with the refiner would: its unet/ folder, fp16 only.
    refiner = downloads.component_plan("sdxl.refiner_unet", lite.sdxl.refiner_unet)
    assert refiner == [with_refiner["stabilityai/stable-diffusion-xl-refiner-1.0"]]
    assert all(p.startswith("unet/") for p in refiner[0].allow_patterns)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in refiner[0].allow_patterns
    medium = plans["stabilityai/stable-diffusion-3.5-medium"].allow_patterns
    assert any(p.startswith("transformer/") for p in medium) and any(p.startswith("text_encoder_3/") for p in medium)
    # Never the root single files or the ComfyUI text_encoders/ folder.
    assert not any(p.startswith(("sd3.5", "text_encoders/", "*")) for p in medium)
    sdxl = plans["stabilityai/stable-diffusion-xl-base-1.0"].allow_patterns
    assert any(p.startswith("unet/") and ".fp16." in p for p in sdxl)
    assert not any(p.startswith("sd_xl") for p in sdxl)
    # T5 off: its 9.5 GB are not fetched.
    off = dataclasses.replace(lite, sd3=dataclasses.replace(lite.sd3, t5="off"))
    patterns = downloads.plan(off, sections=["sd3"])[0].allow_patterns
    assert not any(p.startswith(("text_encoder_3/", "tokenizer_3/")) for p in patterns)
    full = {p.repo for p in downloads.plan(load_preset("full").settings, sections=["sd3"])}
    assert "stabilityai/stable-diffusion-3.5-large" in full and "stabilityai/stable-diffusion-3.5-large-turbo" in full
