"""One loading path for real and tiny weights.

A preset names each component's source as ``repo`` (a hub id, a local folder, or ``tiny:NAME``),
``subfolder`` and ``variant``. ``tiny:`` sources are built once into the cache by the builder the
family's spec declared (``LoadContext.tiny``, see ``backends.runtime.tiny``) and then read by
exactly the same ``from_pretrained`` call as a hub repo, so tests exercise the code real users run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

from backends.runtime.errors import ModelUnavailable
from backends.runtime.tiny import MARKER as TINY_MARKER
from backends.runtime.tiny import TinyModels

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"
#: Weight files that are Python pickles (PyTorch ``.bin``/``.pt``/``.pth``, Lightning and sgm
#: ``.ckpt``): unpickling one runs whatever code its author put in it, so they are never loaded.
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")

T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """Where one component's files live."""

    #: Hub repo id (``stabilityai/stable-cascade``), a local folder, or ``tiny:<family>``.
    repo: str
    #: Folder inside the repo (``prior_lite``); None for the root.
    subfolder: str | None = None
    #: File variant such as ``bf16`` (``diffusion_pytorch_model.bf16.safetensors``); None for plain files.
    variant: str | None = None
    #: Git revision (branch, tag, commit or ``refs/pr/N``); None for the default branch. Needed
    #: where safetensors exist only on a conversion PR (StableLM Tuned Alpha).
    revision: str | None = None


def describe_source(source: Source) -> str:
    """A one-line name for a source, as the families' info JSON shows it."""
    text = source.repo + (f"/{source.subfolder}" if source.subfolder else "")
    return text + (f" ({source.variant})" if source.variant else "")


@dataclass(frozen=True)
class LoadContext:
    """Settings from the command line that every loader needs."""

    #: Where tiny models are built (``<cache>/tiny/...``).
    cache_dir: Path
    #: Hub cache override (``--models-dir``); None follows HF_HOME / HF_HUB_CACHE.
    models_dir: Path | None = None
    #: Never contact the hub; missing files fail at once with a message saying what is missing.
    offline: bool = False
    #: The ``tiny:`` families this context can build, from the family specs (none by default).
    tiny: TinyModels = field(default_factory=TinyModels, compare=False)


def resolve_repo(source: Source, ctx: LoadContext) -> str:
    """Return the path or hub id to hand to ``from_pretrained``, building tiny models on demand."""
    if source.repo.startswith(TINY_PREFIX):
        return str(ctx.tiny.ensure(source.repo[len(TINY_PREFIX):], ctx.cache_dir))
    return source.repo


