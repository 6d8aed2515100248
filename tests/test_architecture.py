"""docs/architecture.md is the tree: its files are the files on disk, its imports the real ones.

The tree is the code block under "## The tree": one entry a line, four columns of drawing per
level, a folder ending in ``/``. A folder's line may end in ``· imports: a, b``: the other parts
of the package (top-level folders and modules) its modules import, type-only imports included.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_layers import MODULES, PACKAGE, direct

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "architecture.md"
ENTRY = re.compile(r"^(?P<indent>[│├└─ ]*)(?P<name>[\w.]+/?)(?:\s+(?P<text>.*))?$")


def tree_block(text: str) -> list[str]:
    section = text.split("## The tree", 1)[1]
    return section.split("```\n", 2)[1].splitlines()


def parse_tree(lines: list[str]) -> tuple[set[str], dict[str, set[str]]]:
    """The paths the tree lists (folders end in /), and each folder's declared imports."""
    assert lines[0] == "src/sse_bridge/", lines[0]
    paths: set[str] = set()
    imports: dict[str, set[str]] = {}
    stack: list[str] = []
    for line in lines[1:]:
        match = ENTRY.match(line)
        assert match, f"not a tree entry: {line!r}"
        depth, rest = divmod(len(match["indent"]), 4)
        assert rest == 0, f"misaligned: {line!r}"
        assert 1 <= depth <= len(stack) + 1, f"misaligned: {line!r}"
        del stack[depth - 1 :]
        name = match["name"]
        path = "/".join([*stack, name])
        assert path not in paths, f"listed twice: {path}"
        paths.add(path)
        text = match["text"] or ""
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
            if "· imports:" in text:
                listed = text.rsplit("· imports:", 1)[1].strip()
                imports[path.rstrip("/")] = (
                    set() if listed == "nothing" else {item.strip() for item in listed.split(",")}
                )
        else:
            assert text or name == "py.typed", f"{path} says nothing of what it holds"
    return paths, imports


def disk_tree() -> set[str]:
    """Every file and folder of the package, but the folders' __init__.py and caches."""
    found = set()
    for path in PACKAGE.rglob("*"):
        relative = path.relative_to(PACKAGE)
        if "__pycache__" in relative.parts or path.suffix == ".pyc":
            continue
        if path.name == "__init__.py" and len(relative.parts) > 1:
            continue
        found.add(relative.as_posix() + ("/" if path.is_dir() else ""))
    return found


def folder_imports(folder: str) -> set[str]:
    """The other top-level parts of the package that a top-level folder's modules import."""
    found = set()
    for module in MODULES:
        if module.split(".")[0] != folder:
            continue
        for name in direct(module):
            if name in MODULES and name and name.split(".")[0] != folder:
                found.add(name.split(".")[0])
    return found


def test_the_tree_in_the_doc_is_the_tree_on_disk() -> None:
    listed, _ = parse_tree(tree_block(DOC.read_text()))
    on_disk = disk_tree()
    assert len(on_disk) > 60  # the walk found the package
    assert not on_disk - listed, f"on disk, not in docs/architecture.md: {sorted(on_disk - listed)}"
    assert not listed - on_disk, f"in docs/architecture.md, not on disk: {sorted(listed - on_disk)}"


def test_each_folder_imports_what_the_doc_says() -> None:
    _, declared = parse_tree(tree_block(DOC.read_text()))
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name.startswith("_")}
    folders.discard("__pycache__")
    assert set(declared) == folders, "each top-level folder says what it imports"
    for folder, names in declared.items():
        assert folder_imports(folder) == names, folder


def test_paths_named_in_the_docs_exist() -> None:
    # A module named in any doc as `_folder/module.py` is one that exists.
    named = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named |= set(re.findall(r"`(_[a-z]+/[\w/]+\.py)", doc.read_text()))
    assert len(named) > 10
    assert not {name for name in named if not (PACKAGE / name).is_file()}


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (["src/sse_bridge/", "├── a.py  x", "├── a.py  x"], "listed twice"),
        (["src/sse_bridge/", "├── _x/  · imports: _core", "│      ├── b.py  y"], "misaligned"),
        (["src/sse_bridge/", "├── a.py"], "says nothing"),
        (["src/", "├── a.py  x"], "src/"),
    ],
)
def test_a_malformed_tree_is_refused(lines: list[str], problem: str) -> None:
    with pytest.raises(AssertionError, match=problem):
        parse_tree(lines)


def test_the_tree_is_read_as_drawn() -> None:
    lines = [
        "src/sse_bridge/",
        "├── top.py            the top",
        "├── _x/               a folder · imports: _core, _types",
        "│   ├── one.py        one",
        "│   └── sub/          a sub-folder",
        "│       └── two.py    two",
        "└── _y/               another · imports: nothing",
        "    └── three.py      three",
    ]
    paths, imports = parse_tree(lines)
    assert paths == {"top.py", "_x/", "_x/one.py", "_x/sub/", "_x/sub/two.py", "_y/", "_y/three.py"}
    assert imports == {"_x": {"_core", "_types"}, "_y": set()}
