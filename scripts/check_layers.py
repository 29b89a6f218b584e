"""The layer check (`make lint`): compliance/'s packages import only from packages listed
before them, no module imports another in a cycle, the pure ones import no Django, and a
project import inside a function says why on its line.

    python scripts/check_layers.py [ROOT]     # exit 1 and one line per violation

Reads the imports with `ast`; runs nothing it reads.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# Lowest first. A package may import from its own layer's earlier entries only where it is
# a leaf of the same layer (the leaves import nothing of ours).
LEAVES = ("vocabulary", "params", "crypto", "bounded", "workers")
LAYERS = (
    "rules",
    "models",
    "audit",
    "identity",
    "notify",
    "risk",
    "collect",
    "evidence",
    "ci",
    "web",
    "ops",
)
# The app's own wiring sits on top and may import anything: tasks, admin, demo, apps,
# management commands, template tags (and migrations, which Django writes).
TOP = len(LAYERS) + 1
# Standard library only (DESIGN.md): the evaluator and everything welkin-evaluate runs.
NO_DJANGO = ("rules", "ci", "vocabulary", "bounded", "workers")


def layer(module: str) -> int | None:
    """0 for the leaves (and the package itself, for __version__), 1.. for the layers, TOP
    for the rest of the app; None outside compliance."""
    parts = module.split(".")
    if parts[0] != "compliance":
        return None
    if len(parts) == 1 or parts[1] in LEAVES:
        return 0
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1]) + 1
    return TOP


def _name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _targets(node: ast.AST, modules: dict) -> list[str]:
    """The modules an import statement loads: `from compliance.x import y` names the module
    compliance.x.y when there is one, else a name in compliance.x."""
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        subs = [f"{node.module}.{a.name}" for a in node.names]
        named = [m for m in subs if m in modules]
        return named if len(named) == len(subs) else [*named, node.module]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return []


def _local_nodes(tree: ast.AST) -> set[int]:
    inside = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            inside.update(id(n) for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom))
    return inside


def violations(root: Path) -> list[str]:
    """Every broken rule under root (the folder that holds compliance/), one line each."""
    found: list[str] = []
    graph: dict[str, set[str]] = {}
    modules = {
        _name(p, root): p
        for p in sorted((root / "compliance").rglob("*.py"))
        if "migrations" not in p.parts
    }
    for module, path in modules.items():
        source = path.read_text()
        tree = ast.parse(source, str(path))
        lines = source.splitlines()
        local = _local_nodes(tree)
        here = layer(module)
        package = module.split(".")[1] if "." in module else ""
        graph[module] = set()
        for node in ast.walk(tree):
            for target in _targets(node, modules):
                where = f"{path.relative_to(root)}:{node.lineno}"
                inside = id(node) in local
                if target.split(".")[0] == "django" and package in NO_DJANGO and not inside:
                    found.append(f"{where}: {module} must not import Django ({target})")
                there = layer(target)
                if there is None:
                    continue
                other = target.split(".")[1] if "." in target else ""
                if there > here or (here == there == 0 and other not in ("", package)):
                    found.append(f"{where}: {module} imports {target}, a package listed after it")
                if inside:
                    if "#" not in lines[node.end_lineno - 1]:
                        found.append(
                            f"{where}: an import inside a function needs a comment on its "
                            "line saying why it is not at the top"
                        )
                elif target in modules and target != module:
                    graph[module].add(target)
    found += [f"import cycle among: {', '.join(c)}" for c in _cycles(graph)]
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): modules that
    import each other, directly or through others; each in name order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    found = violations(root)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} layer violation(s): see the README's layout section", file=sys.stderr)
        return 1
    print("layers: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
