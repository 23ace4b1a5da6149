"""The GGUF conversion's once-only, all-or-nothing folder (``engines/gguf_convert``).

The conversion itself (transformers dequantizing the packaged SmolLM2, about 20 s and 1.5 GB)
runs in ``make demo``; here it is replaced by a writer that can fail halfway, to test the
lock, the temporary folder and the rename around it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spoolbatch.engines import gguf_convert


def test_a_conversion_that_fails_halfway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def half(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_convert, "convert_gguf", half)
    target = tmp_path / "cache" / "Demo"
    with pytest.raises(RuntimeError):
        gguf_convert.convert_once(tmp_path / "demo.gguf", target)
    assert not target.exists() and not calls[0].exists()
    assert [p.name for p in target.parent.iterdir()] == [".Demo.lock"]


def test_a_folder_is_converted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def whole(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_convert, "convert_gguf", whole)
    target = tmp_path / "Demo"
    assert gguf_convert.convert_once(tmp_path / "demo.gguf", target) == target
    assert gguf_convert.convert_once(tmp_path / "demo.gguf", target) == target
    assert calls == [tmp_path / "demo.gguf"] and (target / "config.json").read_text() == "{}"
