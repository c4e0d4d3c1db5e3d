"""The package's imports point one way: a test walks every import (module level and inside functions)."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "datafree"

# Rooms from the bottom up; a module may import its own room or lower ones, never a higher one.
ROOMS = [
    ("core", ["_version", "core"]),
    ("models", ["models"]),
    ("data", ["data"]),
    ("synthesis", ["synth"]),
    ("the KD loop and its sources", ["kd"]),
    ("compressors", ["compressors"]),
    ("evaluation", ["evaluation"]),
    ("entry points", ["cli", "demo", "__init__", "__main__"]),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def walk_runtime(tree: ast.AST):
    """ast.walk, minus `if TYPE_CHECKING:` blocks (annotations only; never executed)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                todo.extend(child.orelse)
                continue
            todo.append(child)


def imports_of(path: Path) -> set[str]:
    """Package-internal modules imported by a file (relative and absolute `datafree.` imports), anywhere in it."""
    me = module_name(path)
    is_pkg = path.name == "__init__.py"
    base = me.split(".") if is_pkg and me != "__init__" else me.split(".")[:-1]
    if me == "__init__":
        base = []
    out: set[str] = set()
    for node in walk_runtime(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = anchor + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "datafree":
                target = node.module.split(".")[1:]
            else:
                continue
            cands = [".".join(target + [a.name]) for a in node.names] + [".".join(target)]
            for c in cands:
                if c in MODULES:
                    out.add(c)
            for i in range(1, len(target)):  # importing a.b runs a/__init__ first
                out.add(".".join(target[:i]))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("datafree."):
                    t = a.name.split(".")[1:]
                    out.update(".".join(t[:i]) for i in range(1, len(t) + 1))
    out.discard(me)
    out.discard("")
    return {m for m in out if m in MODULES}


FILES = {module_name(p): p for p in PKG.rglob("*.py")}
MODULES = set(FILES)
GRAPH = {m: imports_of(p) for m, p in FILES.items()}


def room_of(mod: str) -> int:
    top = mod.split(".")[0]
    for i, (_, tops) in enumerate(ROOMS):
        if top in tops:
            return i
    raise AssertionError(f"module {mod} belongs to no room; add it to ROOMS in tests/test_imports.py")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if color.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in color and (c := visit(m)):
                return c
        stack.pop()
        color[n] = 2
        return None

    for n in sorted(graph):
        if n not in color and (c := visit(n)):
            return c
    return None


def test_no_import_cycle():
    # a package's __init__ importing its own modules is how packages work; only edges between distinct modules count
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and FILES[t].name == "__init__.py")} for m, ts in GRAPH.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_room_and_imports_point_down():
    bad = [f"{m} ({ROOMS[room_of(m)][0]}) imports {t} ({ROOMS[room_of(t)][0]})"
           for m, ts in GRAPH.items() for t in sorted(ts) if room_of(t) > room_of(m)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_quantization_does_not_import_synthesis():
    bad = [f"{m} imports {t}" for m, ts in GRAPH.items() if m.startswith("compressors.quant")
           for t in ts if t.split(".")[0] in ("synth",) or t == "kd.sources"]
    assert not bad, bad


def test_the_walker_sees_cycles_and_upward_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "synth.base" in GRAPH["compressors.quant.ptq"] or room_of("synth.base") > room_of("core.utils")  # the rooms are ordered
    assert "core.utils" in GRAPH["compressors.quant.layers"]  # relative imports inside subpackages resolve


@pytest.mark.parametrize("mod", ["compressors.quant.ptq", "kd.loop", "models.loading"])
def test_known_modules_resolve(mod):
    assert mod in MODULES
