"""Hub downloads for a preset: only the files its variants need, checked against free disk first.

``from_pretrained`` would fetch the same files lazily, at the first generation, with no size check
and no progress we can show. So ``ensure`` takes the plans of ``backends.runtime.download_plan``, sizes the
missing files from the hub's metadata, refuses to start when the disk cannot hold them, and
downloads them into the standard hub cache (``--models-dir`` or HF_HOME / HF_HUB_CACHE), where
``backends.runtime.loading`` reads them. Without a network (``--offline``, HF_HUB_OFFLINE or an unreachable
hub) it checks the cache alone, and the error lists what is missing and the command that fetches it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from backends.runtime.download_plan import (
    Missing,
    Need,
    RepoPlan,
    cache_folder,
    component_plan,
    hub_cache,
    missing,
    plan,
    storage_folder,
)
from backends.runtime.errors import ModelUnavailable
from backends.runtime.loading import LoadContext
from backends.runtime.progress import ProgressFn

if TYPE_CHECKING:
    from backends.runtime.presets import Preset

logger = logging.getLogger(__name__)

COMMAND = "python app.py --download-only --preset {preset}"
_HASH_CHUNK = 16 * 1024 * 1024
#: Seconds between console lines while a file downloads.
_LOG_EVERY_S = 5.0


__all__ = ["COMMAND", "Missing", "Need", "RemoteFile", "RepoPlan", "download_preset", "ensure", "fetch_component",
           "hub_cache", "missing", "plan", "sizes", "component_plan"]


@dataclass(frozen=True)
class RemoteFile:
    """One file the plan selects on the hub, with what the cache already holds of it."""

    repo: str
    revision: str
    #: Commit the revision pointed at when sized.
    commit: str
    path: str
    size: int
    #: Already linked into the cached snapshot of ``commit``.
    present: bool
    #: Bytes already on disk: the whole file when its blob is cached, else a partial download.
    on_disk: int

    @property
    def to_fetch(self) -> int:
        return 0 if self.present else self.size - self.on_disk


def _partial(cache: Path, repo: str, etag: str) -> Path:
    # Our own name: huggingface_hub 2.4 deletes its `<etag>.<uuid>.incomplete` files (see `_fetch`).
    return storage_folder(cache, repo) / "blobs" / f"{etag}.studio-partial"


def sizes(plans: Sequence[RepoPlan], token: str | bool | None = None, *, models_dir: Path | None = None,
          endpoint: str | None = None) -> list[RemoteFile]:
    """Every file the plans select on the hub, sized from the repo's file metadata.

    One ``model_info(files_metadata=True)`` call per plan; files already linked into the cached
    snapshot count as present, cached blobs and partial downloads as bytes on disk.

    Raises:
        ModelUnavailable: gated, missing or unreadable repos, or a need no hub file meets (a
            variant the repo does not have).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    cache = cache_folder(models_dir)
    api = HfApi(endpoint=endpoint, token=token)
    found: list[RemoteFile] = []
    for p in plans:
        with _hub_errors(p.repo, p.revision):
            info = api.model_info(p.repo, revision=p.revision, files_metadata=True)
        assert info.sha is not None, "the hub always reports the commit of a model"
        names = [s.rfilename for s in info.siblings or []]
        for need in p.needs:
            if not list(filter_repo_objects(names, allow_patterns=list(need.patterns))):
                raise ModelUnavailable(f"{p.repo} (revision {p.revision}) has no file for {need.what}: expected "
                                       f"{need.shown()}. Check the preset's repo, subfolder and variant.")
        snapshot = storage_folder(cache, p.repo) / "snapshots" / str(info.sha)
        for s in filter_repo_objects(info.siblings or [], allow_patterns=list(p.allow_patterns),
                                     key=lambda s: s.rfilename):
            size = s.lfs.size if s.lfs is not None else (s.size or 0)
            etag = s.lfs.sha256 if s.lfs is not None else str(s.blob_id)
            present = (snapshot / s.rfilename).is_file()
            blob = storage_folder(cache, p.repo) / "blobs" / etag
            partial = _partial(cache, p.repo, etag)
            on_disk = size if present or blob.is_file() else (partial.stat().st_size if partial.is_file() else 0)
            found.append(RemoteFile(p.repo, p.revision, str(info.sha), s.rfilename, size, present, on_disk))
    return found


