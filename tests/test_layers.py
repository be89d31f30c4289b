"""Imports inside bertclf run one way: no module (a subpackage counts as one) imports, even lazily inside a
function, a module that imports it back. docs/architecture.md draws the layers."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bertclf"


def _unit(module: str) -> str:
    """bertclf.scoring.actor -> bertclf.scoring: a subpackage is one layer."""
    return ".".join(module.split(".")[:2])


def _module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bertclf") and not node.level:
        base = node.module
        named = [f"{base}.{a.name}" for a in node.names]
        return [n if (PACKAGE.parent / (n.replace(".", "/") + ".py")).exists()
                or (PACKAGE.parent / n.replace(".", "/")).is_dir() else base for n in named]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("bertclf")]
    return []


def import_graph() -> dict[str, set[str]]:
    """Each bertclf layer -> the layers it imports anywhere in its files (module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(_module_of(path))
        deps = graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            deps.update(_unit(m) for m in _imported(node))
        deps.discard(unit)
        deps.discard("bertclf")  # the package's __init__ holds only __version__
    return graph


def test_no_import_cycles_between_bertclf_modules():
    try:
        order = list(TopologicalSorter(import_graph()).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert "bertclf.checkpoint" in order and "bertclf.cli" in order


def test_the_model_stack_runs_checkpoint_then_modeling_then_adapters():
    graph = import_graph()
    assert not graph["bertclf.checkpoint"] & {"bertclf.modeling", "bertclf.adapters", "bertclf.inference"}
    assert "bertclf.adapters" not in graph["bertclf.modeling"]
    assert {"bertclf.modeling", "bertclf.checkpoint"} <= graph["bertclf.adapters"]
    assert "bertclf.evaluate" not in graph["bertclf.report"], "evaluate is a view of the report's engine"



def test_benchmarks_import_only_what_bertclf_names_public():
    """Benchmarks call the library's own planners so they report what bertclf really does; what they use is each
    module's declared interface (`__all__`), so renaming an internal can't break them unseen."""
    import importlib

    outside = []
    for path in sorted((PACKAGE.parent / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {}  # `from bertclf import checkpoint`: the name bound to a bertclf module, used as `checkpoint.x`
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bertclf."):
                public = getattr(importlib.import_module(node.module), "__all__", ())
                outside += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name not in public]
            elif isinstance(node, ast.ImportFrom) and node.module == "bertclf":
                modules.update({a.asname or a.name: importlib.import_module(f"bertclf.{a.name}") for a in node.names})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr not in getattr(modules[node.value.id], "__all__", ())):
                outside.append(f"{path.name}: {modules[node.value.id].__name__}.{node.attr}")
    assert not outside, f"not in the module's __all__: {outside}"
