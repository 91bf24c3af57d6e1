"""The import graphs of ``bench`` and ``methods`` have no cycle, lazy imports included.

Every ``import`` statement counts, at module level or inside a function (a
lazy import still ties the two modules together); only ``if TYPE_CHECKING:``
blocks are left out.

Two graphs are checked. The module graph: no module imports one that imports
it back. The package graph: no package imports a sibling that imports it back.
An import from module ``a`` to module ``b`` counts, at package level, as an edge
between the two children of the deepest package that holds both, the ones
that contain ``a`` and ``b`` (a child is a subpackage or a plain module), so:

- ``bench.run.driver -> bench.executors.base`` is ``bench.run -> bench.executors``
  (siblings in ``bench``), and ``bench.executors.local -> bench.run.worker`` is
  ``bench.executors -> bench.run``: together a cycle, even though no module
  imports one that imports it back;
- ``bench.run.executors.local -> bench.run.tasks`` is
  ``bench.run.executors -> bench.run.tasks`` (siblings in ``bench.run``): a
  subpackage may use its parent's modules, as long as none of them imports the
  subpackage back;
- an import between a package and something inside it (``bench.run.executors``
  -> ``bench.run.executors.base``, or a module -> its own package's
  ``__init__``) stays inside one node and is left to the module graph.

Also checks the direction rules: methods never import the runner or the reports.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in out if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def package_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph lifted to packages; see the module docstring for the rule."""
    out: dict[str, set[str]] = {}
    for a, deps in modules.items():
        pa = a.split(".")
        for b in deps:
            pb = b.split(".")
            common = 0
            while common < min(len(pa), len(pb)) and pa[common] == pb[common]:
                common += 1
            if common in (len(pa), len(pb)):  # one holds the other: same node
                continue
            out.setdefault(".".join(pa[: common + 1]), set()).add(".".join(pb[: common + 1]))
    return out


def _witnesses(modules: dict[str, set[str]], cycle: list[str]) -> list[str]:
    """For each step of a package cycle, one module import that makes it."""
    out = []
    for src, dst in zip(cycle, cycle[1:]):
        out.append(next(f"{a} -> {b}" for a, deps in sorted(modules.items())
                        for b in sorted(deps) if package_graph({a: {b}}).get(src) == {dst}))
    return out


def test_no_import_cycle_in_bench_or_methods():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_between_packages():
    modules = import_graph()
    cycle = find_cycle(package_graph(modules))
    assert cycle is None, ("package import cycle: " + " -> ".join(cycle or []) + "\n  "
                           + "\n  ".join(_witnesses(modules, cycle or [])))


def test_package_cycle_found_where_modules_have_none():
    # the old layout: executors beside the run package, each importing the other
    old = {
        "bench.run.driver": {"bench.executors", "bench.run.worker"},
        "bench.executors": {"bench.executors.base", "bench.executors.local"},
        "bench.executors.base": {"bench.run.tasks"},
        "bench.executors.local": {"bench.executors.base", "bench.run.worker"},
        "bench.run.worker": {"bench.run.tasks", "bench.store"},
        "bench.run.tasks": set(),
        "bench.store": set(),
    }
    assert find_cycle(old) is None
    assert package_graph(old)["bench.run"] == {"bench.executors", "bench.store"}
    assert package_graph(old)["bench.executors"] == {"bench.run"}
    assert find_cycle(package_graph(old)) == ["bench.executors", "bench.run", "bench.executors"]
    assert _witnesses(old, ["bench.executors", "bench.run", "bench.executors"]) == [
        "bench.executors.base -> bench.run.tasks", "bench.run.driver -> bench.executors"]

    # the executors inside the run package: a subpackage using its parent's modules
    new = {
        "bench.run": set(),
        "bench.run.driver": {"bench.run.executors", "bench.run.worker"},
        "bench.run.executors": {"bench.run.executors.base", "bench.run.executors.local"},
        "bench.run.executors.base": {"bench.run.tasks"},
        "bench.run.executors.local": {"bench.run.executors.base", "bench.run.worker",
                                      "bench.run"},
        "bench.run.worker": {"bench.run.tasks", "bench.store"},
        "bench.run.tasks": set(),
        "bench.store": set(),
    }
    assert find_cycle(new) is None
    assert package_graph(new) == {
        "bench.run.driver": {"bench.run.executors", "bench.run.worker"},
        "bench.run.executors": {"bench.run.tasks", "bench.run.worker"},
        "bench.run.executors.local": {"bench.run.executors.base"},  # siblings in executors
        "bench.run.worker": {"bench.run.tasks"},
        "bench.run": {"bench.store"},
    }
    assert find_cycle(package_graph(new)) is None

    # ... unless one of the parent's modules imports the subpackage back
    new["bench.run.tasks"] = {"bench.run.executors.base"}
    assert find_cycle(package_graph(new)) == [
        "bench.run.executors", "bench.run.tasks", "bench.run.executors"]


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_directions():
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith("methods"):
            bad = {d for d in deps if d.startswith(("bench.run", "bench.report", "bench.cli"))}
            assert not bad, f"{mod} imports {sorted(bad)}"
