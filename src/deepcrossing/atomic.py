"""Write files and folders so that readers never see a half-written result.

Everything is written under a temporary name next to the target and renamed into place at the end
(``os.replace`` is atomic on one filesystem). If the block raises or the process is killed, the previous
output stays intact and only a ``.tmp-*`` sibling may be left behind (removed on the next run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``target`` as a whole.

    Example:
        >>> with atomic_dir("out/samples") as tmp:   # doctest: +SKIP
        ...     (tmp / "train.parquet").write_bytes(b"...")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_dir(tmp, target)


def swap_dir(tmp: Path, target: Path) -> None:
    """Put the folder ``tmp`` in place of ``target`` (which may not exist) by two renames; the old folder is
    removed after. A kill between the renames leaves it as ``.NAME.old-PID`` (see ``outputs``' cleanup)."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def current_umask() -> int:
    """The process's umask (read from ``/proc`` where it can be, so other threads never see a umask of 0)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_new_file(path: str | Path) -> None:
    """Give ``path`` the mode a plain ``open()`` would (0666 less the umask): writers that create files 0600
    (``tempfile.mkstemp``, safetensors' ``save_file``) would otherwise make a model or report readable by
    its owner only, and a service running as another user could not load it."""
    os.chmod(path, 0o666 & ~current_umask())


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``target``; on success it is fsynced and renamed onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would make the file private
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def write_text_atomic(target: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_file(target, "w") as handle:
        handle.write(text)
