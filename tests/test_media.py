"""Images in chat lines: data URLs, local files only under media_dir, no network unless allowed,
a size cap, and an unreadable image as its own deadletter line (the rest of the chunk answered)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest

from spoolbatch.config import Config
from spoolbatch.engines.fake import FakeEngine
from spoolbatch.engines.media import MediaPolicy, load_image, resolve_images
from spoolbatch.errors import RequestError
from spoolbatch.format.endpoints import CHAT, RESPONSES
from spoolbatch.format.types import Request
from spoolbatch.format.validation import parse_spec
from spoolbatch.store.spool import Spool
from tests.conftest import assert_exactly_once, drop, read_jsonl


def png(size: int = 8) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def image_line(custom_id: str, url: str, **part: Any) -> dict[str, Any]:
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url, **part}}]
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 8}}


def request(line: dict[str, Any]) -> Request:
    return Request(line["custom_id"], 1, line["url"], line["body"], parse_spec(line["url"], line["body"]))


def test_image_parts_are_kept_and_shapes_checked() -> None:
    spec = request(image_line("a", data_url(png()))).spec
    assert spec.rich and spec.messages[0]["content"][1]["type"] == "image_url"
    with pytest.raises(RequestError) as info:
        request(image_line("a", data_url(png()), detail="high"))
    assert info.value.code == "unsupported_parameter"
    body = {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "this?"}, {"type": "input_image", "image_url": data_url(png())}]}]}
    spec = parse_spec(RESPONSES, body)
    assert spec.messages[0]["content"][1] == {"type": "image_url", "image_url": {"url": data_url(png())}}


def test_the_media_policy(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "cat.png").write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png())
    (media / "notes.txt").write_bytes(b"not an image")
    policy = MediaPolicy(media_dir=str(media), max_image_bytes=10_000)
    assert load_image(data_url(png()), policy) == (png(), "image/png")
    assert load_image(f"file://{media}/cat.png", policy)[1] == "image/png"
    assert load_image("file:///cat.png".replace("/cat", str(media) + "/cat"), policy)[0] == png()
    refused = [
        (data_url(b"\x89PNG not really"), policy),
        ("data:image/png;base64,@@@", policy),
        ("data:image/png,rawbytes", policy),
        (data_url(png(200)), MediaPolicy(max_image_bytes=100)),
        (f"file://{tmp_path}/secret.png", policy),
        (f"file://{media}/../secret.png", policy),
        (f"file://{media}/notes.txt", policy),
        (f"file://{media}/missing.png", policy),
        (f"file://{media}/cat.png", MediaPolicy()),  # no media_dir: no local files
        ("https://example.com/cat.png", policy),  # remote is off by default
        ("ftp://example.com/cat.png", policy),
    ]
    for url, pol in refused:
        with pytest.raises(RequestError) as info:
            load_image(url, pol)
        assert info.value.code == "invalid_image", url
    messages = request(image_line("a", f"file://{media}/cat.png")).spec.messages
    resolved = resolve_images(messages, policy)
    assert resolved[0]["content"][1]["image_url"]["url"] == data_url(png())
    assert messages[0]["content"][1]["image_url"]["url"].startswith("file://")  # not mutated


def test_fake_engine_fails_only_the_bad_image() -> None:
    from openai.types.chat import ChatCompletion

    good, bad = request(image_line("good", data_url(png()))), request(image_line("bad", data_url(b"nope")))
    first, second = FakeEngine(created=1).run([good, bad])
    assert first.body is not None and ChatCompletion.model_validate(first.body).choices[0].message.content
    assert second.failed and second.error_code == "invalid_image"


def test_a_job_with_an_unreadable_image_answers_the_rest(spool: Spool, config: Config) -> None:
    from spoolbatch.worker.daemon import Daemon

    lines = [image_line(f"req-{i}", data_url(png())) for i in range(5)]
    lines[2] = image_line("req-2", data_url(b"GIF89a broken"))
    drop(spool, "images.jsonl", lines)
    while Daemon(config, echo=False).loop_once().worked:
        pass
    done, failed = assert_exactly_once(spool, "images", {f"req-{i}" for i in range(5)})
    assert (done, failed) == (4, 1)
    (dead,) = read_jsonl(spool.deadletter_file("images"))
    assert dead["custom_id"] == "req-2" and dead["error"]["code"] == "invalid_image"
