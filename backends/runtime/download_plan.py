"""What a preset needs from the hub, worked out without the network.

A preset names sources (repo, subfolder, variant, revision). Here they become one plan per
(repo, revision): the hub glob patterns of the configs and of the chosen variant's safetensors,
plus the *needs* each source has (e.g. "the prior's bf16 weights"). ``missing`` checks those needs
against the local hub cache only, so an offline app can say exactly what it lacks.
``backends.runtime.downloads`` then sizes and fetches the plans; import the API from there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from backends.runtime.loading import TINY_PREFIX, LoadContext, Source

#: File stems of diffusers (``diffusion_pytorch_model``) and transformers (``model``) weights.
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
#: The shard suffix both libraries write (``-00001-of-00003``). Spelled digit by digit because
#: the hub's patterns are fnmatch globs, where ``*`` would also swallow a ``.fp16`` infix.
SHARD = "-" + "[0-9]" * 5 + "-of-" + "[0-9]" * 5
#: Small files in a component's subfolder: configs, tokenizer vocabularies, chat templates.
SUBFOLDER_SMALL = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja")
#: The same at the repo root, named one by one: a root ``*.json`` glob would match every
#: subfolder too, since the hub's ``*`` crosses ``/``.
ROOT_SMALL = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
              "tokenizer.model", "chat_template.jinja", "preprocessor_config.json",
              "scheduler_config.json", "*.tiktoken")


@dataclass(frozen=True)
class Need:
    """One thing a source needs in the cache; met when any pattern matches a cached file."""

    #: For messages: ``cascade.prior weights (bf16) in prior_lite/``.
    what: str
    #: Alternatives in hub glob syntax, e.g. the diffusers and the transformers weight name.
    patterns: tuple[str, ...]

    def shown(self) -> str:
        """The first plain alternatives (no shard or index globs), short enough for a message."""
        plain = [p for p in self.patterns if "[" not in p and ".index." not in p]
        return " or ".join(plain[:2]) + (" …" if len(plain) > 2 else "")


@dataclass(frozen=True)
class RepoPlan:
    """What to fetch from one repo at one revision (every source of the preset merged)."""

    repo: str
    #: ``main`` when the preset names none.
    revision: str
    #: Hub glob patterns, the same syntax as ``snapshot_download(allow_patterns=...)``.
    allow_patterns: tuple[str, ...]
    #: What must be cached for the plan to be complete (checked offline by ``missing``).
    needs: tuple[Need, ...]


@dataclass(frozen=True)
class Missing:
    """What one repo still lacks in the cache, found without the network."""

    repo: str
    revision: str
    needs: tuple[Need, ...]

    def describe(self) -> str:
        """One line for messages and the System tab."""
        items = "; ".join(f"{n.what}: {n.shown()}" for n in self.needs)
        return f"{self.repo} (revision {self.revision}): {items}"


def plan(settings: Any, sections: Iterable[str] | None = None,
         components: Mapping[str, Iterable[str]] | None = None,
         files: Mapping[str, Mapping[str, str]] | None = None) -> list[RepoPlan]:
    """The downloads a preset needs, one plan per (repo, revision).

    Every ``Source`` of every section counts, except ``tiny:`` repos (built locally) and repos that
    are existing local folders. Model components get their variant's safetensors only (never
    ``.bin``/``.ckpt``/``.pt``); every other source gets its config and tokenizer files.

    Args:
        settings: a ``PresetSettings`` (any dataclass whose fields are sections holding Sources).
        sections: only these section names (e.g. ``["cascade"]`` before the first image); all if None.
        components: section -> the keys that are model components; None takes the
            ``BackendSpec.components`` of the specs the settings were made from
            (``settings.families``). The rest (tokenizer, scheduler, ...) get no weights.
        files: section -> key -> the one file a source is read from (single-file checkpoints read
            with ``loading.resolve_file``, e.g. ``effnet_encoder.safetensors``); the variant goes
            before the suffix as there. None takes the specs' ``BackendSpec.files``. A Source with
            a ``filename`` attribute counts too.
    """
    specs = getattr(settings, "families", ())
    if components is None:
        components = {spec.settings_key: spec.components for spec in specs}
    if files is None:
        files = {spec.settings_key: spec.files for spec in specs}
    wanted = None if sections is None else set(sections)
    merged: dict[tuple[str, str], tuple[list[str], list[Need]]] = {}
    for section in fields(settings):
        value = getattr(settings, section.name)
        if wanted is not None and section.name not in wanted or not is_dataclass(value):
            continue
        # A section may name sources it never reads (``unused_sources()``: SD3.5's transformers of
        # models its preset does not offer, 16.3 GB each, or T5 when it is off) or reads only when
        # a job asks (SDXL's refiner, 4.5 GB, fetched then: ``component_plan``): those are skipped.
        unused = set(value.unused_sources()) if hasattr(value, "unused_sources") else set()
        for key, source in _sources(value):
            if key in unused or not _from_hub(source):
                continue
            filename = getattr(source, "filename", None) or files.get(section.name, {}).get(key)
            patterns, needs = _source_patterns(source, f"{section.name}.{key}",
                                               key in components.get(section.name, ()), filename)
            slot = merged.setdefault((source.repo, source.revision or "main"), ([], []))
            slot[0].extend(p for p in patterns if p not in slot[0])
            slot[1].extend(n for n in needs if n not in slot[1])
    return [RepoPlan(repo, rev, tuple(pats), tuple(needs)) for (repo, rev), (pats, needs) in merged.items()]


def component_plan(label: str, source: Source) -> list[RepoPlan]:
    """The download of one model component alone (``label`` as in messages: ``sdxl.refiner_unet``).

    For a component a preset leaves out of its plan (``unused_sources()``) until a job asks for it,
    such as SDXL's refiner; empty for a ``tiny:`` repo or a local folder.
    """
    if not _from_hub(source):
        return []
    patterns, needs = _source_patterns(source, label, True, getattr(source, "filename", None))
    return [RepoPlan(source.repo, source.revision or "main", tuple(patterns), tuple(needs))]


def _from_hub(source: Source) -> bool:
    """Whether ``source`` is downloaded at all: not a ``tiny:`` repo (built locally) nor a local folder."""
    return not (source.repo.startswith(TINY_PREFIX) or Path(source.repo).expanduser().is_dir())


def _sources(section: Any) -> Iterator[tuple[str, Source]]:
    for item in fields(section):
        value = getattr(section, item.name)
        if isinstance(value, Source):
            yield item.name, value


def _source_patterns(source: Source, label: str, weights: bool,
                     filename: str | None) -> tuple[list[str], list[Need]]:
    prefix = f"{source.subfolder.strip('/')}/" if source.subfolder else ""
    where = f" in {prefix}" if prefix else " at the repo root"
    if filename:
        if source.variant:  # the spelling loading.resolve_file asks for
            stem, dot, suffix = filename.rpartition(".")
            filename = f"{stem}.{source.variant}{dot}{suffix}"
        return [prefix + filename], [Need(f"{label} file", (prefix + filename,))]
    small = [prefix + p for p in (SUBFOLDER_SMALL if prefix else ROOT_SMALL)]
    needs = [Need(f"{label} config{where}", tuple(small))]
    if not weights:
        return small, needs
    variant = source.variant
    found, index = [], []
    for stem in WEIGHT_STEMS:
        base = prefix + stem
        if variant:
            # transformers shards as model.bf16-00001-of-00002, older diffusers as ...-00001-of-00002.bf16
            found += [f"{base}.{variant}.safetensors", f"{base}.{variant}{SHARD}.safetensors",
                      f"{base}{SHARD}.{variant}.safetensors"]
            index.append(f"{base}.safetensors.index.{variant}.json")
        else:
            found += [f"{base}.safetensors", f"{base}{SHARD}.safetensors"]
            index.append(f"{base}.safetensors.index.json")
    needs.append(Need(f"{label} weights ({variant or 'no variant'}){where}", tuple(found)))
    return small + found + index, needs


def hub_cache(ctx: LoadContext) -> Path:
    """The folder ``from_pretrained(cache_dir=ctx.models_dir)`` reads: --models-dir or the hub default."""
    return cache_folder(ctx.models_dir)


def cache_folder(models_dir: Path | None) -> Path:
    """``models_dir``, or the hub client's default (HF_HUB_CACHE, else HF_HOME/hub), read at its import."""
    from huggingface_hub import constants  # HF_HUB_CACHE follows HF_HOME / HF_HUB_CACHE

    return Path(models_dir) if models_dir is not None else Path(constants.HF_HUB_CACHE)


