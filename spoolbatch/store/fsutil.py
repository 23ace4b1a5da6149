"""Crash-safe file primitives: atomic replace (the one temp+fsync+rename writer), durable append,
directory fsync.

Every file the daemon writes is private to its user (mode 0600), and nothing here follows
a symlink that someone placed in the spool.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from spoolbatch.errors import DiskFull

FILE_MODE = 0o600
_counter = itertools.count()


def unique_suffix() -> str:
    """A collision-proof suffix for names two writers could pick at once."""
    return f"{socket.gethostname()}.{os.getpid()}.{next(_counter)}"


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_disk_full(exc: BaseException) -> bool:
    """True for a full disk or an exhausted quota, however it was raised."""
    return isinstance(exc, DiskFull) or isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _raise_disk_full(exc: OSError, path: Path) -> None:
    if is_disk_full(exc):
        raise DiskFull(f"no space left to write {path}", hint="free disk space; the daemon resumes by itself") from exc


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = FILE_MODE, durable: bool = True,
                  sync_dir: bool = True) -> Iterator[BinaryIO]:
    """Stream into a temp file beside ``path``; on success it replaces ``path``, never a torn file.

    The temp file is ``.NAME.<unique>.tmp`` in the same directory (the spool's scanners and
    node_exporter's textfile collector skip it). On leaving the block it is flushed,
    fsynced (``durable``) and renamed over ``path``; on any exception it is deleted and
    ``path`` is left as it was. ``mode`` is set exactly, whatever the umask. ``sync_dir=False``
    skips the directory fsync when a later durable write in the same directory (a commit
    marker) will make this rename durable with it. A full disk raises ``DiskFull``.
    """
    tmp = path.with_name(f".{path.name}.{unique_suffix()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as out:
            if mode != FILE_MODE:
                os.fchmod(fd, mode)
            yield out
            out.flush()
            if durable:
                os.fsync(fd)
        os.replace(tmp, path)
        if durable and sync_dir:
            fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _raise_disk_full(exc, path)
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: bytes, *, mode: int = FILE_MODE, durable: bool = True,
                 sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` (see ``atomic_writer``)."""
    with atomic_writer(path, mode=mode, durable=durable, sync_dir=sync_dir) as out:
        out.write(data)


# copy_file_range refused: another filesystem, an old kernel, a filesystem without it.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


class AppendFile:
    """An append-only file that a checkpoint refers to by byte offset.

    ``open`` cuts the file back to the committed offset (what a crash may have left past
    it is discarded), ``write`` buffers, ``commit`` writes and fsyncs and returns the new
    durable size, which the caller then records in its checkpoint.
    """

    def __init__(self, path: Path, committed: int) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        except OSError as exc:
            _raise_disk_full(exc, path)
            raise
        size = os.fstat(self._fd).st_size
        if size < committed:
            os.close(self._fd)
            raise OSError(errno.EIO, f"{path} is shorter ({size}) than its checkpoint says ({committed})")
        if size > committed:
            os.ftruncate(self._fd, committed)
            os.fsync(self._fd)
        self.size = committed
        self._pending: list[bytes | Path] = []

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the next commit (nothing to write is nothing to make durable: no fsync)."""
        if data:
            self._pending.append(data)

    def write_file(self, path: Path) -> None:
        """Queue the whole of file ``path`` for the next commit, copied by the kernel
        (``copy_file_range``) rather than read into memory and written back."""
        self._pending.append(path)

    def commit(self) -> int:
        """Write what is queued at the committed end, fsync, and return the durable size."""
        if self._pending:
            end = self.size
            try:
                for item in self._pending:
                    end = self._copy(item, end) if isinstance(item, Path) else self._pwrite(item, end)
                os.fsync(self._fd)
            except OSError as exc:
                # Leave nothing past the committed size: the next try starts clean.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self.size)
                self._pending.clear()
                _raise_disk_full(exc, self.path)
                raise
            self.size = end
            self._pending.clear()
        return self.size

    def _pwrite(self, data: bytes, at: int) -> int:
        written = 0
        view = memoryview(data)
        while written < len(data):
            written += os.pwrite(self._fd, view[written:], at + written)
        return at + written

    def _copy(self, path: Path, at: int) -> int:
        src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            size = os.fstat(src).st_size
            done = 0
            while done < size:
                try:
                    n = os.copy_file_range(src, self._fd, size - done, done, at + done)
                except OSError as exc:
                    if exc.errno not in _NO_COPY_RANGE:
                        raise
                    n = 0
                if n == 0:  # not supported here (or the file shrank): read and write the rest
                    rest = os.pread(src, size - done, done)
                    if len(rest) != size - done:
                        raise OSError(errno.EIO, f"{path} changed while it was being appended")
                    self._pwrite(rest, at + done)
                    n = len(rest)
                done += n
            return at + size
        finally:
            os.close(src)

    def close(self) -> None:
        """Close the file; uncommitted data is dropped."""
        self._pending.clear()
        os.close(self._fd)

    def __enter__(self) -> AppendFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LINE_BLOCK = 1 << 20


def count_lines(path: Path) -> tuple[int, int]:
    """(size, lines) counting a last line without a newline; a fast block scan, no parsing."""
    lines = 0
    last = b"\n"
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_LINE_BLOCK):
            lines += block.count(b"\n")
            size += len(block)
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return size, lines
