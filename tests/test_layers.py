"""The layers import one way: codec and dialects pure, the middleware blind to the proxy, and so on.

Each module's imports are read from its source (type-only imports under ``if TYPE_CHECKING:``
left out, imports inside functions kept) and followed through the package, so that a rule
broken two modules away still fails here.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "sse_bridge"
IO = {"asyncio", "anyio", "socket", "httpx", "httptools", "uvicorn", "starlette", "redis", "trio"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def _type_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, package: str) -> set[str]:
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_only(node):
            found |= {name for child in node.orelse for name in _imports(child, package)}
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join([*base, node.module] if node.module else base).strip(".")
                found.add("sse_bridge." + stem if stem else "sse_bridge")
                found |= {
                    f"sse_bridge.{stem}.{alias.name}".replace("..", ".") for alias in node.names
                }
            else:
                found.add(node.module or "")
        found |= _imports(node, package)
    return found


@cache
def direct(module: str) -> frozenset[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = _imports(ast.parse(path.read_text()), package)
    inside = {name.removeprefix("sse_bridge.") for name in names if name.startswith("sse_bridge.")}
    outside = {name.split(".")[0] for name in names if not name.startswith("sse_bridge")}
    return frozenset({name for name in inside if name in MODULES} | outside)


@cache
def reach(module: str) -> frozenset[str]:
    """Every module and library ``module`` imports at run time, directly or not."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in direct(todo.pop()):
            if name not in seen:
                seen.add(name)
                if name in MODULES:
                    todo.append(name)
    return frozenset(seen)


SSE = {
    "_core.codec",
    "_dialects.builtin",
    "_dialects.translator",
    "_dialects.openai",
    "_middleware.app",
    "_middleware.responder",
}
SIDECAR = {
    "_proxy.app",
    "_proxy.exchange",
    "_sidecar.app",
    "_sidecar.options",
    "_proxy.upstream.transport",
    "_proxy.upstream.connection",
}
COMMANDS = {"_cli.main", "_cli.server", "_cli.demo"}


@pytest.mark.parametrize(
    ("modules", "never"),
    [
        # The codec: bytes in, lines and events out; no I/O.
        ({"_core.codec"}, IO | SSE - {"_core.codec"} | SIDECAR | COMMANDS),
        # The dialects: one object to events; pure.
        (
            {"_dialects.builtin", "_dialects.translator", "_dialects.openai"},
            IO | SIDECAR | COMMANDS | {"_middleware.app"},
        ),
        # The header rules: pure.
        ({"_core.headers"}, IO | SSE | SIDECAR | COMMANDS),
        # The middleware knows nothing of the proxy, the sidecar or the commands.
        (
            {"_middleware.app", "_middleware.responder", "_middleware.receive", "_resume.http"},
            {"httpx", "click"} | SIDECAR,
        ),
        # The proxy knows no SSE.
        (
            {
                "_proxy.app",
                "_proxy.exchange",
                "_proxy.upstream.transport",
                "_proxy.upstream.connection",
            },
            SSE | COMMANDS | {"click"},
        ),
    ],
)
def test_layers_import_one_way(modules: set[str], never: set[str]) -> None:
    for module in modules:
        assert not reach(module) & never, f"{module} reaches {sorted(reach(module) & never)}"


def test_click_lives_only_in_the_command_line() -> None:
    assert sorted(name for name in MODULES if "click" in direct(name)) == ["_cli.main"]


def test_production_code_never_imports_the_fake() -> None:
    # The fake-ollama command, the demo (the fake is its upstream) and the public testing
    # module are the fake's users; nothing the bridge runs in production reaches it.
    users = {"_cli.main", "_cli.demo", "testing"}
    for name in MODULES:
        if name.startswith("_testing.fake") or name in users:
            continue
        assert "_testing.fake" not in reach(name), name


def test_the_rules_are_checked_against_real_imports() -> None:
    # A rule over modules that do not exist, or imports not found, would pass for nothing.
    assert {"_core.codec", "_middleware.app", "_proxy.app", "_cli.main", "_testing.fake"} <= set(
        MODULES
    )
    assert "_core.codec" in reach("_middleware.app")
    assert "httpx" in reach("_proxy.app")
    assert "_proxy.app" in reach("_sidecar.app")
    assert "_testing.fake" in reach("_cli.demo")