def ensure(plans: Sequence[RepoPlan], ctx: LoadContext, progress: ProgressFn | None = None, *,
           preset: str | None = None, token: str | bool | None = None, endpoint: str | None = None,
           free_space: Callable[[Path], int] | None = None) -> list[RemoteFile]:
    """Download whatever the plans need and the cache lacks; return the files fetched.

    Order: size every file from the hub's metadata; resolve each file to fetch (a gated repo fails
    here, before any byte); compare the bytes still to fetch with the free space of the cache
    folder; then download file by file, resuming partial downloads with a Range request.

    Args:
        plans: from ``plan``.
        ctx: ``models_dir`` is the cache; ``offline`` forbids the network.
        progress: called as ``(label, bytes_done, bytes_total)`` over all files; it may raise
            (``Cancelled``) to stop, and the partial file is kept for the next call.
        preset: named in the offline message's ``--download-only`` command.
        token: hub token; None reads HF_TOKEN or the saved login.
        endpoint: hub URL; None follows HF_ENDPOINT.
        free_space: bytes free at a folder; defaults to ``shutil.disk_usage``. Tests pass a fake.

    Raises:
        ModelUnavailable: offline with files missing, disk too small, gated or unknown repo.
    """
    from huggingface_hub import constants

    if not plans:
        return []
    cause: BaseException | None = None
    if ctx.offline or constants.is_offline_mode():
        reason = "the app is offline (--offline, --preset tiny or HF_HUB_OFFLINE=1)"
    else:
        try:
            return _download(plans, ctx, progress, token, endpoint, free_space or _free_bytes)
        except _connection_errors() as error:
            reason = f"the hub could not be reached ({type(error).__name__}: {str(error)[:200]})"
            cause = error
    gone = missing(plans, ctx)
    if gone:
        raise ModelUnavailable(_offline_message(gone, reason, preset)) from cause
    if cause is not None:
        logger.warning("%s; using the cached files", reason)
    return []


def download_preset(preset: Preset, ctx: LoadContext, progress: ProgressFn | None = None, *,
                    sections: Iterable[str] | None = None, token: str | bool | None = None) -> list[RemoteFile]:
    """Fetch everything ``preset`` needs: ``python app.py --download-only --preset NAME``."""
    return ensure(plan(preset.settings, sections), ctx, progress, preset=preset.name, token=token)


def fetch_component(label: str, source: Any, ctx: LoadContext, progress: ProgressFn | None = None) -> None:
    """Download one component that its preset's plan leaves out until a job asks for it (SDXL's refiner).

    Checked locally first, so a component already in the cache costs no network; offline, a
    missing one fails with ``ModelUnavailable`` naming its files, as a preset's would.
    """
    plans = component_plan(label, source)
    if plans and missing(plans, ctx):
        ensure(plans, ctx, progress)


