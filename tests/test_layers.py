"""The layers import one way, the folders are the layers, and nothing imports in a circle.

Each module's imports are read from its source: every import at any depth, those made only for
type hints (under ``if TYPE_CHECKING:``) and those inside functions included, since a type-only
import ties two modules together as much as any other. Imports are followed through the
package, so that a rule broken two modules away still fails here. The folder-level rules are
the ones docs/architecture.md states; tests/test_architecture.py holds the document to them.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "sse_bridge"
IO = {"asyncio", "anyio", "socket", "httpx", "httptools", "uvicorn", "starlette", "redis", "trio"}
# The largest a module may grow before it is split by concern.
MAX_LINES = 400
# The top of the package holds the public entry points and two small shared modules.
MAX_TOP_MODULES = 12


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(tree: ast.AST, package: str) -> set[str]:
    """Every name imported anywhere in ``tree``, as absolute dotted names."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = parts[: len(parts) - node.level + 1]
                stem = ".".join([*base, node.module] if node.module else base)
                module = f"sse_bridge.{stem}" if stem else "sse_bridge"
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


@cache
def direct(module: str) -> frozenset[str]:
    """The package modules and the libraries ``module`` imports itself."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = _imports(ast.parse(path.read_text()), package)
    inside = {name.removeprefix("sse_bridge.") for name in names if name.startswith("sse_bridge.")}
    outside = {name.split(".")[0] for name in names if not name.startswith("sse_bridge")}
    if "sse_bridge" in names:
        inside.add("")
    return frozenset({name for name in inside if name in MODULES and name != module} | outside)


@cache
def reach(module: str) -> frozenset[str]:
    """Every module and library ``module`` imports, directly or not."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in direct(todo.pop()):
            if name not in seen:
                seen.add(name)
                if name in MODULES:
                    todo.append(name)
    return frozenset(seen)


def inside(*folders: str) -> set[str]:
    """Every module of these folders (``_core``, ``_resume.redis``...), with their packages."""
    return {
        name
        for name in MODULES
        for folder in folders
        if name == folder or name.startswith(folder + ".")
    }


def find_cycle() -> list[str] | None:
    """One import cycle among the package's modules, as the path around it, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for name in sorted(direct(module) & MODULES.keys()):
            if state.get(name) == "open":
                return [*path[path.index(name) :], name]
            if name not in state and (cycle := visit(name)) is not None:
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(MODULES):
        if module not in state and (cycle := visit(module)) is not None:
            return cycle
    return None


def test_no_module_imports_in_a_circle() -> None:
    cycle = find_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(name or "sse_bridge" for name in cycle)


def test_a_cycle_would_be_found(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same search over a graph with one type-only back edge added finds it.
    real = direct.__wrapped__

    def with_back_edge(module: str) -> frozenset[str]:
        names = real(module)
        return names | {"_middleware.app"} if module == "_middleware.responder" else names

    monkeypatch.setattr(f"{__name__}.direct", with_back_edge)
    cycle = find_cycle()
    assert cycle is not None
    assert {"_middleware.app", "_middleware.responder"} <= set(cycle)
    assert cycle[0] == cycle[-1]


def test_type_only_imports_are_read() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import C\n"
    assert "sse_bridge._x.b" in _imports(ast.parse(source), "_x")


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert max(sizes.values()) > MAX_LINES // 2  # the sizes are real
    assert not {name: size for name, size in sizes.items() if size > MAX_LINES}


def test_the_top_of_the_package_holds_only_entry_points() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert "__init__.py" in top
    assert len(top) <= MAX_TOP_MODULES, top
    # No family of same-prefix modules left flat: a prefix is a folder waiting to be made.
    prefixes = [name.lstrip("_").split("_")[0] for name in top if name != "__init__.py"]
    assert len(prefixes) == len(set(prefixes)), top


SSE = inside("_dialects") | {"_core.codec", "_core.sse_parser"}
PROXY = inside("_proxy")
SIDECAR = inside("_sidecar")
COMMANDS = inside("_cli")
HIGHER_THAN_CORE = inside(
    "_dialects", "_resume", "_metrics", "_middleware", "_proxy", "_sidecar", "_probe", "_cli"
)


@pytest.mark.parametrize(
    ("modules", "never"),
    [
        # The core: pure rules and data; no I/O, and nothing of the layers above it.
        (inside("_core"), IO | HIGHER_THAN_CORE | inside("_testing")),
        # The dialects: one object to events; pure.
        (inside("_dialects"), IO | HIGHER_THAN_CORE - inside("_dialects")),
        # Resume knows nothing of the middleware that records, nor of the proxy.
        (inside("_resume"), inside("_middleware") | PROXY | SIDECAR | COMMANDS | {"httpx"}),
        # The middleware knows nothing of the proxy, the sidecar or the commands.
        (inside("_middleware"), PROXY | SIDECAR | COMMANDS | {"httpx", "click"}),
        # The proxy knows no SSE.
        (PROXY, SSE | inside("_middleware", "_resume") | SIDECAR | COMMANDS | {"click"}),
        # The probe reads streams with the core's parser and knows nothing of the bridge.
        (inside("_probe"), HIGHER_THAN_CORE - inside("_probe") | {"httpx", "uvicorn"}),
    ],
)
def test_layers_import_one_way(modules: set[str], never: set[str]) -> None:
    assert modules
    for module in modules:
        assert not reach(module) & never, f"{module} reaches {sorted(reach(module) & never)}"


def test_click_lives_only_in_the_command_line() -> None:
    assert sorted(name for name in MODULES if "click" in direct(name)) == ["_cli.main"]


def test_production_code_never_imports_the_fake() -> None:
    # The fake-ollama command, the demo (the fake is its upstream) and the public testing
    # module are the fake's users; nothing the bridge runs in production reaches it.
    users = {"_cli.main", "_cli.demo", "testing"}
    fake = inside("_testing.fake")
    for name in MODULES.keys() - fake - users:
        assert not reach(name) & fake, name


def test_the_rules_are_checked_against_real_imports() -> None:
    # A rule over modules that do not exist, or imports not found, would pass for nothing.
    assert {"_core.codec", "_middleware.app", "_proxy.app", "_cli.main", "_testing.fake"} <= set(
        MODULES
    )
    assert "_core.codec" in reach("_middleware.app")
    assert "httpx" in reach("_proxy.app")
    assert "_proxy.app" in reach("_sidecar.app")
    assert "_testing.fake" in reach("_cli.demo")
    # Type-only imports count: the responder names the resume endpoints' protocol.
    assert "_resume.http" in direct("_middleware.responder")
