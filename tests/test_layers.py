"""
The layout the README promises: its architecture table names every module of
the package, and lists them lowest first, so that a module imports only
modules above it (lower layers never call up; they are handed an interface).
"""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "aurora"
# Not layers: the package's re-exports and `python -m aurora`.
ENTRY_POINTS = {"__init__", "__main__"}
# Known imports against the order, each with its reason.
EXCEPTIONS = {
    # `python -m aurora.relay`, a deprecated alias, runs `twistd registry`'s
    # options; it imports them when run, never when aurora.relay is imported.
    ("relay", "tap"),
}


def tableOrder() -> list[str]:
    """The modules of the README's architecture table, in its order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("| module | job |")
    table = text[start:text.index("\n\n", start)]
    return re.findall(r"^\| `aurora/(\w+)\.py` \|", table, re.M)


def importsOf(path: pathlib.Path) -> set[str]:
    """
    The aurora modules C{path} imports, at run time (an import only for the
    type checker, under C{if TYPE_CHECKING:}, is not a dependency).
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module == "aurora":
                    found.update(alias.name for alias in child.names)
                elif child.module.startswith("aurora."):
                    found.add(child.module.split(".")[1])
            elif isinstance(child, ast.Import):
                found.update(alias.name.split(".")[1] for alias in child.names
                             if alias.name.startswith("aurora."))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def test_theTableNamesEveryModuleOnce() -> None:
    order = tableOrder()
    modules = {p.stem for p in SOURCE.glob("*.py")} - ENTRY_POINTS
    assert len(order) == len(set(order)), "a module is listed twice"
    assert set(order) == modules, (
        f"in the package, not in the README's table: {sorted(modules - set(order))}; "
        f"in the table, not in the package: {sorted(set(order) - modules)}")


def test_eachModuleImportsOnlyModulesAboveIt() -> None:
    order = tableOrder()
    rank = {name: i for i, name in enumerate(order)}
    upward = [
        f"{name} imports {dep}, listed below it"
        for name in order
        for dep in sorted(importsOf(SOURCE / f"{name}.py"))
        if dep in rank and rank[dep] >= rank[name] and (name, dep) not in EXCEPTIONS
    ]
    assert upward == []


def test_theScanSeesImportsOfEveryForm(tmp_path: pathlib.Path) -> None:
    # The check above is only as good as this parser: each form of import
    # counts, at any depth, and only a TYPE_CHECKING import does not.
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from aurora import client, errors as e\n"
        "import aurora.server\n"
        "from aurora._broker import Broker\n"
        "def f():\n"
        "    from aurora.tap import Options\n"
        "if TYPE_CHECKING:\n"
        "    from aurora.relay import Relay\n"
        "from . import sibling\n")
    assert importsOf(source) == {"client", "errors", "server", "_broker", "tap"}


def test_theExceptionsAreStillNeeded() -> None:
    # An exception that no longer matches would hide the next real one.
    for name, dep in EXCEPTIONS:
        assert dep in importsOf(SOURCE / f"{name}.py")