def _download(plans: Sequence[RepoPlan], ctx: LoadContext, progress: ProgressFn | None,
              token: str | bool | None, endpoint: str | None, free_space: Callable[[Path], int]) -> list[RemoteFile]:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    cache = hub_cache(ctx)
    todo = [f for f in sizes(plans, token, models_dir=ctx.models_dir, endpoint=endpoint) if not f.present]
    if not todo:
        logger.info("all %d repo(s) of the preset are in %s", len(plans), cache)
        return []
    located = []
    for f in todo:  # HEAD every file first: a gated repo fails here, before any byte is written
        with _hub_errors(f.repo, f.revision):
            url = hf_hub_url(f.repo, f.path, revision=f.commit, endpoint=endpoint)
            meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
        if meta.etag is None:
            raise ModelUnavailable(f"{url} answered without an ETag: is HF_ENDPOINT a Hugging Face hub?")
        located.append((f, url, meta))
    need = sum(f.to_fetch for f in todo)
    free = free_space(cache)
    if need > free:
        raise ModelUnavailable(
            f"Not enough free disk space in {cache}: the download needs {_fmt(need)} but only {_fmt(free)} "
            "is free. Free some space, or point --models-dir (or HF_HUB_CACHE) at a bigger disk.")
    total = sum(f.size for f in todo)
    tracker = _Tracker(progress, total, sum(f.on_disk for f in todo))
    logger.info("downloading %d file(s), %s to fetch (%s free) into %s", len(todo), _fmt(need), _fmt(free), cache)
    for f, url, meta in located:
        with _hub_errors(f.repo, f.revision):
            _fetch(f, url, meta, cache, token, endpoint, tracker)
    return todo


