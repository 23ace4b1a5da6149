"""Log files with a size cap: append a line; past the cap, rotate as logrotate does.

``NAME`` is the live file, ``NAME.1`` the newest rotated part ... ``NAME.KEEP`` the oldest;
older parts are dropped. Several processes append to one log (every worker writes the
daemon log and the logs of the jobs they share), so a rotation happens under an exclusive
``flock`` on the live file and only when the path still names the file that was found full:
two writers that both see it full rotate it once. A writer that opened the old file just
before a rotation lands its line at the end of ``NAME.1``; nothing is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 3


def rotated_parts(path: Path) -> list[Path]:
    """``path``'s rotated parts that exist (``NAME.1``, ``NAME.2``...), newest first."""
    prefix = path.name + "."
    found = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(path.parent):
            if name.startswith(prefix) and (n := name[len(prefix):]).isascii() and n.isdigit():
                found.append((int(n), path.parent / name))
    return [p for _, p in sorted(found)]


def append_line(path: Path, data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP) -> None:
    """Append ``data`` (one or more whole lines) to ``path``, rotating first when it would pass ``max_bytes``.

    ``max_bytes`` 0 means no cap. Raises OSError as ``os.write`` does (callers that must
    not fail on a log line suppress it).
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        if max_bytes and os.fstat(fd).st_size and os.fstat(fd).st_size + len(data) > max_bytes:
            fd = _rotate(path, fd, max_bytes, keep)
        os.write(fd, data)
    finally:
        os.close(fd)


def _rotate(path: Path, fd: int, max_bytes: int, keep: int) -> int:
    """Shift ``path`` to ``path.1`` (under a lock on it) and return an fd on a fresh ``path``."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        st = os.fstat(fd)
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        # Another writer may have rotated it between our open and our lock: then just reopen.
        if current is not None and current.st_ino == st.st_ino:
            for part in reversed(rotated_parts(path)):
                n = int(part.name.rsplit(".", 1)[1])
                if n >= keep:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(part)
                else:
                    os.replace(part, path.with_name(f"{path.name}.{n + 1}"))
            if keep:
                os.replace(path, path.with_name(f"{path.name}.1"))
            else:
                os.unlink(path)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
