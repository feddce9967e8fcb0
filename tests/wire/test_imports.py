"""The sans-I/O rule on import, and the lazy public names of the ``wire`` package.

A wire module that does not import Trio itself must not load it when imported, whatever it
imports in turn; each is imported in a fresh interpreter and ``sys.modules`` is checked. Which
modules import Trio is read from their source (a module-level ``import trio``), so a new module
is covered without touching this file.
"""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import wire

WIRE_DIR = Path(wire.__file__).parent
REPO = WIRE_DIR.parent

# The layer the README and wire/__init__ call sans-I/O: it must stay so even if someone adds a
# module-level ``import trio`` to one of them (which would move it out of SANS_IO silently).
CORE = {
    "wire.status",
    "wire.errors",
    "wire.framing",
    "wire.compression",
    "wire.timeout",
    "wire.metadata",
    "wire.events",
    "wire.handlers",
    "wire.connection",
    "wire.client_connection",
    "wire.reflection",
}

# The modules of the server side split by job: no import cycle may pass through them, not even
# one made of imports done for type checkers only.
SERVER_SIDE = {"wire.handlers", "wire.calls", "wire.driver", "wire.server", "wire.transport"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_trio_at_module_level(tree: ast.Module) -> bool:
    """A module-level import of trio, outside ``if TYPE_CHECKING:`` and outside functions."""
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            if any(a.name == "trio" or a.name.startswith("trio.") for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.split(".")[0] == "trio":
                return True
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                stack.extend(node.body)
            stack.extend(node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend([*node.body, *node.orelse, *node.finalbody])
            for handler in node.handlers:
                stack.extend(handler.body)
        elif isinstance(node, ast.With):
            stack.extend(node.body)
    return False


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text("utf-8"))
            for p in sorted(WIRE_DIR.rglob("*.py"))}


MODULES = _modules()
SANS_IO = sorted(name for name, tree in MODULES.items()
                 if name != "wire" and not _imports_trio_at_module_level(tree))


def _loaded_after_import(statement: str) -> list[str]:
    """The trio modules in ``sys.modules`` after ``statement`` in a fresh interpreter."""
    code = (f"import sys\n{statement}\nimport json\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'trio')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_the_core_is_sans_io() -> None:
    assert set(SANS_IO) >= CORE, sorted(CORE - set(SANS_IO))


def test_the_trio_layer_is_recognised() -> None:
    # The classification itself can fail: the modules known to use Trio must be found so.
    trio_modules = set(MODULES) - set(SANS_IO) - {"wire"}
    assert trio_modules >= {"wire.transport", "wire.calls", "wire.driver", "wire.server",
                            "wire.client", "wire.request_stream"}


def test_import_wire_alone_does_not_load_trio() -> None:
    assert _loaded_after_import("import wire") == []


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_module_does_not_load_trio(module: str) -> None:
    assert _loaded_after_import(f"import {module}") == []


def test_a_trio_name_loads_trio() -> None:
    # The check above can see trio being loaded (it is not vacuous).
    assert "trio" in _loaded_after_import("from wire import Server")


def test_every_public_name_resolves() -> None:
    code = ("import wire, sys\n"
            "names = {n: getattr(wire, n) for n in wire.__all__}\n"
            "from wire import *\n"
            "import json; print(json.dumps(sorted(names)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == sorted(wire.__all__)
    for name in wire.__all__:
        value = getattr(wire, name)
        if name == "__version__":
            assert isinstance(value, str)
            continue
        # The package hands out the defining module's object, not a copy.
        home = sys.modules[value.__module__]
        assert home.__name__.startswith("wire."), (name, home)
        assert getattr(home, name) is value


def test_dir_lists_exactly_the_public_names() -> None:
    names = dir(wire)
    assert set(wire.__all__) <= set(names)
    public = {n for n in names if not n.startswith("_")
              and not inspect.ismodule(getattr(wire, n))}
    assert public == set(wire.__all__) - {"__version__"}


def test_submodules_load_on_first_use() -> None:
    # Before the names became lazy, ``import wire`` made every submodule an attribute.
    code = ("import sys, wire\n"
            "assert 'wire.metadata' not in sys.modules\n"
            "assert wire.metadata.Metadata is wire.Metadata\n"
            "assert 'trio' not in sys.modules\n"
            "assert wire.server.Server is wire.Server\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok"]


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = wire.Nope  # type: ignore[attr-defined]


def test_server_names_keep_their_old_home() -> None:
    import wire.server

    for name in ("Server", "ServerOptions", "ConnectionInfo", "ServerCall", "PushCall"):
        assert getattr(wire.server, name) is getattr(wire, name)


def _imported(name: str, tree: ast.Module) -> set[str]:
    """The wire modules ``name`` imports, type-checking-only imports included."""
    package = name if (WIRE_DIR.parent / Path(*name.split(".")) / "__init__.py").exists() \
        else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
            # ``from . import x`` may name a submodule rather than an attribute.
            found.update(f"{target}.{a.name}" for a in node.names
                         if f"{target}.{a.name}" in MODULES)
            if target in MODULES:
                found.add(target)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""]
            found.update(n for n in names if n in MODULES)
    return found


def test_no_import_cycle_through_the_server_side() -> None:
    # The package itself re-exports everything; cycles through it are not cycles of jobs.
    graph = {name: _imported(name, tree) - {"wire"} for name, tree in MODULES.items()
             if name != "wire"}

    def reaches(start: str, goal: str) -> bool:
        seen: set[str] = set()
        todo = list(graph.get(start, ()))
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    assert "wire.calls" in graph["wire.handlers"]  # the graph sees type-only imports
    cycles = sorted(m for m in SERVER_SIDE if m in graph and reaches(m, m))
    assert cycles == []
