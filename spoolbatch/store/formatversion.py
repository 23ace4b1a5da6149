"""The spool's format version: ``spool.json`` at the root says which layout the files follow.

``init`` writes the current version. Every command, the daemon and the server call
``Spool.require``, which reads it: a spool of a *newer* format is refused with one line (this
spoolbatch would misread it); an *older* one is upgraded in place, one step at a time, each
step idempotent and ``spool.json`` replaced atomically after it, so a crash mid-upgrade leaves
a spool that the next command upgrades again. A spool without ``spool.json`` is format 1
(every release before the file existed).

Adding a directory needs no new version (``require`` creates missing ones); changing what a
file means, or where it lives, does: add a step to ``UPGRADES``.

This module knows the spool only through ``Versioned`` (its root, its ``spool.json`` and
making its directories), so ``store/spool.py`` can call it without an import circle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import orjson

from spoolbatch.errors import SpoolError, SpoolFormatError
from spoolbatch.store.fsutil import atomic_write

FORMAT = 2
# The directories every spool has had since format 1: their presence says "this is a spool".
V1_DIRS = ("inbox", "active", "done", "deadletter", "rejected", "logs", "workers", "control", "groups")


class Versioned(Protocol):
    """What the version check needs of a spool (``Spool`` is one)."""

    @property
    def root(self) -> Path: ...

    @property
    def format_file(self) -> Path: ...

    def make_dirs(self) -> None:
        """Create any missing directory of the layout."""


def read_format(spool: Versioned) -> int:
    """The spool's format version (1 when it has no ``spool.json``)."""
    try:
        data = orjson.loads(spool.format_file.read_bytes())
        version = data["format"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(version)
        return version
    except FileNotFoundError:
        return 1
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SpoolFormatError(f"{spool.format_file} is unreadable ({exc.__class__.__name__}: {exc})",
                               hint="it should hold {\"format\": N}; restore it, or remove it if the spool is "
                                    "format 1") from None


def write_format(spool: Versioned, version: int, upgraded_from: int | None = None) -> None:
    """Record ``version`` atomically."""
    record: dict[str, object] = {"format": version, "at": time.time()}
    if upgraded_from is not None:
        record["upgraded_from"] = upgraded_from
    atomic_write(spool.format_file, orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n")


def _v1_to_v2(spool: Versioned) -> None:
    """Format 2 adds ``spool.json`` itself and the clean-up's tombstones; no file moves."""
    spool.make_dirs()


UPGRADES: dict[int, Callable[[Versioned], None]] = {1: _v1_to_v2}


def ensure_current(spool: Versioned) -> int:
    """Refuse a newer format, upgrade an older one in place; the version found."""
    found = read_format(spool)
    if found > FORMAT:
        raise SpoolFormatError(
            f"{spool.root} has spool format {found}, newer than this spoolbatch reads (format {FORMAT})",
            found=found, supported=FORMAT, hint="upgrade spoolbatch on this machine to the release that wrote it")
    version = found
    try:
        while version < FORMAT:
            UPGRADES[version](spool)
            version += 1
            write_format(spool, version, upgraded_from=found)
        spool.make_dirs()  # directories a newer release of the same format added
    except OSError as exc:
        raise SpoolError(f"cannot upgrade {spool.root} from format {found} to {FORMAT}: {exc}",
                         hint="run a spoolbatch command once as the spool's owner") from None
    return found
