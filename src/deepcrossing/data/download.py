"""Download GroupLens MovieLens zips into a cache folder, checksum-verified, never leaving a half file.

The zip streams to ``<cache>/<name>.zip.part`` while its MD5 is computed, is checked, renamed to
``<name>.zip``, extracted into a temporary folder and renamed to ``<cache>/<name>`` as a whole; the zip is then
removed. A failed, interrupted or corrupted download raises :class:`~deepcrossing.errors.InputError` and leaves
neither the ``.part`` file nor a partial folder.

Checksums: GroupLens publishes ``<name>.zip.md5`` next to each zip. The digests of the frozen releases
(ml-100k, ml-1m, ml-10m, ml-20m, ml-25m) are pinned in :data:`DATASETS` (as published, and as used by other
loaders that pin them); for the others (ml-latest-small and ml-latest are re-generated over time, ml-32m we
could not confirm) the ``.md5`` file is fetched from the same base URL and the zip is verified against it.

Cache folder: ``$DEEPCROSSING_HOME/datasets`` or ``~/.cache/deepcrossing/datasets``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deepcrossing.errors import InputError

BASE_URL = "https://files.grouplens.org/datasets/movielens"


@dataclass(frozen=True)
class MovieLensRelease:
    """One GroupLens release: zip name, the folder inside the zip, pinned MD5 (``None``: fetch ``.md5``)."""

    name: str
    folder: str
    md5: str | None
    marker: str


DATASETS: dict[str, MovieLensRelease] = {r.name: r for r in (
    MovieLensRelease("ml-latest-small", "ml-latest-small", None, "ratings.csv"),
    MovieLensRelease("ml-latest", "ml-latest", None, "ratings.csv"),
    MovieLensRelease("ml-100k", "ml-100k", "0e33842e24a9c977be4e0107933c0723", "u.data"),
    MovieLensRelease("ml-1m", "ml-1m", "c4d9eecfca2ab87c1945afe126590906", "ratings.dat"),
    MovieLensRelease("ml-10m", "ml-10M100K", "ce571fd55effeba0271552578f2648bd", "ratings.dat"),
    MovieLensRelease("ml-20m", "ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", "ratings.csv"),
    MovieLensRelease("ml-25m", "ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", "ratings.csv"),
    MovieLensRelease("ml-32m", "ml-32m", None, "ratings.csv"),
)}

# quickstart prefers the small, fast release, then the next larger ones
_PREFERENCE = ("ml-latest-small", "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest")

Progress = Callable[[int, int | None], None]


def default_cache() -> Path:
    """``$DEEPCROSSING_HOME/datasets``, else ``~/.cache/deepcrossing/datasets``."""
    home = os.environ.get("DEEPCROSSING_HOME")
    return Path(home) / "datasets" if home else Path.home() / ".cache" / "deepcrossing" / "datasets"


def _release(name: str) -> MovieLensRelease:
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}", field="name")
    return DATASETS[name]


def _fetch_md5(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read(4096).decode("ascii", errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise InputError(f"cannot fetch the published checksum {url}: {exc}") from exc
    match = re.search(r"\b([0-9a-fA-F]{32})\b", text)
    if not match:
        raise InputError(f"the checksum file {url} holds no MD5 digest")
    return match.group(1).lower()


def download(name: str, *, cache: str | Path | None = None, base_url: str = BASE_URL,
             progress: Progress | None = None, timeout: float = 60.0, force: bool = False) -> Path:
    """Download and extract a MovieLens release; return its folder (already cached: no network).

    Args:
        name: one of :data:`DATASETS` (``ml-latest-small``, ``ml-100k``, ``ml-1m``, ``ml-25m``, ...).
        cache: cache folder (default :func:`default_cache`).
        base_url: where ``<name>.zip`` and ``<name>.zip.md5`` live.
        progress: called as ``progress(bytes_so_far, total_or_None)`` while streaming (the CLI draws a bar).
        timeout: socket timeout in seconds.
        force: download again even when cached.

    Returns:
        ``<cache>/<name>``, holding the release's files (e.g. ``ratings.csv``).

    Raises:
        InputError: unknown name, network error, truncated download, checksum mismatch, bad zip.

    Example:
        >>> folder = download("ml-latest-small")   # doctest: +SKIP
        >>> sorted(p.name for p in folder.iterdir())[:2]   # doctest: +SKIP
        ['README.txt', 'links.csv']
    """
    release = _release(name)
    cache = Path(cache) if cache is not None else default_cache()
    target = cache / name
    if (target / release.marker).exists() and not force:
        return target
    _refuse_foreign(target, None if (target / release.marker).exists() else set())
    cache.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/{name}.zip"
    expected = release.md5 or _fetch_md5(url + ".md5", timeout)
    part = cache / f"{name}.zip.part"
    zpath = cache / f"{name}.zip"
    try:
        _stream(url, part, expected, progress, timeout)
        os.replace(part, zpath)
        _extract(zpath, release, target)
    finally:
        part.unlink(missing_ok=True)
        zpath.unlink(missing_ok=True)
    return target


def _stream(url: str, part: Path, expected_md5: str, progress: Progress | None, timeout: float) -> None:
    digest = hashlib.md5()
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as handle:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while chunk := resp.read(1 << 20):
                handle.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        # a short body (server died mid-way) surfaces as http.client.IncompleteRead
        raise InputError(f"download of {url} failed after {done} bytes ({exc!r}); run the command again") from exc
    if total is not None and done != total:
        raise InputError(f"download of {url} was cut short: {done} of {total} bytes; run the command again")
    actual = digest.hexdigest()
    if actual != expected_md5:
        raise InputError(f"checksum mismatch for {url}: MD5 {actual}, expected {expected_md5}; the download is "
                         "corrupted (or the release changed): nothing was kept, run the command again")


def _refuse_foreign(target: Path, release_names: set[str] | None) -> None:
    """Refuse to replace ``target`` when it holds anything but the release's own files (``release_names``;
    ``None``: not known yet): a person's folder of that name, or notes added to a download, are never deleted."""
    if release_names is None or not (target.exists() or target.is_symlink()):
        return
    if not target.is_dir() or target.is_symlink():
        raise InputError("is not a folder this command wrote; move it or give another --cache", path=target)
    foreign = sorted({p.name for p in target.iterdir()} - release_names)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise InputError(f"holds {shown}, not part of the release: the folder is never replaced or deleted; move "
                         "them or give another --cache", path=target)


