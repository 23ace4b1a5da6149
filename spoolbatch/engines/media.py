"""Images in chat requests: where each may come from, how large it may be, and is it an image.

Every ``image_url`` part is read here before an engine sees it, under one policy:
``data:`` URLs always; ``file://`` paths only inside the configured ``media_dir``; remote
``http(s)`` URLs only when ``allow_remote_media`` is set (off by default: batch boxes often
have no network, and a batch line should not make the worker fetch arbitrary URLs); at most
``max_image_bytes`` each. The bytes must open as an image (Pillow). Each image is handed on
as a ``data:`` URL, so the engine's own renderer never touches the filesystem or network.
A failure is a ``RequestError`` with code ``invalid_image``: that line goes to deadletter,
the rest of its chunk is answered.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from spoolbatch.config import EngineSettings
from spoolbatch.errors import RequestError

INVALID = "invalid_image"


@dataclass(frozen=True, slots=True)
class MediaPolicy:
    """Where images may come from and how large they may be."""

    media_dir: str | None = None
    allow_remote_media: bool = False
    max_image_bytes: int = 20 * 1024 * 1024
    timeout: float = 10.0

    @classmethod
    def of(cls, settings: EngineSettings) -> MediaPolicy:
        """The policy the engine settings name."""
        return cls(media_dir=settings.media_dir, allow_remote_media=settings.allow_remote_media,
                   max_image_bytes=settings.max_image_bytes)


def has_images(messages: Any) -> bool:
    """True when any message has an ``image_url`` part."""
    return any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
               for m in messages)


def resolve_images(messages: Any, policy: MediaPolicy) -> list[dict[str, Any]]:
    """A copy of ``messages`` whose images are checked ``data:`` URLs; raise ``RequestError`` if one is not."""
    out = copy.deepcopy(list(messages))
    n = 0
    for message in out:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") != "image_url":
                continue
            url = part["image_url"]["url"]
            data, mime = load_image(url, policy, n)
            part["image_url"] = {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}
            n += 1
    return out


def load_image(url: str, policy: MediaPolicy, index: int = 0) -> tuple[bytes, str]:
    """The bytes and MIME type of one image URL, checked against ``policy``."""
    where = f"image {index}"
    scheme = urlparse(url).scheme.lower() if not url.startswith("data:") else "data"
    if scheme == "data":
        data = _data_url(url, where)
    elif scheme == "file":
        data = _local(url, policy, where)
    elif scheme in ("http", "https"):
        data = _remote(url, policy, where)
    else:
        raise RequestError(INVALID, f"{where}: URL scheme {scheme or '(none)'!r} is not supported "
                           "(data:, file:// under media_dir, http(s) when allow_remote_media is set)")
    if len(data) > policy.max_image_bytes:
        raise RequestError(INVALID, f"{where} is {len(data):,} bytes, over the {policy.max_image_bytes:,}-byte limit "
                           "(max_image_bytes)")
    return data, _check(data, where)


def _data_url(url: str, where: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise RequestError(INVALID, f"{where}: a data URL must be data:image/...;base64,...")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(INVALID, f"{where}: the data URL is not valid base64") from None


def _local(url: str, policy: MediaPolicy, where: str) -> bytes:
    if not policy.media_dir:
        raise RequestError(INVALID, f"{where}: local files are not allowed (set media_dir to a folder of images)")
    root = Path(policy.media_dir).resolve()
    parsed = urlparse(url)
    path = Path(unquote(parsed.path))
    if parsed.netloc not in ("", "localhost"):
        raise RequestError(INVALID, f"{where}: file URLs must be local (file:///path)")
    resolved = (root / path).resolve() if not path.is_absolute() else path.resolve()
    if resolved != root and root not in resolved.parents:
        raise RequestError(INVALID, f"{where}: {path} is outside media_dir")
    try:
        if os.path.getsize(resolved) > policy.max_image_bytes:
            raise RequestError(INVALID, f"{where} is over the {policy.max_image_bytes:,}-byte limit (max_image_bytes)")
        return resolved.read_bytes()
    except OSError as exc:
        raise RequestError(INVALID, f"{where}: cannot read {path}: {exc.strerror}") from None


def _remote(url: str, policy: MediaPolicy, where: str) -> bytes:
    if not policy.allow_remote_media:
        raise RequestError(INVALID, f"{where}: remote images are not fetched (set allow_remote_media to allow it)")
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=policy.timeout) as reply:  # noqa: S310 - scheme checked above
            data: bytes = reply.read(policy.max_image_bytes + 1)
    except (OSError, ValueError) as exc:
        raise RequestError(INVALID, f"{where}: cannot fetch {url}: {exc}") from None
    return data


def _check(data: bytes, where: str) -> str:
    """The MIME type of ``data``; raise when Pillow cannot read it as an image."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow comes with vLLM and transformers
        return "image/png"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            kind = (image.format or "png").lower()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RequestError(INVALID, f"{where} cannot be read as an image: {exc}") from None
    return f"image/{'jpeg' if kind == 'jpg' else kind}"
