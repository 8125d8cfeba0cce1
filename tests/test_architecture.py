"""The shape of the code: no import cycles, no private names across modules, the server and
CLI above the store; the module map (docs/development.md) true to the tree, and every command
in the command reference (docs/commands.md).

The import graph is read with `ast`, so it covers imports inside functions too (the lazy
ones), which a runtime check would miss.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vecsearch"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(module: str, level: int, target: str | None) -> str:
    """The absolute name of `from <level dots><target> import ...` written in `module`."""
    if level == 0:
        return target or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(module: str, tree: ast.AST) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement, at any depth."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            out.append((_resolve(module, node.level, node.module), [a.name for a in node.names], node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    """Edges between vecsearch modules: `from x import y` counts as x, or x.y when y is a module."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, names, _ in _imports(module, ast.parse(path.read_text(), str(path))):
            if not target.startswith("vecsearch"):
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if subs:
                graph[module].update(subs)
                if len(subs) < len(names):  # some names are attributes of the package itself
                    graph[module].add(target)
            elif target in MODULES:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    assert sum(map(len, graph.values())) > 40, "the graph reader found too few imports to be trusted"
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    """The checker itself, on a graph with a known cycle (classify <-> finetune, as it once was)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["e"]]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_names(tree: ast.AST) -> set[str]:
    """Names a module defines itself: functions, classes, assignments, attributes set on any object."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _private_uses(module: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    own = _defined_names(tree)
    problems = []
    for target, names, line in _imports(module, tree):
        for n in names:
            if _private(n) and f"{target}.{n}" not in MODULES:  # a private module is fine; a private name is not
                problems.append(f"{path.name}:{line}: from {target} import {n}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            problems.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return problems


def test_no_module_uses_another_modules_private_names():
    problems = [p for module, path in MODULES.items() for p in _private_uses(module, path)]
    assert problems == []


def test_the_private_name_check_catches_both_forms(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from vecsearch.indexer import _hash_all\n\ndef f(index):\n    return index._require_info()\n")
    found = _private_uses("vecsearch.bad", bad)
    assert len(found) == 2 and "import _hash_all" in found[0] and "index._require_info" in found[1]


def test_server_and_cli_reach_the_database_only_through_the_index_and_store():
    for folder in ("server", "cli"):
        for path in (PACKAGE / folder).rglob("*.py"):
            assert "sqlalchemy" not in path.read_text().lower(), path


def _module_map() -> dict[str, str]:
    """The rows `| `vecsearch/x.py` | what it holds |` of the "Module map" section of docs/development.md."""
    text = (ROOT / "docs" / "development.md").read_text()
    section = re.split(r"^#+ Module map\n", text, maxsplit=1, flags=re.M)[1].split("\n#", 1)[0]
    return dict(re.findall(r"^\| `(vecsearch/[^`]+)` \| (.+?) \|$", section, re.M))


def test_module_map_matches_the_tree():
    documented = _module_map()
    actual = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert set(documented) == actual
    assert all(what.strip() for what in documented.values())


def test_every_command_is_in_the_command_reference():
    """Each command the Typer app registers has a row in docs/commands.md (`vecsearch NAME ...`)."""
    import typer

    from vecsearch.cli import app

    text = (ROOT / "docs" / "commands.md").read_text()
    commands = list(typer.main.get_command(app).commands)
    missing = [name for name in commands if not re.search(rf"`vecsearch {re.escape(name)}[ `]", text)]
    assert len(commands) >= 20 and missing == []


def test_building_a_random_init_backbone_leaves_global_rngs_alone():
    import random

    import numpy as np

    from vecsearch import load_backbone

    random.seed(11)
    np.random.seed(11)
    expected = (random.random(), np.random.random())
    random.seed(11)
    np.random.seed(11)
    a = load_backbone("tiny", None)
    got = (random.random(), np.random.random())
    assert got == expected
    assert load_backbone("tiny", None).fingerprint == a.fingerprint  # still seeded: the same weights


def test_the_server_restores_the_thread_limit_it_sets(tiny_index, photos):
    anyio = pytest.importorskip("anyio")
    pytest.importorskip("fastapi")
    from vecsearch.server import create_app

    tiny_index.add([photos])
    app = create_app(tiny_index, threads=3, warm=False, batch_size=0)  # a batcher adds threads for its waiters

    async def main():
        limiter = anyio.to_thread.current_default_thread_limiter()
        before = limiter.total_tokens
        async with app.router.lifespan_context(app):
            assert limiter.total_tokens == 3
        return before, limiter.total_tokens

    before, after = anyio.run(main)
    assert after == before != 3
