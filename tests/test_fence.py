"""
Twisted's private names stay in one module.  aurora builds on Twisted's
public API; where it cannot (PB's wire internals, a transport's buffers, a
service's logger), the use is fenced in aurora/_pbcompat.py, so that a
Twisted release that moves them breaks one module, not the package.  These
scans look for any other use in aurora/, and check on the fence itself that
they find what they look for.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib

import twisted

import aurora

PACKAGE = pathlib.Path(aurora.__file__).parent
FENCE = "_pbcompat.py"
# Python's own, public despite the underscore.
_PYTHON = {"_exit", "_asdict", "_replace", "_fields", "_make"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _trees(*, fence: bool = False) -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text(encoding="utf-8"), str(p))
            for p in sorted(PACKAGE.glob("*.py")) if (p.name == FENCE) == fence}


def _definedByAurora() -> set[str]:
    """Every private name aurora defines outside the fence."""
    names: set[str] = set()
    for tree in _trees().values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[-1])
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id == "setattr" and len(node.args) >= 2 and \
                    isinstance(node.args[1], ast.Constant):
                names.add(str(node.args[1].value))
    return {n for n in names if _private(n)}


def _twistedImports(trees: dict[str, ast.Module]) -> list[str]:
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
                if any(_private(part) for part in (node.module or "").split(".")):
                    found.append(f"{name}:{node.lineno} from {node.module}")
                found += [f"{name}:{node.lineno} from {node.module} import {a.name}"
                          for a in node.names if _private(a.name)]
            elif isinstance(node, ast.Import):
                found += [f"{name}:{node.lineno} import {a.name}" for a in node.names
                          if a.name.startswith("twisted.")
                          and any(_private(p) for p in a.name.split("."))]
    return found


def _foreignAttributes(trees: dict[str, ast.Module], ours: set[str]) -> list[str]:
    """C{x._name} and C{getattr(x, "_name")} where C{_name} is not aurora's own."""
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and \
                    node.attr not in ours | _PYTHON:
                found.append(f"{name}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id in ("getattr", "hasattr", "setattr") and \
                    len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and \
                    isinstance(node.args[1].value, str) and \
                    _private(node.args[1].value) and node.args[1].value not in ours:
                found.append(f"{name}:{node.lineno} {node.func.id} {node.args[1].value}")
    return found


def _pbCallbacks(trees: dict[str, ast.Module]) -> list[str]:
    """Methods named as a private attribute that Twisted's PB reads on objects."""
    spread = pathlib.Path(twisted.__file__).parent / "spread"
    called = {node.attr for path in spread.glob("*.py")
              for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
              if isinstance(node, ast.Attribute) and _private(node.attr)}
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                found += [f"{name}:{item.lineno} {node.name}.{item.name}"
                          for item in node.body
                          if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                          and item.name in called]
    return found


def _overrides(modules: list[str]) -> list[str]:
    """Private methods of a Twisted base class, overridden."""
    found = []
    for moduleName in modules:
        module = importlib.import_module(moduleName)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            bases = [b for b in cls.__mro__[1:] if b.__module__.startswith("twisted.")]
            found += [f"{moduleName}.{cls.__name__}.{attr}" for attr in vars(cls)
                      if _private(attr) and any(attr in vars(b) for b in bases)]
    return found


def _modules() -> list[str]:
    return [f"aurora.{p.stem}" for p in sorted(PACKAGE.glob("*.py"))
            if p.name not in (FENCE, "__init__.py", "__main__.py")]


def test_noTwistedPrivateImports():
    assert _twistedImports(_trees()) == []


def test_noForeignPrivateAttributes():
    """Outside the fence, every C{x._name} aurora reads is a name it defines."""
    assert _foreignAttributes(_trees(), _definedByAurora()) == []


def test_noOverridesOfTwistedPrivates():
    assert _overrides(_modules()) == []


def test_noPBCallbacksByPrivateName():
    """PB would call into aurora through a name Twisted may change (C{_borgify})."""
    assert _pbCallbacks(_trees()) == []


def test_theScansFindWhatTheyLookFor():
    """Not vacuous: the fence itself trips each scan."""
    fence = _trees(fence=True)
    assert _foreignAttributes(fence, _definedByAurora())
    assert _pbCallbacks(fence)
    assert _overrides(["aurora._pbcompat"])
    assert _twistedImports({"x.py": ast.parse("from twisted.internet import _sslverify\n"
                                              "import twisted._version\n")})
