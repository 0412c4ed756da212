"""Output files that are complete or absent (``sla.atomic``): every file the package, its examples and its
benchmarks write goes through here.

A writer fills a temporary file (or folder) in the destination's own folder and renames it into place only when it
has finished: a failure half-way (a value json cannot encode, a full disk, an interrupt) leaves the previous file as
it was and no partial one. The temporary name is hidden (a leading dot) and removed on failure. Same folder, so that
the rename is one step of one file system (os.replace is atomic on POSIX and on Windows for files).

``check_output_path`` is the check to run before any expensive work: an output that names an existing folder, a
folder that does not exist or cannot be written, or one of the call's own input files, is refused there instead of
after the work.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

_UMASK: Optional[int] = None


def _umask() -> int:
    # mkstemp / mkdtemp create 0600 / 0700 entries; the renamed result gets the mode a plain open() would give.
    # os.umask can only be read by setting it, so read it once.
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def _fspath(name: str, path: object) -> str:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a file path (str or os.PathLike), got {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise ValueError(f"{name}: expected a non-empty file path, got {path!r}")
    return text


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _probe_writable(name: str, folder: str) -> None:
    """Creates and removes a temporary file in `folder`: the one test that also holds for root and for read-only
    mounts (os.access answers yes to root)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".sla-write-test.")
    except OSError as exc:
        raise PermissionError(f"{name}: cannot write in folder {folder!r} ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(probe)


def check_output_path(
    name: str, path: PathLike, *, inputs: Iterable[Optional[PathLike]] = (), folder: bool = False
) -> str:
    """Refuses, before any work, an output that cannot be written: `path` is an existing folder (or, with
    ``folder=True``, an existing file), its folder does not exist, is not a folder or cannot be written, or it is
    one of `inputs` (an output equal to an input would destroy the input). ``folder=True`` checks an output folder
    that will be created when missing (its nearest existing ancestor must be writable). Returns the path as a
    str; `name` is the argument named in the messages."""
    text = _fspath(name, path)
    for other in inputs:
        if other is not None and _same_file(text, os.fspath(other)):
            raise ValueError(f"{name}: {text!r} is also an input of this call; writing it would destroy the input")
    if folder:
        if os.path.exists(text) and not os.path.isdir(text):
            raise NotADirectoryError(f"{name}: expected a folder, but {text!r} is an existing file")
        parent = os.path.abspath(text)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise NotADirectoryError(f"{name}: cannot create folder {text!r}: {parent!r} is a file")
        _probe_writable(name, parent)
        return text
    if os.path.isdir(text):
        raise IsADirectoryError(f"{name}: expected a file path, but {text!r} is an existing folder")
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.exists(parent):
        raise FileNotFoundError(f"{name}: folder {parent!r} of {text!r} does not exist")
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"{name}: {parent!r} (the folder of {text!r}) is not a folder")
    _probe_writable(name, parent)
    return text


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yields a temporary path in the folder of `path` (same extension, for writers that choose the format by it:
    matplotlib, numpy); when the block ends without an exception the file written there replaces `path`, else it
    is removed and `path` is left as it was."""
    target = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(target)
    ext = os.path.splitext(base)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=f".tmp{ext}")
    os.close(fd)
    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise FileNotFoundError(f"{tmp!r}: the writer did not create the temporary file")
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs):
    """``open(path, mode)`` for writing, atomically (see atomic_path); text modes default to UTF-8."""
    if not any(c in mode for c in "wx") or "+" in mode:
        raise ValueError(f"mode: expected a write mode ('w', 'wb'), got {mode!r}")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("x", "w"), **kwargs) as f:
            yield f


def write_text(path: PathLike, text: str) -> None:
    """Writes `text` (already complete: serialise before calling, so that an encoding error writes nothing)."""
    with atomic_open(path, "w") as f:
        f.write(text)


@contextmanager
def atomic_folder(path: PathLike) -> Iterator[str]:
    """Yields a temporary folder beside `path`; when the block ends without an exception it becomes `path` (an
    existing `path` is replaced: moved aside under a hidden name, the new folder renamed in, the old one deleted, so
    that at every moment either the old or the new folder is complete). On an exception the temporary folder is
    deleted and `path` is left as it was."""
    target = os.path.abspath(os.fspath(path))
    parent, base = os.path.split(target)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.", suffix=".tmp")
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for f in files:
                _fsync_file(os.path.join(root, f))
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if os.path.lexists(target):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{base}.", suffix=".old")
            os.replace(target, os.path.join(old, base))
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["atomic_folder", "atomic_open", "atomic_path", "check_output_path", "write_text"]