def storage_folder(cache: Path, repo: str) -> Path:
    """A model repo's folder in the hub cache (``models--org--name``)."""
    from huggingface_hub.file_download import repo_folder_name

    return cache / repo_folder_name(repo_id=repo, repo_type="model")


def missing(plans: Sequence[RepoPlan], ctx: LoadContext) -> list[Missing]:
    """What the cache lacks for these plans, without the network (for offline errors and the UI).

    A need counts as met when any of its patterns matches a file in the snapshot the revision
    points at (``refs/<revision>``), the same snapshot ``from_pretrained`` reads offline.
    """
    from huggingface_hub.file_download import REGEX_COMMIT_HASH
    from huggingface_hub.utils import filter_repo_objects

    cache = hub_cache(ctx)
    result = []
    for p in plans:
        storage = storage_folder(cache, p.repo)
        ref = storage / "refs" / p.revision
        commit = p.revision if REGEX_COMMIT_HASH.fullmatch(p.revision) else (
            ref.read_text().strip() if ref.is_file() else None)
        snapshot = storage / "snapshots" / commit if commit else None
        cached = []
        if snapshot is not None and snapshot.is_dir():
            cached = [f.relative_to(snapshot).as_posix() for f in snapshot.rglob("*") if f.is_file()]
        lacking = tuple(n for n in p.needs
                        if not list(filter_repo_objects(cached, allow_patterns=list(n.patterns))))
        if lacking:
            result.append(Missing(p.repo, p.revision, lacking))
    return result
