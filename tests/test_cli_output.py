"""Tables people read: whole job ids, statuses and figures in a pipe, a file or an 80-column terminal."""

from __future__ import annotations

import io
import os
import pty
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from spoolbatch.cli import app
from spoolbatch.cli.tables import Col, FitTable, print_table
from spoolbatch.store.spool import Spool

from .conftest import REPO, chat_line, drop, write_jsonl

LONG = "nightly-embeddings-for-the-search-team-2024-06-01"  # 49 characters
OTHER = "scoring-run-of-the-reranker-candidates-week-23"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@pytest.fixture
def jobs(spool: Spool, tmp_path: Path) -> Spool:
    """Two finished jobs with long ids (one with batch metadata, one of project team-b), one queued, one refused
    whole."""
    runner = CliRunner()
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(i) for i in range(12)])
    for name, extra in ((LONG, ["--metadata", "team=search", "--metadata", "owner=ana"]),
                        (OTHER, ["--project", "team-b"])):
        result = runner.invoke(app, ["submit", str(src), "--name", name, "--spool", str(spool.root), *extra])
        assert result.exit_code == 0, result.output
    drop(spool, "garbage.jsonl", [b"this is not json at all", b"{nor this"])
    result = runner.invoke(app, ["run", "--once", "--engine", "fake", "--settle-seconds", "0", "-q",
                                 "--spool", str(spool.root)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["submit", str(src), "--name", "waiting-its-turn", "--spool", str(spool.root)])
    assert result.exit_code == 0, result.output
    return spool


def _piped(spool: Spool, *args: str) -> str:
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "spoolbatch", *args, "--spool", str(spool.root)], cwd=REPO,
                          env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def _in_terminal(spool: Spool, *args: str, columns: int = 80) -> str:
    """What the command shows in a real terminal (a pty) ``columns`` wide, colours and cursor moves removed."""
    import fcntl
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    env.pop("NO_COLOR", None)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "spoolbatch", *args, "--spool", str(spool.root)], cwd=REPO,
                                env=env, stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        screen = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the pty closes when the command exits
                break
            if not data:
                break
            screen += data
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    finally:
        os.close(master)
    return ANSI.sub("", screen.decode()).replace("\r", "")


def _row(text: str, job: str) -> str:
    (row,) = [line for line in text.splitlines() if re.search(rf"(^|\s){re.escape(job)}\s", line)]
    return row


@pytest.mark.parametrize("command", ["list", "status"])
def test_piped_tables_are_whole_whatever_the_width(jobs: Spool, command: str) -> None:
    text = _piped(jobs, command)
    assert "…" not in text
    header = _row(text, "job")
    for col in ("project", "status", "progress", "done", "deadletter", "retries", "tokens", "eta", "batch",
                "metadata"):
        assert f" {col} " in header, f"{col} is missing from a piped table"
    row = _row(text, LONG)
    assert "completed" in row and "100.0%" in row and f"batch_{LONG}" in row and "team=search owner=ana" in row
    assert re.search(r"\s(default)\s", row) and re.search(r"\steam-b\s.*\scompleted\s", _row(text, OTHER))
    assert re.search(rf"{LONG}\s+\S+\s+default\s", row), "project beside the job's id"
    assert "queued" in _row(text, "waiting-its-turn")
    assert "rejected (" in _row(text, "garbage")
    assert max(cell_len(line) for line in text.splitlines()) > 80, "wider than COLUMNS, as a pipe may be"
    assert not any(line != line.rstrip() for line in text.splitlines()), "no trailing blanks"


@pytest.mark.parametrize("command", ["list", "status"])
def test_an_80_column_terminal_keeps_ids_statuses_and_figures_whole(jobs: Spool, command: str) -> None:
    text = _in_terminal(jobs, command, columns=80)
    assert "…" not in text
    table = [line for line in text.splitlines() if line[:1] in "┃│┏┡└"]
    assert table and all(cell_len(line) <= 80 for line in table), "\n".join(table)
    for job in (LONG, OTHER):
        row = _row(text, job)
        assert "completed" in row and "100.0%" in row
    assert "queued" in _row(text, "waiting-its-turn")
    assert "rejected" in text.split("garbage", 1)[1], "a refused job's status, its reason folded under it"
    left_out = text.split("left out to fit 80 columns: ")[1].split(" (")[0].split(", ")
    assert "batch" in left_out
    assert "project" not in left_out or {"eta", "done", "tokens"} <= set(left_out), "project goes after those"


