"""The package's layers: no module imports one of a layer above it (README's code map).

store < format < engines < worker; commands and server sit beside the worker and never
import it; the CLI and the demo sit on top. ``errors`` and ``config`` are the floor.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "spoolbatch"

LAYER = {"errors": 0, "config": 0, "backoff": 0, "store": 1, "format": 2, "notify": 2, "engines": 3, "worker": 4,
         "commands": 4, "server": 5, "cli": 6, "demo": 6, "__main__": 6, "__init__": 0}
# Peers that must not lean on each other: the commands answer without any worker code.
APART = {("commands", "worker"), ("worker", "commands"), ("server", "worker")}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spoolbatch"):
            if node.module == "spoolbatch":
                found += [f"spoolbatch.{a.name}" for a in node.names]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("spoolbatch")]
    return found


def test_every_subpackage_has_a_layer() -> None:
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    parts |= {p.stem for p in PACKAGE.glob("*.py")}
    assert parts <= LAYER.keys(), f"give these a layer in LAYER and README's code map: {parts - LAYER.keys()}"


def test_no_module_imports_a_layer_above_it() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _part("spoolbatch." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for target in _imports(path):
            there = _part(target)
            if LAYER[there] > LAYER[here] or (here, there) in APART:
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in conftest, fakes in tests/fakes.py: a test module is never a library."""
    tests = Path(__file__).resolve().parent
    wrong = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                name = node.module.removeprefix("tests.").lstrip(".")
                if name.startswith("test_"):
                    wrong.append(f"{path.name} imports {node.module}")
    assert not wrong, "\n".join(wrong)
