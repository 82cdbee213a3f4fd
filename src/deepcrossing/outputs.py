"""Owned outputs: a command writes only where it may, never deletes what it did not write, and one run at a time.

Every output folder has a *kind* (samples folder, model folder, synthetic data), recognised by its marker file
(a manifest naming its format). :func:`reserve` checks the target before anything is touched, then holds a
lock on it (``fcntl.flock`` on the sibling ``.NAME.lock``) for the whole run; :meth:`Reservation.write` yields
a temporary sibling ``.NAME.tmp-*`` to fill, swapped in only when the block succeeds.

The rules, checked by :func:`check_output_dir` (each a one-line :class:`InputError`, nothing touched):

* the target is not the current folder nor one holding it (``--out .``), not an existing file (a file is
  never replaced by a folder), not an input of the command nor a folder holding one;
* an existing non-empty folder must be a previous output of the same kind; with ``overwrite`` a foreign
  folder is accepted too, but its files are kept: the new output's files are added beside them, and a file
  of the same name as one of ours is refused (never replaced), so nothing we did not write is ever deleted;
* a previous output of the same kind is replaced as a whole: the files its marker lists (see
  :attr:`OutputKind.owned`) go, any other file in it stays.

Work folders of killed runs (``.NAME.tmp-*``) are removed by the next run that takes the lock (only the lock
holder creates them, so any found then are stale); a swap cut between its two renames is completed.

Example:
    >>> kind = OutputKind("notes folder", "notes.json", lambda m: m.get("kind") == "notes",
    ...                   lambda m: ("notes.json", "a.txt"))
    >>> import tempfile; root = Path(tempfile.mkdtemp())
    >>> with reserve(root / "out", kind) as r, r.write() as tmp:
    ...     _ = (tmp / "a.txt").write_text("hi"); _ = (tmp / "notes.json").write_text('{"kind": "notes"}')
    >>> sorted(p.name for p in root.iterdir())
    ['out']
    >>> try:
    ...     check_output_dir(root, kind, inputs=[root / "out" / "a.txt"])
    ... except InputError as exc:
    ...     print(exc.message.split(" (")[0])
    is an input of this command or a folder holding one
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepcrossing.atomic import swap_dir
from deepcrossing.errors import InputError


@dataclass(frozen=True)
class OutputKind:
    """What kind of folder a command writes, and how to recognise a previous one.

    Attributes:
        name: for messages, e.g. ``"samples folder"``.
        marker: the file that says what the folder is, e.g. ``"manifest.json"`` (a JSON object).
        recognise: marker dict -> True when it is a previous output of this kind.
        owned: marker dict -> names (``fnmatch`` patterns) of the files such an output wrote; those are the
            only files a new output of this kind may replace or delete.
        mine: entry -> True when an entry matched by ``owned`` was written by us (default: all are). For
            patterns a person's file can match too (``metrics-*.json``, ``checkpoints``): such a file, kept
            beside the output by ``--overwrite``, must stay when the output is written again.
    """

    name: str
    marker: str
    recognise: Callable[[dict[str, Any]], bool]
    owned: Callable[[dict[str, Any]], Iterable[str]]
    mine: Callable[[Path], bool] | None = None

    def read_marker(self, folder: Path) -> dict[str, Any] | None:
        """The parsed marker of ``folder`` if it is an output of this kind, else None."""
        try:
            marker = json.loads((folder / self.marker).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(marker, dict):
            return None
        try:
            return marker if self.recognise(marker) else None
        except (KeyError, TypeError, AttributeError):
            return None

    def owned_names(self, folder: Path) -> set[str] | None:
        """Entries of ``folder`` written by a previous output of this kind (None: not such an output)."""
        marker = self.read_marker(folder)
        if marker is None:
            return None
        patterns = [self.marker, *self.owned(marker)]
        return {p.name for p in folder.iterdir() if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)
                and (self.mine is None or p.name == self.marker or self.mine(p))}


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_place(target: Path, inputs: Iterable[str | Path], what: str) -> Path:
    """Common checks of a folder or file target; returns the resolved target."""
    resolved = target.resolve()
    if resolved.name == "" or _is_within(Path.cwd().resolve(), resolved):
        raise InputError(f"is the current folder or holds it; give a new {what} name, e.g. --out ./out",
                         path=target)
    existing = next(p for p in resolved.parents if p.exists())
    if not existing.is_dir():
        raise InputError(f"{existing} is a file, so it cannot hold this {what}", path=target)
    for item in inputs:
        source = Path(item).resolve()
        if _is_within(source, resolved):
            raise InputError(f"is an input of this command or a folder holding one ({item}); write the output "
                             "elsewhere", path=target)
    return resolved


def check_output_dir(target: str | Path, kind: OutputKind, *, inputs: Iterable[str | Path] = (),
                     overwrite: bool = False) -> Path:
    """Refuse (one-line :class:`InputError`) a folder target that this command must not write; touch nothing.

    Args:
        target: the output folder.
        kind: what the command writes there.
        inputs: files and folders the command reads (the target may be neither, nor hold one).
        overwrite: accept an existing folder of other files (they are kept, see the module docstring).

    Returns:
        ``target`` as a Path.
    """
    target = Path(target)
    _check_place(target, inputs, "folder")
    if target.is_symlink():
        raise InputError("is a symbolic link; give the folder it points to, or a new folder", path=target)
    if target.exists() and not target.is_dir():
        raise InputError(f"is a file; give a folder for the {kind.name} (a file is never replaced by a folder)",
                         path=target)
    if target.is_dir() and any(target.iterdir()) and kind.owned_names(target) is None:
        foreign = sorted(p.name for p in target.iterdir())
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        if (target / kind.marker).exists():
            raise InputError(f"holds a {kind.marker} that is not a {kind.name}'s ({shown}); it is never "
                             "replaced, even with --overwrite: give a new or empty folder", path=target)
        if not overwrite:
            raise InputError(f"holds files that are not a {kind.name} ({shown}); give a new or empty folder, "
                             f"or --overwrite to add the {kind.name} beside them (they are kept)", path=target)
    return target


def check_output_file(target: str | Path, *, is_ours: Callable[[Path], bool], what: str,
                      inputs: Iterable[str | Path] = (), overwrite: bool = False) -> Path:
    """Refuse a file target: a folder, a missing parent folder, an input, or a file we did not write.

    Args:
        target: the output file.
        is_ours: True for an existing file that a previous run of this command wrote (replaced freely).
        what: for messages, e.g. ``"ONNX export"``.
        inputs: files the command reads (never replaced, even with ``overwrite``).
        overwrite: replace an existing file that ``is_ours`` does not recognise.
    """
    target = Path(target)
    _check_place(target, inputs, "file")
    if target.is_dir():
        raise InputError(f"is a folder; give a file name for the {what}", path=target)
    if not target.parent.is_dir():
        raise InputError(f"the folder {target.parent} does not exist; create it first", path=target)
    if target.exists() and not overwrite and not is_ours(target):
        raise InputError(f"exists and is not a {what} written by deepcrossing; give another file, or "
                         "--overwrite to replace it", path=target)
    return target


class Reservation:
    """A locked output folder (from :func:`reserve`): scratch space, and the temporary folder to fill."""

    def __init__(self, target: Path, kind: OutputKind, overwrite: bool) -> None:
        self.target = target
        self.kind = kind
        self.overwrite = overwrite

    def sibling(self, suffix: str) -> Path:
        """``.NAME.<suffix>`` next to the target (e.g. a persistent work folder ``.NAME.work``)."""
        return self.target.parent / f".{self.target.name}.{suffix}"

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A temporary folder next to the target, removed at the end (or by the next run after a kill)."""
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def write(self) -> Iterator[Path]:
        """Yield an empty temporary folder; when the block succeeds it becomes the target.

        The block writes the whole output, marker included, and may verify it (it is still invisible to
        readers). On an exception the temporary folder is removed and the target is untouched.
        """
        with self.scratch() as tmp:
            mask = os.umask(0)
            os.umask(mask)
            tmp.chmod(0o777 & ~mask)  # mkdtemp's 0700 would make every output private
            yield tmp
            if self.kind.read_marker(tmp) is None:
                raise RuntimeError(f"the new {self.kind.name} has no valid {self.kind.marker}")  # a bug of ours
            self._commit(tmp)

    def _commit(self, tmp: Path) -> None:
        target = self.target
        check_output_dir(target, self.kind, overwrite=self.overwrite)  # nothing changed under the lock
        owned: set[str] = set()
        foreign: set[str] = set()
        if target.exists():
            owned = self.kind.owned_names(target) or set()
            foreign = {p.name for p in target.iterdir()} - owned
        if not foreign:
            swap_dir(tmp, target)
            return
        new = {p.name for p in tmp.iterdir()}
        clash = sorted(new & foreign)
        if clash:
            raise InputError(f"holds {', '.join(clash[:3])}, not written by deepcrossing; it is never replaced, "
                             "even with --overwrite: give a new or empty folder", path=target)
        # files of others stay: replace ours one by one, the marker last (a reader then sees the old output
        # or the new one, never a marker naming files that are not there yet)
        for name in sorted(new - {self.kind.marker}) + [self.kind.marker]:
            dest = target / name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(tmp / name, dest)
        for name in owned - new:
            stale = target / name
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()

    def _clean_stale(self) -> None:
        """Remove work folders of killed runs; finish a swap cut between its two renames."""
        siblings = sorted(self.target.parent.iterdir())
        for old in (p for p in siblings if p.name.startswith(f".{self.target.name}.old-")):
            if not self.target.exists():
                os.replace(old, self.target)
            else:
                shutil.rmtree(old, ignore_errors=True)
        for stale in (p for p in siblings if p.name.startswith(f".{self.target.name}.tmp-")):
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    """Hold ``.NAME.lock`` next to ``target`` (non-blocking: a second run is refused); removed on release."""
    path = target.parent / f".{target.name}.lock"
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot write next to it ({exc.strerror})", path=target) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = path.read_text().strip()
            raise InputError(f"another run (pid {holder or '?'}) is writing this output now (lock {path}); wait "
                             "for it to finish, or write elsewhere", path=target) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock: take the new one
    else:  # pragma: no cover - five lost races in a row
        raise InputError("cannot take the output lock; try again", path=path)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it, so a waiter never holds a removed file
        os.close(fd)


