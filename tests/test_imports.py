"""The import graph of kdrun/, read from the source (AST: every import, those inside functions included):
no cycle, no kdrun import hidden inside a function (but for the entry points' fast --help), and no import
that climbs the layers docs/design.md lists."""

from __future__ import annotations

import ast
import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdrun"
# Entry points import their work inside main(), so that `--help` answers before torch is imported.
FAST_HELP = {"kdrun.cli.export", "kdrun.cli.eval", "kdrun.cli.layers"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(kdrun module imported, whether inside a function) for every import statement of a file."""
    tree = ast.parse(path.read_text())
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: resolve against the package
            base = module_name(path).split(".")
            base = base[:len(base) - node.level + (path.name == "__init__.py")]
            prefix = ".".join(base + ([node.module] if node.module else []))
            names = [prefix, *(f"{prefix}.{a.name}" for a in node.names)]
        else:
            continue
        found += [(n, id(node) in inside) for n in names if n in MODULES]
    return found


GRAPH = {name: {target for target, _ in imports(path) if target != name} for name, path in MODULES.items()}


def layers() -> list[tuple[str, list[str]]]:
    """docs/design.md's ```layers block: `name: pattern ...` per line, from the top layer down."""
    text = (ROOT / "docs" / "design.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/design.md has no ```layers block"
    return [(name.strip(), patterns.split()) for name, patterns in
            (line.split(":", 1) for line in block.group(1).strip().splitlines())]


def layer_of(module: str, spec) -> int | None:
    for depth, (_, patterns) in enumerate(spec):
        if any(fnmatchcase(module, p) for p in patterns):
            return depth
    return None


def test_no_import_cycle():
    seen, on_path, cycles = set(), [], []

    def visit(node: str) -> None:
        if node in on_path:
            cycles.append(on_path[on_path.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for target in sorted(GRAPH[node]):
            visit(target)
        on_path.pop()

    for name in sorted(GRAPH):
        visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_kdrun_import_hides_inside_a_function():
    hidden = [f"{name} imports {target}" for name, path in MODULES.items() if name not in FAST_HELP
              for target, in_function in imports(path) if in_function]
    assert not hidden, hidden


def test_every_module_sits_in_a_layer_and_no_import_climbs():
    spec = layers()
    homeless = [m for m in MODULES if layer_of(m, spec) is None]
    assert not homeless, f"modules docs/design.md's layers do not place: {homeless}"
    climbing = [f"{a} ({spec[layer_of(a, spec)][0]}) imports {b} ({spec[layer_of(b, spec)][0]})"
                for a in GRAPH for b in GRAPH[a] if layer_of(b, spec) < layer_of(a, spec)]
    assert not climbing, "imports that climb:\n" + "\n".join(sorted(climbing))


@pytest.mark.parametrize("module", ["kdrun.sources.models.layers", "kdrun.run"])
def test_the_graph_is_read(module):
    assert GRAPH[module], module  # a parser that found nothing would pass every test above
