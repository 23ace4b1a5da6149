"""The web page's files, all in the package: an HTML shell, a script, a stylesheet, uPlot (MIT, its licence beside it).

The files are read once from ``server/static/`` (package data) and served from memory by
``routes/page.py``: the shell at ``/`` and ``/jobs/ID`` (its ``<base>`` makes every link and call
relative, so the page also works under a proxy's path prefix), the rest at ``/static/NAME`` with
a version in the query that changes with their content, so a browser may keep them. Only the
names listed here are served: no path from a request reaches the file system.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """A file of the page: its bytes and content type."""

    body: bytes
    media_type: str


def _read(name: str) -> bytes:
    return resources.files("spoolbatch.server").joinpath("static", name).read_bytes()


@cache
def assets() -> dict[str, Asset]:
    """Every file ``/static/`` serves, by name."""
    return {name: Asset(_read(name), media) for name, media in TYPES.items()}


@cache
def version() -> str:
    """A short digest of the files: the query that makes a browser fetch them again after an upgrade."""
    digest = hashlib.sha256()
    for name, asset in sorted(assets().items()):
        digest.update(name.encode() + b"\0" + asset.body)
    return digest.hexdigest()[:12]


@cache
def shell(depth: int) -> str:
    """The HTML of a page ``depth`` folders below the root (``/`` is 0, ``/jobs/ID`` is 1)."""
    base = "./" if depth == 0 else "../" * depth
    return _read("index.html").decode().replace("{{BASE}}", base).replace("{{VERSION}}", version())