def refuse_pickle_only(folder: Path, where: str) -> None:
    """Refuse a local model folder whose weights are pickles only, before any library opens it.

    ``use_safetensors=True`` already keeps diffusers and transformers from unpickling, but
    their error ("no file named diffusion_pytorch_model.safetensors") hides the reason, and a
    single-file checkpoint (``sv3d_u.ckpt``) never reaches them. A folder holding any
    ``.safetensors`` file passes: the libraries then pick the safetensors and skip the pickles.

    Args:
        folder: the local folder (subfolder included) the component is read from.
        where: how the preset names the component, for the message.

    Raises:
        ModelUnavailable: the folder holds pickle weight files and no safetensors.
    """
    if not folder.is_dir():
        return
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files):
        return
    pickles = sorted(p.name for p in files if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        shown = ", ".join(pickles[:3]) + (f" and {len(pickles) - 3} more" if len(pickles) > 3 else "")
        raise ModelUnavailable(
            f"Refused to load {where}: the folder {folder} holds only pickle weights ({shown}), and "
            "Cascade Studio loads safetensors only, because loading a pickle can run any code "
            "hidden in it. Nothing was loaded. Point the preset at a folder with .safetensors "
            "files (the Hugging Face repos have them), or convert these weights to safetensors "
            "on a machine where you trust them.")


def load_pretrained(cls: type[T], source: Source, ctx: LoadContext, **kwargs: Any) -> T:
    """Load ``cls`` from ``source`` with safetensors only, turning missing files into a clear error.

    Args:
        cls: a diffusers or transformers class with ``from_pretrained`` (models, tokenizers,
            schedulers, image processors).
        source: the preset's source for this component.
        ctx: cache and offline settings.
        **kwargs: passed on, e.g. ``dtype=torch.bfloat16``.
    """
    target = resolve_repo(source, ctx)
    where = f"{source.repo}" + (f" (subfolder {source.subfolder})" if source.subfolder else "")
    refuse_pickle_only(Path(target).expanduser() / (source.subfolder or ""), f"{cls.__name__} from {where}")
    options: dict[str, Any] = dict(kwargs)
    if source.subfolder:
        options["subfolder"] = source.subfolder
    if ctx.models_dir is not None and not source.repo.startswith(TINY_PREFIX):
        options["cache_dir"] = str(ctx.models_dir)
    if ctx.offline:
        options["local_files_only"] = True
    if source.revision and not source.repo.startswith(TINY_PREFIX):
        options["revision"] = source.revision
    import torch  # local: this module stays importable without torch for presets and tabs

    # Weights are safetensors only (a pickle can run code). transformers' Auto classes are
    # factories, not nn.Module subclasses, but load weights all the same.
    loads_weights = isinstance(cls, type) and (issubclass(cls, torch.nn.Module)
                                               or cls.__name__.startswith("AutoModel"))
    if loads_weights:
        options["use_safetensors"] = True
        if source.variant:
            options["variant"] = source.variant
    started = time.perf_counter()
    try:
        loaded = cls.from_pretrained(target, **options)  # type: ignore[attr-defined]
    except (OSError, ValueError) as error:  # hub and file errors are OSError subclasses
        hint = (
            "the app is offline (--offline, --preset tiny or HF_HUB_OFFLINE=1): start it online once "
            "to download the files, or pick a preset whose files you have"
            if ctx.offline
            else "check the repo name, your network and, for gated repos, that you accepted the "
            "license on the model page and set HF_TOKEN"
        )
        raise ModelUnavailable(
            f"Could not load {cls.__name__} from {where}"
            + (f" variant {source.variant}" if source.variant else "")
            + f": {hint}. ({type(error).__name__}: {str(error)[:300]})"
        ) from error
    logger.info("loaded %s from %s in %.2f s", cls.__name__, where, time.perf_counter() - started)
    return loaded


# ----- single safetensors files (the EfficientNet encoder and previewer at a repo root) ----------

def resolve_file(source: Source, filename: str, ctx: LoadContext) -> Path:
    """The local path of ``filename`` in ``source``'s folder, downloading it from the hub if needed.

    A ``tiny:`` source or a local folder is read in place; a hub repo goes through
    ``hf_hub_download`` with the same cache and offline rules as ``load_pretrained``. A variant
    names ``<stem>.<variant>.safetensors`` (the diffusers spelling).

    Raises:
        ModelUnavailable: the file is missing locally (offline) or could not be fetched.
    """
    if source.variant:
        stem, dot, suffix = filename.rpartition(".")
        filename = f"{stem}.{source.variant}{dot}{suffix}"
    where = f"{filename} from {source.repo}" + (f" (subfolder {source.subfolder})" if source.subfolder else "")
    target = Path(resolve_repo(source, ctx)).expanduser()
    if source.repo.startswith(TINY_PREFIX) or target.is_dir():
        path = target / (source.subfolder or "") / filename
        if not path.is_file():
            refuse_pickle_only(path.parent, where)
            raise ModelUnavailable(f"Could not load {where}: there is no {path}.")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError  # not an OSError in huggingface_hub 2.x

    started = time.perf_counter()
    try:
        path = Path(hf_hub_download(
            source.repo, filename, subfolder=source.subfolder, revision=source.revision,
            cache_dir=str(ctx.models_dir) if ctx.models_dir is not None else None,
            local_files_only=ctx.offline,
        ))
    except (OSError, ValueError, EntryNotFoundError) as error:
        hint = (
            "the app is offline (--offline, --preset tiny or HF_HUB_OFFLINE=1): start it online once "
            "to download the file, or pick a preset whose files you have"
            if ctx.offline
            else "check the repo name, your network and, for gated repos, that you accepted the "
            "license on the model page and set HF_TOKEN"
        )
        raise ModelUnavailable(
            f"Could not load {where}: {hint}. ({type(error).__name__}: {str(error)[:300]})"
        ) from error
    logger.info("resolved %s in %.2f s", where, time.perf_counter() - started)
    return path


def file_on_disk(source: Source, filename: str, ctx: LoadContext) -> Path | None:
    """The local path of ``filename`` in ``source``'s folder if it is already on disk, else None.

    Never downloads and never builds a tiny model: for questions asked when a page opens (a
    config value for the UI), which must cost nothing and start nothing. A hub repo is looked up
    in the cache with ``try_to_load_from_cache``; a tiny one only once it is built.
    """
    if source.repo.startswith(TINY_PREFIX):
        name = source.repo[len(TINY_PREFIX):]
        root = ctx.tiny.path(name, ctx.cache_dir) if name in ctx.tiny.names() else None
        if root is None or not (root / TINY_MARKER).is_file():
            return None
    else:
        root = Path(source.repo).expanduser()
    if root.is_dir():
        path = root / (source.subfolder or "") / filename
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source.repo, f"{source.subfolder}/{filename}" if source.subfolder else filename,
                                   cache_dir=str(ctx.models_dir) if ctx.models_dir is not None else None,
                                   revision=source.revision)
    return Path(found) if isinstance(found, str) else None


