"""The one atomic writer: a reader sees the old file or the new one, never a part, never a temp file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from spoolbatch.commands import submit as submit_module
from spoolbatch.config import Config
from spoolbatch.errors import DiskFull
from spoolbatch.store.fsutil import AppendFile, atomic_write, atomic_writer
from spoolbatch.store.spool import Spool
from tests.conftest import chat_line, write_jsonl


def test_streams_into_a_hidden_temp_then_replaces(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(b"old")
    with atomic_writer(path) as out:
        out.write(b"new ")
        (tmp,) = [p for p in tmp_path.iterdir() if p.name != "f.json"]
        assert tmp.name.startswith(".f.json.") and tmp.name.endswith(".tmp")
        assert path.read_bytes() == b"old"
        out.write(b"content")
    assert path.read_bytes() == b"new content"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_block_that_raises_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(b"old")
    with pytest.raises(KeyError), atomic_writer(path) as out:
        out.write(b"half")
        raise KeyError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_full_disk_is_disk_full_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFull):
        atomic_write(tmp_path / "f.json", b"data")
    assert list(tmp_path.iterdir()) == []


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "f.prom", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.prom").stat().st_mode) == 0o644


def test_submit_that_fails_halfway_leaves_the_inbox_empty(spool: Spool, config: Config, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(i) for i in range(5)])

    def copy_then_fail(path: Path):  # type: ignore[no-untyped-def]
        yield path.read_bytes()[:10]
        raise OSError(errno.EIO, "read error")

    monkeypatch.setattr(submit_module, "_copy", copy_then_fail)
    with pytest.raises(OSError):
        submit_module.submit(src, config)
    assert list(spool.inbox.iterdir()) == []


@pytest.mark.parametrize("copy_range", ["kernel", "refused"])
def test_append_file_copies_a_whole_file_in_order_at_the_committed_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy_range: str) -> None:
    """A merge appends a part's results by copying the file (copy_file_range, or read and write
    where the filesystem refuses it); bytes past the committed offset are cut first."""
    if copy_range == "refused":
        def refuse(*args: object) -> int:
            raise OSError(errno.EXDEV, "cross-device")
        monkeypatch.setattr(os, "copy_file_range", refuse)
    part = tmp_path / "part"
    part.write_bytes(b"".join(b"line %d " % i + b"x" * 3000 + b"\n" for i in range(500)))
    target = tmp_path / "results"
    target.write_bytes(b"committed\ntorn tail")
    with AppendFile(target, len(b"committed\n")) as out:
        out.write(b"before\n")
        out.write_file(part)
        out.write(b"after\n")
        assert out.commit() == len(b"committed\nbefore\n") + part.stat().st_size + len(b"after\n")
    assert target.read_bytes() == b"committed\nbefore\n" + part.read_bytes() + b"after\n"
