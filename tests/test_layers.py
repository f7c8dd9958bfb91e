"""The folder tree is the layering: the core never imports the ShapeWorld lab or the app, the lab never imports
the app, and module-level imports form no circle."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "motiontune"
LAB, APP = "motiontune.lab", "motiontune.app"


def _imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Relative imports of every module: (module level, inside functions), as absolute module names."""
    top, inner = defaultdict(set), defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        package = module.split(".") if is_package else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                (top if node.col_offset == 0 else inner)[module].add(target)
    return top, inner


def _layer(module: str) -> int:
    return 2 if module.startswith(APP) else 1 if module.startswith(LAB) else 0


def test_no_layer_imports_a_layer_above_it():
    top, inner = _imports()
    upward = sorted(
        (module, target)
        for imports in (top, inner)
        for module, targets in imports.items()
        for target in targets
        if module != "motiontune" and _layer(target) > _layer(module)
    )
    assert upward == []


def test_module_level_imports_form_no_circle():
    top, _ = _imports()
    modules = set(top) | {t for targets in top.values() for t in targets}

    def resolved(target: str) -> str:
        """`from .backbones import x` reads the package `__init__`: the package's own node."""
        return target if target in modules else target.rsplit(".", 1)[0]

    graph = {module: {resolved(t) for t in top.get(module, ())} - {module} for module in modules}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(module: str, path: list[str]) -> bool:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target.startswith(module + "."):  # a package importing its own submodules
                continue
            if state.get(target) == 1:
                cycle.extend([*path, module, target])
                return True
            if state.get(target) is None and visit(target, [*path, module]):
                return True
        state[module] = 2
        return False

    for module in sorted(graph):
        if state.get(module) is None and visit(module, []):
            break
    assert cycle == []
