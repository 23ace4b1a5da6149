"""The package's layers: no module imports one of a layer above it (README's code map), and no import circle.

store < format < engines < worker; commands and server sit beside the worker and never
import it; the CLI (the ``cli`` package: commands by theme, and all that renders for a
terminal) and the demo sit on top; only the CLI draws with rich. ``errors`` and ``config`` are the floor. Within a
layer, modules import each other one way only: every import counts, those inside a function
or under ``TYPE_CHECKING`` too (a circle hidden in a function is still a circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "spoolbatch"

LAYER = {"errors": 0, "config": 0, "backoff": 0, "store": 1, "logsetup": 1, "format": 2, "notify": 2, "engines": 3,
         "worker": 4, "commands": 4, "server": 5, "cli": 6, "demo": 6, "__main__": 6, "__init__": 0}
# Peers that must not lean on each other: the commands answer without any worker code.
APART = {("commands", "worker"), ("worker", "commands"), ("server", "worker")}
# What a terminal shows is the CLI's: commands/ says what a command does, never how it looks.
DRAWS = {"cli"}


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


def _modules(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name, not ``.__init__``)."""
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its text (``from pkg import mod`` names mod)."""
    modules = _modules(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package ``level - 1`` steps above this one
                    anchor = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return sorted(found)


def _describe(graph: dict[str, set[str]], group: list[str]) -> str:
    members = set(group)
    return "; ".join(f"{m} imports {', '.join(sorted(graph[m] & members))}" for m in group)


def test_no_import_circle() -> None:
    graph = _graph(PACKAGE)
    assert len(graph) > 50 and graph["spoolbatch.cli"], "the graph should hold the whole package"
    circles = _circles(graph)
    assert not circles, "import circles:\n" + "\n".join(_describe(graph, g) for g in circles)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_circle_check_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The two circles this package once had: one closed by a function-level import, one by TYPE_CHECKING."""
    package = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/format/__init__.py": "",
        "pkg/format/validation.py": "def parse(url):\n    from pkg.format.responses import chat_body\n",
        "pkg/format/responses.py": "from pkg.format.validation import RESPONSES\n",
        "pkg/store/__init__.py": "",
        "pkg/store/spool.py": "from pkg.store import formatversion\n",
        "pkg/store/formatversion.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from pkg.store.spool import Spool\n",
        "pkg/store/fine.py": "from . import spool\nfrom ..format import validation\n",
    })
    graph = _graph(package)
    assert graph["pkg.store.fine"] == {"pkg.store.spool", "pkg.format.validation"}
    assert _circles(graph) == [["pkg.format.responses", "pkg.format.validation"],
                               ["pkg.store.formatversion", "pkg.store.spool"]]


def test_a_long_circle_is_found(tmp_path: Path) -> None:
    package = _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "import pkg.b\n", "pkg/b.py": "from pkg import c\n",
                                "pkg/c.py": "from pkg.a import x\n", "pkg/d.py": "import pkg.a\n"})
    assert _circles(_graph(package)) == [["pkg.a", "pkg.b", "pkg.c"]]


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


def test_only_the_cli_draws() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _part("spoolbatch." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if here not in DRAWS and any(n == "rich" or n.startswith("rich.") for n in names):
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports rich")
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
