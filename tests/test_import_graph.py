"""The library's import graph, read from the source with ``ast``: acyclic, and the CLI never
imported by the library. Imports inside functions count too: a cycle hidden in a function body is
still a cycle (it only moves the failure from import time to call time)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def imported_names(path: Path, package: str) -> set[str]:
    """Every dotted name an import statement in ``path`` may refer to (absolute and relative)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def import_graph(top: str) -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / top).rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        graph[mod] = {n for n in imported_names(path, package) if n in files and n != mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (iterative DFS with colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    for root in graph:
        if colour[root]:
            continue
        stack, path = [(root, iter(sorted(graph[root])))], [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child) :] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_library_imports_are_acyclic():
    graph = import_graph("pipelines")
    assert len(graph) > 40  # the walk saw the library
    assert "pipelines.models.cache" in graph["pipelines.sampler"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_library_never_imports_the_cli():
    for path in (ROOT / "pipelines").rglob("*.py"):
        names = imported_names(path, module_name(path).rpartition(".")[0])
        assert not any(n.split(".")[0] == "v2w_cli" for n in names), f"{path} imports the CLI"


def test_library_modules_import_each_other_at_the_top():
    """Imports of library modules inside functions hide the graph; the only ones allowed load the
    optional families built on diffusers' UNet3D and Wan classes (importing Wan's costs ~4 s),
    which only those families should pay for."""
    lazy = []
    for path in (ROOT / "pipelines").rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipelines"):
                        lazy.append((str(path.relative_to(ROOT)), node.module))
    families = {"pipelines.models.unet3d", "pipelines.models.wan", "pipelines.models.wan_model"}
    assert lazy and all(mod in families for _, mod in lazy), lazy
