"""`make demo`: the same packaged models on every machine; a model the hub refuses is one clear line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from spoolbatch import demo
from spoolbatch.engines import models


def _fake_nvidia_smi(folder: Path) -> None:
    tool = folder / "nvidia-smi"
    tool.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-fake)'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


def test_the_demo_model_does_not_depend_on_the_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(models, "has_gpu", lambda: True)
    monkeypatch.delenv(demo.MODEL_ENV, raising=False)
    assert models.default_model() == models.DEFAULT_GPU_MODEL, "jobs on a GPU box still default to Gemma"
    assert demo.demo_model() == models.DEMO_MODEL
    assert demo.demo_model({demo.MODEL_ENV: "google/gemma-3-4b-it"}) == "google/gemma-3-4b-it"
    assert demo.demo_model({demo.MODEL_ENV: " "}) == models.DEMO_MODEL


def _refusal(kind: str) -> Exception:
    import httpx2
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    url = "https://huggingface.co/google/gemma-3-4b-it/resolve/main/config.json"
    if kind == "offline":
        return LocalEntryNotFoundError("cannot find the requested files in the disk cache")
    status = 403 if kind == "gated" else 404
    response = httpx2.Response(status, request=httpx2.Request("GET", url))
    cls = GatedRepoError if kind == "gated" else RepositoryNotFoundError
    return cls(f"{status} Client Error. Cannot access gated repo for url {url}.", response=response)


@pytest.mark.parametrize(("kind", "words"), [
    ("gated", ["gated model", "https://huggingface.co/google/gemma-3-4b-it", "huggingface-cli login"]),
    ("missing", ["no model google/gemma-3-4b-it", "huggingface-cli login"]),
    ("offline", ["cannot reach the Hugging Face hub for google/gemma-3-4b-it"]),
])
def test_a_model_the_hub_refuses_is_one_line_naming_it(kind: str, words: list[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub

    asked = []

    def loader(repo_id: str, filename: str, **_: object) -> str:
        asked.append((repo_id, filename))
        raise _refusal(kind)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", loader)
    monkeypatch.setenv(demo.MODEL_ENV, "google/gemma-3-4b-it")
    code = demo.main(["--spool", str(tmp_path / "demo-spool")])
    out, err = capsys.readouterr()
    assert asked == [("google/gemma-3-4b-it", "config.json")]
    assert code == 6 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err
    assert not (tmp_path / "demo-spool").exists(), "nothing starts for a model the hub refuses"