def _fetch(f: RemoteFile, url: str, meta: Any, cache: Path, token: str | bool | None, endpoint: str | None,
           tracker: _Tracker) -> None:
    """Download one file into its blob, resuming a partial one, then let the hub client link it.

    huggingface_hub 2.4 writes each download to a process-unique ``<etag>.<uuid>.incomplete`` and
    deletes it on any failure (so that concurrent processes never share one), which means an
    interrupted multi-GB download restarts from zero. We keep our own partial file under the
    blob's name, continue it with ``http_get(resume_size=...)`` (a ``Range: bytes=N-`` request),
    verify the sha256 the hub gave as the LFS ETag, and move it into ``blobs/``. ``hf_hub_download``
    then finds the blob and only writes the snapshot link and ``refs/<revision>``, so the cache
    layout stays the library's.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    label = f"{f.repo}/{f.path}"
    storage = storage_folder(cache, f.repo)
    blob = storage / "blobs" / meta.etag
    lock = cache / ".locks" / storage.name / f"{meta.etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with WeakFileLock(lock):
        if not blob.is_file():
            partial = _partial(cache, f.repo, meta.etag)
            partial.parent.mkdir(parents=True, exist_ok=True)
            # The hub URL, not the CDN location the HEAD saw: a signed URL may expire while earlier
            # files download, and the client drops the token itself when a redirect leaves the hub.
            headers = build_hf_headers(token=token)
            if partial.is_file() and partial.stat().st_size > (meta.size or f.size):
                partial.unlink()  # longer than the file: not a prefix of it, start again
            with partial.open("ab") as out:
                resume = out.tell()
                if resume:
                    logger.info("%s: resuming at %s of %s", label, _fmt(resume), _fmt(meta.size or f.size))
                try:
                    http_get(url, out, resume_size=resume, headers=headers, expected_size=meta.size,
                             displayed_filename=f.path, tqdm_class=tracker.bar_class(label))
                except (HfHubHTTPError, ConnectionError):
                    raise  # the caller says what to do about these
                except OSError as error:  # a short body after http_get's own retries, or a full disk
                    raise ModelUnavailable(f"{label}: the download stopped ({error}). Run it again: it "
                                           "resumes where it stopped.") from error
            _check_sha256(partial, meta.etag, label)
            os.replace(partial, blob)
    hf_hub_download(f.repo, f.path, revision=f.revision, cache_dir=str(cache), token=token, endpoint=endpoint)
    seconds = time.perf_counter() - started
    logger.info("%s: %s in %.1f s (%.1f MB/s)", label, _fmt(f.size), seconds, f.to_fetch / 1e6 / max(seconds, 1e-3))


def _check_sha256(path: Path, etag: str, label: str) -> None:
    """LFS ETags are the file's sha256; check it, since a resumed file is stitched from two transfers."""
    if len(etag) != 64:
        return  # a git blob id (small files), not a sha256
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(_HASH_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != etag:
        path.unlink()
        raise ModelUnavailable(f"{label}: the downloaded file does not match the hub's checksum and was deleted; "
                               "run the download again.")


class _Tracker:
    """Sums bytes over all files for ``progress`` and logs a line every few seconds."""

    def __init__(self, progress: ProgressFn | None, total: int, done: int) -> None:
        self.progress, self.total, self.done = progress, total, done
        self._logged = time.monotonic()
        if progress is not None:
            progress("Downloading", done, total)

    def advance(self, label: str, n: int) -> None:
        self.done += n
        if time.monotonic() - self._logged >= _LOG_EVERY_S:
            self._logged = time.monotonic()
            logger.info("downloading %s: %s of %s (%.0f%%)", label, _fmt(self.done), _fmt(self.total),
                        100 * self.done / max(self.total, 1))
        if self.progress is not None:
            self.progress(f"Downloading {label}", self.done, self.total)

    def bar_class(self, label: str) -> type:
        """A class with the tqdm surface ``http_get`` uses (it instantiates the class itself)."""
        tracker = self

        class Bar:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

            def __enter__(self) -> Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def update(self, n: float | None = 1) -> None:
                tracker.advance(label, int(n or 0))

            def close(self) -> None:
                pass

        return Bar


@contextlib.contextmanager
def _hub_errors(repo: str, revision: str) -> Iterator[None]:
    """Turn the hub client's HTTP errors for one repo into ``ModelUnavailable`` saying what to do."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if isinstance(error, GatedRepoError) or status in (401, 403):
            raise ModelUnavailable(_license_message(repo, status)) from error
        if isinstance(error, RevisionNotFoundError):
            raise ModelUnavailable(f"{repo} has no revision {revision!r}; check the preset.") from error
        if isinstance(error, RepositoryNotFoundError):
            raise ModelUnavailable(f"{repo} was not found on the hub; check the preset's repo name.") from error
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ModelUnavailable(f"The hub answered {status} for {repo} ({first_line}). Try again later; "
                               "finished files are kept and a partial one resumes.") from error


def _license_message(repo: str, status: int | None) -> str:
    why = {401: "no token was sent", 403: "the token has no access to it yet"}.get(status or 0, "access denied")
    return (f"{repo} is gated (the hub answered {status}: {why}). To download it:\n"
            f"1. open https://huggingface.co/{repo}, log in and accept the license conditions;\n"
            "2. create a read token at https://huggingface.co/settings/tokens and give it to the app: set the "
            "HF_TOKEN environment variable (HF_TOKEN=hf_...) or run `hf auth login` once "
            "(`huggingface-cli login` with older huggingface_hub);\n"
            "3. start the app again.")


def _offline_message(gone: Sequence[Missing], reason: str | None, preset: str | None) -> str:
    lines = "\n".join(f"  - {m.describe()}" for m in gone)
    return (f"Model files are missing and {reason}:\n{lines}\n"
            f"Download them once with a network connection: {COMMAND.format(preset=preset or '<preset>')}")


def _connection_errors() -> tuple[type[BaseException], ...]:
    import httpx2  # huggingface_hub 2.x's HTTP client
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    # TransportError: refused, timed out, or cut more often than http_get's five retries allow
    return (httpx2.TransportError, OfflineModeIsEnabled, LocalEntryNotFoundError)


def _free_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds ``folder`` (its nearest existing parent when not made yet)."""
    path = folder.expanduser().resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _fmt(n: int) -> str:
    """Human and exact, so a message can be compared with ``df`` output: ``6.21 GB (6,210,000,000 bytes)``."""
    if n < 1e6:
        return f"{n:,} bytes"
    return f"{n / 1e9:.2f} GB ({n:,} bytes)" if n >= 1e9 else f"{n / 1e6:.1f} MB ({n:,} bytes)"
