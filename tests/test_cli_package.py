"""The command line as a package: its entry points, the one size and duration formatters, and the
worker command lines that `run --gpus/--workers` hands its supervisor."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest
import typer.main

from spoolbatch.cli import app
from spoolbatch.cli.units import duration, size
from spoolbatch.worker.supervisor import worker_args

from .conftest import REPO


def test_the_console_script_names_a_function_that_exists() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["spoolbatch"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_help_lists_the_commands_in_their_order() -> None:
    group = typer.main.get_command(app)
    assert list(getattr(group, "commands", {})) == [
        "init", "submit", "run", "status", "list", "results", "deadletter", "logs", "cancel", "retry", "usage",
        "models", "serve", "gc"]


@pytest.mark.parametrize(("n", "text"), [(0, "0 bytes"), (1, "1 byte"), (999, "999 bytes"), (1000, "1.0 kB"),
                                         (1_234_567, "1.2 MB"), (5 * 10**12, "5.0 TB")])
def test_sizes_are_decimal(n: int, text: str) -> None:
    assert size(n) == text


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (0, "0s"), (59.9, "59s"), (60, "1m00s"),
                                               (187, "3m07s"), (3599, "59m59s"), (18120, "5h02m"),
                                               (-3, "0s")])
def test_durations(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_a_worker_gets_the_supervisors_settings_and_plain_lines() -> None:
    flags: dict[str, object | None] = {"engine": "fake", "chunk_size": 30, "poll_interval": None,
                                       "fake_latency": 0.004}
    assert worker_args(Path("/s"), flags, once=True, quiet=True, verbose=2) == [
        "--spool", "/s", "--plain", "--once", "-q", "--verbose", "--verbose",
        "--engine", "fake", "--chunk-size", "30", "--fake-latency", "0.004"]
    assert worker_args(Path("/s"), {}) == ["--spool", "/s", "--plain"]
