"""The layer check (`make lint`): compliance/'s packages import only from packages listed
before them, no module imports another in a cycle, the pure packages and welkin-evaluate
import nothing beyond the standard library and the parsers `pip install .` brings (not
even through a leaf that imports Django), and a project import inside a function says why
on its line.

    python scripts/check_layers.py [ROOT]     # exit 1 and one line per violation

Reads the imports with `ast`: `import`, `from ... import` (relative ones too) and
`importlib.import_module("...")` / `__import__("...")` with a literal name. Runs nothing
it reads.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# Lowest first. The leaves import nothing of ours (but compliance/__init__, the version).
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
# What welkin-evaluate runs with after `pip install .` (pyproject.toml's dependencies):
# the standard library and these. The pure packages keep to them everywhere; ci/ at
# module level (its --resolve loads Django inside a function, saying why).
PARSERS = ("yaml", "orjson", "msgspec")
PURE = ("rules", "vocabulary", "bounded", "workers")
PIP_ONLY = ("ci",)
ALLOWED = set(sys.stdlib_module_names) | set(PARSERS) | {"compliance"}
# Modules of ci/ that only an extra loads (imported inside a function, saying so), and the
# packages that extra installs (pyproject.toml's optional-dependencies): never Django.
EXTRAS = {"compliance.ci.resolve": ("urllib3", "zstandard")}


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


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict) -> list[str]:
    """The modules an import loads: `from compliance.x import y` names the module
    compliance.x.y when there is one, else a name in compliance.x; relative imports are
    resolved against `module`; import_module("...") with a literal counts as an import."""
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        subs = [f"{base}.{a.name}" for a in node.names]
        named = [m for m in subs if m in modules]
        return named if len(named) == len(subs) else [*named, base]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
            return [node.args[0].value]
    return []


def _local_nodes(tree: ast.AST) -> set[int]:
    inside = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            inside.update(id(n) for n in ast.walk(fn))
    return inside


def violations(root: Path) -> list[str]:
    """Every broken rule under root (the folder that holds compliance/), one line each."""
    found: list[str] = []
    graph: dict[str, set[str]] = {}  # module-level imports between our modules
    external: dict[str, dict[str, str]] = {}  # module -> {outside top name: where}
    paths = {
        _name(p, root): p
        for p in sorted((root / "compliance").rglob("*.py"))
        if "migrations" not in p.parts
    }
    for module, path in paths.items():
        source = path.read_text()
        tree = ast.parse(source, str(path))
        lines = source.splitlines()
        local = _local_nodes(tree)
        here = layer(module)
        package = module.split(".")[1] if "." in module else ""
        graph[module], external[module] = set(), {}
        for node in ast.walk(tree):
            targets = _targets(node, module, path.name == "__init__.py", paths)
            for target in targets:
                where = f"{path.relative_to(root)}:{node.lineno}"
                inside = id(node) in local
                top = target.split(".")[0]
                there = layer(target)
                if there is None:
                    if top not in ALLOWED:
                        if package in PURE:
                            found.append(
                                f"{where}: {module} imports {target}: the pure packages "
                                f"keep to the standard library and {', '.join(PARSERS)}"
                            )
                        elif not inside:
                            external[module].setdefault(top, where)
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
                elif target != module:
                    graph[module].add(
                        target if target in paths else ".".join(target.split(".")[:2])
                    )
    found += _pulled_in(graph, external)
    found += [
        f"import cycle among: {', '.join(c)} (one of their imports points the wrong way)"
        for c in _cycles({m: {t for t in ts if t in graph} for m, ts in graph.items()})
    ]
    return found


def _pulled_in(graph: dict[str, set[str]], external: dict[str, dict[str, str]]) -> list[str]:
    """Pure and pip-only modules must not reach, through our own modules' top-level
    imports, a package outside the standard library and the parsers (Django above all)."""
    out = []
    for module in sorted(graph):
        package = module.split(".")[1] if "." in module else ""
        if package not in PURE + PIP_ONLY:
            continue
        seen, stack, parent = {module}, [module], {module: ""}
        extra = set(EXTRAS.get(module, ()))
        while stack:
            m = stack.pop()
            beyond = {t: w for t, w in (external.get(m) or {}).items() if t not in extra}
            if beyond:
                top, where = next(iter(sorted(beyond.items())))
                chain = [m]
                while parent[chain[-1]]:
                    chain.append(parent[chain[-1]])
                out.append(
                    f"{where}: {module} reaches {top} through top-level imports "
                    f"({' -> '.join(reversed(chain))}); welkin-evaluate installs no more "
                    f"than the standard library and {', '.join(PARSERS)}"
                )
                break
            for t in sorted(graph.get(m, ())):
                if t in graph and t not in seen:
                    seen.add(t)
                    parent[t] = m
                    stack.append(t)
    return out


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
