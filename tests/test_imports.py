"""The package's import graph has no circles (lazy imports inside functions count too)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "finemix_core"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("finemix_core"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("finemix_core")]
            edges[name] |= {t for t in targets if t in modules and t != name and t != "finemix_core"}
    return edges


def test_no_import_cycles():
    edges = graph()
    assert len(edges) > 20 and "finemix_core.lab" in edges["finemix_core.bench"]  # the graph was read
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    # defenses/__init__ ↔ its submodules is a package's own structure, not a circle between ideas
    cycles = [c for c in cycles if not all(m.startswith("finemix_core.defenses") for m in c)]
    assert not cycles, cycles
