"""Tiny random-weight models, built offline and saved like real hub repos.

The tiny preset points every backend at ``tiny:<name>``. ``backends.runtime.loading`` asks the
``TinyModels`` of its ``LoadContext`` for that name; the family's spec declared it (a
``TinyFamily``: a builder and a version), so this module knows no family. We build it once into
``<cache>/tiny/<name>-<version>/`` with a fixed seed and hand back a folder that
``from_pretrained`` reads exactly as it reads a downloaded repo. Tests, CI and the browser tests
therefore run the same loading and sampling code as real users, on a CPU, in seconds.

Builders keep the real block structure (block types, conditioning types, patch sizes) and shrink
only widths and depths, so shape bugs show up here and not on a GPU. The seeded-init helpers
below are shared by every family's builder.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from backends.runtime.errors import UnknownNameError

if TYPE_CHECKING:  # heavy imports stay lazy: the registry imports this module at start-up
    import torch
    from transformers import CLIPTokenizer

logger = logging.getLogger(__name__)

#: Written last into a finished build; a folder without it is never handed out.
MARKER = "tiny-complete.json"

# One build at a time per process: threads would otherwise each build a copy (harmless but slow).
# Across processes the atomic rename in `_publish` decides the winner.
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class TinyFamily:
    """How to build one tiny family; declared by the family's spec."""

    #: The name after ``tiny:`` in preset sources (``tiny:cascade``).
    name: str
    #: ``module:function`` that writes every component into an empty folder, one subfolder per
    #: component; imported only when a build is needed (it pulls in torch and diffusers).
    builder: str
    #: Part of the folder name; bump it when the builder changes so old caches are not reused.
    version: str

    def build(self, root: Path) -> None:
        """Run the builder into ``root``."""
        module_name, function = self.builder.split(":")
        getattr(importlib.import_module(module_name), function)(root)


class TinyModels:
    """The tiny families a ``LoadContext`` can build, by name; fails loudly with the known names."""

    def __init__(self, families: Iterable[TinyFamily] = ()) -> None:
        self._families = {family.name: family for family in families}

    def names(self) -> tuple[str, ...]:
        """The families ``ensure`` can build."""
        return tuple(sorted(self._families))

    def family(self, name: str) -> TinyFamily:
        """The declared family ``name``.

        Raises:
            UnknownNameError: ``name`` is not a tiny family; the message lists the known ones.
        """
        try:
            return self._families[name]
        except KeyError:
            raise UnknownNameError(
                f"Unknown tiny model family {name!r}; known families: {', '.join(self.names()) or 'none'}"
            ) from None

    def path(self, name: str, cache_dir: Path) -> Path:
        """Where family ``name`` lives (built or not)."""
        family = self.family(name)
        return Path(cache_dir) / "tiny" / f"{name}-{family.version}"

    def ensure(self, name: str, cache_dir: Path) -> Path:
        """Return the folder of tiny family ``name``, building it first if needed.

        Safe to call from several threads or processes at once: each builder writes into its own
        temporary folder next to the target and renames it into place; the first rename wins and
        the others discard their copy. A finished build is recognised by its marker file, so a
        second call costs one ``stat``.

        Args:
            name: the family, e.g. ``"cascade"`` (from a ``tiny:cascade`` source).
            cache_dir: the app's cache folder (``LoadContext.cache_dir``).

        Raises:
            UnknownNameError: ``name`` is not a tiny family; the message lists the known ones.
        """
        target = self.path(name, cache_dir)
        if (target / MARKER).is_file():
            return target
        with _BUILD_LOCK:
            if (target / MARKER).is_file():
                return target
            _build(self.family(name), target)
        return target


def _build(family: TinyFamily, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        family.build(staging)
        marker = {"family": family.name, "version": family.version}
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _publish(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    size = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
    logger.info(
        "tiny %s ready at %s (%d bytes) in %.2f s", family.name, target, size, time.perf_counter() - started
    )


def _publish(staging: Path, target: Path) -> None:
    """Move a finished build into place; losing the race to another process is fine."""
    try:
        os.rename(staging, target)
        return
    except OSError:
        if (target / MARKER).is_file():
            logger.info("tiny build %s was finished by another process; keeping that one", target)
            return
        if not target.exists():
            raise
    # The target exists but has no marker: not ours and not a finished build. Move it aside.
    stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex}")
    os.rename(target, stale)
    logger.warning("moved an unfinished tiny model folder aside: %s", stale)
    shutil.rmtree(stale, ignore_errors=True)
    os.rename(staging, target)


# ----- helpers every family's builder uses ---------------------------------------------------

@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Fix torch's CPU generator for one component without disturbing the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def wake_zero_parameters(module: torch.nn.Module, std: float = 0.1) -> None:
    """Give zero-initialised parameters small random values.

    Several blocks start as exact identities (Paella's ``gammas``, ``GlobalResponseNorm``'s
    ``gamma``/``beta``), which would let a conditioning bug go unnoticed in tests. Call under
    ``seeded`` so the values are reproducible.
    """
    import torch

    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.normal_(0.0, std)


def clip_tokenizer(words: str, pad_token: str = "<|endoftext|>") -> "CLIPTokenizer":
    """A tiny CLIP tokenizer, built offline: every byte (plain and word-final) plus ``words`` merged whole.

    Built from a vocab dict and merges given as tuples: transformers 5 rejects "a b" merge strings
    (``PyMerges`` error, NOTES.md). Every input still tokenises, because any byte has a token.
    ``pad_token`` is CLIP-L's ``<|endoftext|>`` or OpenCLIP-bigG's ``!``, as the real repos have them.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())  # the 256 printable stand-ins for raw bytes (GPT-2's)
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for symbol in alphabet:
            vocab[symbol + suffix] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in words.split():
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = [pair[0] + pair[1], *pieces[2:]]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token=pad_token)