def test_a_wide_terminal_shows_every_column(jobs: Spool) -> None:
    text = _in_terminal(jobs, "list", columns=240)
    assert "left out" not in text and f"batch_{LONG}" in text and "team=search owner=ana" in text
    assert "team-b" in _row(text, OTHER) and "default" in _row(text, LONG)


def _render(table: FitTable, width: int, *, terminal: bool = True) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=terminal, color_system=None)
    print_table(console, table)
    return buffer.getvalue()


COLS = (Col("job"), Col("status", fold=True), Col("done", right=True), Col("tokens", right=True, drop=1),
        Col("note", drop=2, fold=True))
ROWS = [("a" * 30, "rejected (the file has no valid request, see its reason file)", "1,234", "56,789",
         "long words that fold")]


def test_a_narrow_table_folds_text_before_it_leaves_columns_out() -> None:
    text = _render(FitTable(COLS, ROWS), 100)
    assert "left out" not in text and "56,789" in text and "note" in text
    assert "rejected (the file" in text and "reason file)" in text, "the reason folded at word boundaries"
    assert all(cell_len(line) <= 100 for line in text.splitlines())


def test_columns_go_highest_drop_first_and_the_others_stay_whole() -> None:
    text = _render(FitTable(COLS, ROWS), 56)
    assert "left out to fit 56 columns: tokens, note" in text
    assert "a" * 30 in text and "1,234" in text and "rejected" in text and "…" not in text


def test_columns_that_always_stay_are_never_cut_even_past_the_width() -> None:
    text = _render(FitTable(COLS, [("x" * 120, "completed", "7", "8", "")]), 80)
    assert "x" * 120 in text and "completed" in text and "…" not in text
    assert "left out to fit 80 columns: tokens, note" in text


def test_markup_like_ids_are_shown_as_they_are() -> None:
    text = _render(FitTable(COLS, [("job[bold]x[/]", "queued", "0", "0", "")]), 120, terminal=False)
    assert "job[bold]x[/]" in text


def test_the_live_view_fits_80_columns_with_whole_ids_and_statuses() -> None:
    from spoolbatch.cli.live import Limits, live_view

    jobs = [{"job": LONG, "status": "running", "progress": 0.3, "total_lines": 200_000, "lines_consumed": 60_000,
             "requests_done": 59_987, "requests_failed": 13, "tokens": 9_100_000, "eta_seconds": 3310.0,
             "workers": 1, "started_at": 0.0, "busy_seconds": 1420.0},
            {"job": OTHER, "status": "interrupted", "progress": 0.5, "total_lines": 10, "lines_consumed": 5,
             "requests_done": 5, "requests_failed": 0, "tokens": 10, "eta_seconds": None}]
    data = {"spool": "/srv/spool", "workers": [], "queue": {"jobs": 0}, "jobs": jobs}
    console = Console(record=True, width=80, force_terminal=True, color_system=None)
    console.print(live_view(data, Limits(), now=100.0))
    text = console.export_text()
    assert "running" in _row(text, LONG) and "30.0%" in _row(text, LONG)
    assert "interrupted" in _row(text, OTHER) and "…" not in text
    assert all(cell_len(line) <= 80 for line in text.splitlines())


def test_the_project_column_appears_once_a_job_has_a_project_of_its_own() -> None:
    from spoolbatch.cli.views import jobs_table

    def job(name: str, project: str | None) -> dict[str, object]:
        return {"job": name, "status": "completed", "progress": 1.0, "requests_done": 1, "requests_failed": 0,
                "tokens": 3, "eta_seconds": None, "project": project}

    plain = _render(jobs_table({"spool": "s", "jobs": [job("a", "default"), job("refused", None)]}), 200)
    assert " project " not in plain and "default" not in plain  # a spool that never used projects
    mixed = _render(jobs_table({"spool": "s", "jobs": [job("a", "default"), job("b", "team-a"),
                                                       job("refused", None)]}), 200)
    header = _row(mixed, "job")
    assert header.index(" job ") < header.index(" project ") < header.index(" status ")
    projects = {name: _row(mixed, name).split("│")[2].strip() for name in ("a", "b", "refused")}
    assert projects == {"a": "default", "b": "team-a", "refused": "-"}