@contextlib.contextmanager
def reserve(target: str | Path, kind: OutputKind, *, inputs: Iterable[str | Path] = (),
            overwrite: bool = False) -> Iterator[Reservation]:
    """Check ``target`` (see :func:`check_output_dir`), create its parent, lock it, clean killed runs' leftovers.

    Args:
        target: the output folder.
        kind: what is written there.
        inputs: what the command reads.
        overwrite: accept a folder of other files (kept).

    Yields:
        A :class:`Reservation`; use its :meth:`~Reservation.write` to write the output.
    """
    target = check_output_dir(target, kind, inputs=inputs, overwrite=overwrite)
    target = target.resolve()
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create its folder ({exc.strerror})", path=target) from None
        with _lock(target):
            reservation = Reservation(target, kind, overwrite)
            reservation._clean_stale()
            yield reservation
    except BaseException:
        for folder in created:  # innermost first: a failed run leaves no empty parent behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def owned_dir(target: str | Path | Reservation, kind: OutputKind, *, inputs: Iterable[str | Path] = (),
              overwrite: bool = False) -> Iterator[Path]:
    """The temporary folder to fill for ``target`` (a path, or a :class:`Reservation` a caller already holds).

    With a path the target is reserved here (checked against ``inputs`` and locked) for the block.
    """
    if isinstance(target, Reservation):
        if target.kind != kind:
            raise ValueError(f"the reservation is for a {target.kind.name}, not a {kind.name}")
        with target.write() as tmp:
            yield tmp
        return
    with reserve(target, kind, inputs=inputs, overwrite=overwrite) as reservation, reservation.write() as tmp:
        yield tmp