def read_safetensors(source: Source, filename: str, ctx: LoadContext) -> tuple[dict[str, Any], dict[str, str], str]:
    """Tensors and metadata of one safetensors file (CPU), plus a description of where it came from.

    Safetensors only: it cannot run code, unlike a pickled checkpoint.
    """
    from safetensors import SafetensorError, safe_open

    path = resolve_file(source, filename, ctx)
    where = f"{filename} ({path})"
    started = time.perf_counter()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, SafetensorError) as error:
        raise ModelUnavailable(f"Could not read {where}: {error}. Delete the file so it is downloaded "
                               "again, or fix the preset's source.") from error
    logger.info("read %s: %d tensors in %.2f s", where, len(tensors), time.perf_counter() - started)
    return tensors, metadata, where


def load_state_dict_strict(module: Any, state: dict[str, Any], where: str) -> None:
    """Load ``state`` into ``module`` (possibly built on the meta device) key for key and shape for shape.

    The error names what differs: missing keys, unexpected keys, and shape mismatches (a few of
    each, with the counts). A missing BatchNorm ``num_batches_tracked`` is allowed, as torch
    itself allows it: the counter is unused at inference and older checkpoints lack it.

    Raises:
        ModelUnavailable: the file does not fit the module.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} (file {list(state[k].shape)}, model {list(v.shape)})"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]

    def listed(label: str, items: list[str]) -> str:
        more = f" and {len(items) - 5} more" if len(items) > 5 else ""
        return f"{label} ({len(items)}): {', '.join(items[:5])}{more}"

    problems = [listed(label, items) for label, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if items]
    if problems:
        raise ModelUnavailable(f"{where} does not match {type(module).__name__}: " + "; ".join(problems)
                               + ". Is it the right file for this component?")
    module.load_state_dict(state, strict=True, assign=True)


def torch_dtype(name: str) -> "torch.dtype":
    """The torch dtype a preset's ``dtype`` names (``bfloat16``, ``float16``, ``float32``).

    Raises:
        ValueError: ``auto`` (the Studio makes it concrete before any backend is built, see
            ``backends.runtime.cpu_dtype.resolve``) or any other name.
    """
    import torch

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if name not in dtypes:
        hint = (" (dtype auto is resolved by the Studio once it knows the device: build settings with "
                "backends.runtime.cpu_dtype.resolve)" if name == "auto" else "")
        raise ValueError(f"dtype must be one of {', '.join(dtypes)}; got {name!r}{hint}")
    return dtypes[name]


def weights_dtype(module: Any) -> "torch.dtype":
    """The dtype of a module's floating-point weights (its first floating parameter or buffer; float32 if none).

    The same answer as diffusers' ``ModelMixin.dtype`` for the modules we load (all in one dtype,
    no layerwise-casting hooks), without its walk over every submodule looking for hooks: that
    walk took 3-4 ms a call on the tiny SDXL UNet, and a job asks several times.
    """
    import itertools

    import torch

    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def element_size(module: Any) -> int:
    """Bytes per element of a module's floating-point weights (``weights_dtype``)."""
    import torch

    return torch.finfo(weights_dtype(module)).bits // 8
