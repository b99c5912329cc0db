"""One loading path for real and tiny weights.

A preset names each component's source as ``repo`` (a hub id, a local folder, or ``tiny:NAME``),
``subfolder`` and ``variant``. ``tiny:`` sources are built once into the cache by ``backends.tiny``
and then read by exactly the same ``from_pretrained`` call as a hub repo, so tests exercise the code
real users run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from backends.errors import ModelUnavailable

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"

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


@dataclass(frozen=True)
class LoadContext:
    """Settings from the command line that every loader needs."""

    #: Where tiny models are built (``<cache>/tiny/...``).
    cache_dir: Path
    #: Hub cache override (``--models-dir``); None follows HF_HOME / HF_HUB_CACHE.
    models_dir: Path | None = None
    #: Never contact the hub; missing files fail at once with a message saying what is missing.
    offline: bool = False


def resolve_repo(source: Source, ctx: LoadContext) -> str:
    """Return the path or hub id to hand to ``from_pretrained``, building tiny models on demand."""
    if source.repo.startswith(TINY_PREFIX):
        from backends.tiny import ensure_tiny  # imported lazily: it pulls in torch and diffusers

        return str(ensure_tiny(source.repo[len(TINY_PREFIX):], ctx.cache_dir))
    return source.repo


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

    if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
        options["use_safetensors"] = True
        if source.variant:
            options["variant"] = source.variant
    where = f"{source.repo}" + (f" (subfolder {source.subfolder})" if source.subfolder else "")
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