def _extract(zpath: Path, release: MovieLensRelease, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
    try:
        try:
            with zipfile.ZipFile(zpath) as archive:
                bad = archive.testzip()
                if bad is not None:
                    raise InputError(f"{bad} is corrupted inside the zip", path=zpath)
                root = tmp.resolve()
                for member in archive.namelist():
                    if not (tmp / member).resolve().is_relative_to(root):
                        raise InputError(f"unsafe path {member!r} in the zip", path=zpath)
                archive.extractall(tmp)
        except zipfile.BadZipFile as exc:
            raise InputError(f"not a valid zip file ({exc})", path=zpath) from exc
        inner = tmp / release.folder
        if not (inner / release.marker).exists():
            candidates = [p.parent for p in tmp.rglob(release.marker)]
            if len(candidates) != 1:
                raise InputError(f"the zip does not hold {release.folder}/{release.marker}", path=zpath)
            inner = candidates[0]
        _refuse_foreign(target, {p.name for p in inner.iterdir()})
        if target.exists():
            shutil.rmtree(target)
        os.replace(inner, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_cached_movielens(cache: str | Path | None = None) -> Path | None:
    """The best already-downloaded MovieLens folder for a quick run (ml-latest-small first), or ``None``.

    Example:
        >>> find_cached_movielens("/nonexistent") is None
        True
    """
    cache = Path(cache) if cache is not None else default_cache()
    for name in _PREFERENCE:
        release = DATASETS[name]
        if (cache / name / release.marker).exists():
            return cache / name
    return None
