"""Imports inside bertclf run one way. docs/architecture.md draws the floors, and every module (a subpackage counts
as one) is on one of them; a module imports, even lazily inside a function, only from its own floor or the more basic
floors drawn above it, never a module that imports it back, and never bertclf.dev (the tests' and benchmarks')."""

from __future__ import annotations

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bertclf"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def _unit(module: str, depth: int = 2) -> str:
    """bertclf.scoring.actor -> bertclf.scoring: a subpackage is one layer (at depth 3, its modules are)."""
    return ".".join(module.split(".")[:depth])


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


def import_graph(depth: int = 2) -> dict[str, set[str]]:
    """Each bertclf layer -> the layers it imports anywhere in its files (module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(_module_of(path), depth)
        deps = graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            deps.update(_unit(m, depth) for m in _imported(node))
        deps.discard(unit)
        deps.discard("bertclf")  # the package's __init__ holds only __version__
    return graph


def diagram_floors() -> dict[str, int]:
    """docs/architecture.md's diagram under "Imports run one way": each line one floor (two spaces of indent per
    floor up), its modules comma-separated (a subpackage with a trailing /), then an optional comment."""
    block = ARCHITECTURE.read_text().split("### Imports run one way", 1)[1].split("```", 2)[1]
    floors = {}
    for line in block.splitlines():
        if match := re.match(r"( *)([\w/]+(?:, [\w/]+)*)", line):
            floors.update({f"bertclf.{name.rstrip('/')}": len(match[1]) // 2 for name in match[2].split(", ")})
    return floors


def test_every_module_imports_only_from_its_own_floor_or_below():
    graph = {unit: deps for unit, deps in import_graph().items() if unit != "bertclf"}
    floors = diagram_floors()
    assert set(floors) == set(graph), (f"the diagram lacks {sorted(set(graph) - set(floors))}, "
                                       f"names what isn't a module: {sorted(set(floors) - set(graph))}")
    upward = [f"{unit} (floor {floors[unit]}) imports {dep} (floor {floors[dep]})"
              for unit, deps in sorted(graph.items()) for dep in sorted(deps) if floors[dep] > floors[unit]]
    assert not upward, f"imports against the diagram's direction: {upward}"


def test_no_bertclf_module_imports_the_dev_helpers():
    """bertclf.dev builds test data, tiny models and test servers for tests and benchmarks; the library never
    depends on it (nor on moto or an MLflow server through it)."""
    assert [unit for unit, deps in import_graph().items() if "bertclf.dev" in deps] == []


def test_no_import_cycles_between_bertclf_modules():
    try:
        order = list(TopologicalSorter(import_graph()).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert "bertclf.model" in order and "bertclf.cli" in order


def test_the_model_stack_runs_checkpoint_then_modeling_then_adapters():
    graph = import_graph(depth=3)
    model = {"bertclf.model.modeling", "bertclf.model.adapters", "bertclf.model.inference"}
    assert not graph["bertclf.model.checkpoint"] & model
    assert "bertclf.model.adapters" not in graph["bertclf.model.modeling"]
    assert {"bertclf.model.modeling", "bertclf.model.checkpoint"} <= graph["bertclf.model.adapters"]
    assert not [unit for unit, deps in graph.items() if unit.startswith("bertclf.report") and "bertclf.evaluate" in deps
                ], "evaluate is a view of the report's engine"



def test_benchmarks_import_only_what_bertclf_names_public():
    """Benchmarks call the library's own planners so they report what bertclf really does; what they use is each
    module's declared interface (`__all__`), so renaming an internal can't break them unseen."""
    import importlib
    import importlib.util

    outside = []
    for path in sorted((PACKAGE.parent / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {}  # `from bertclf import checkpoint`: the name bound to a bertclf module, used as `checkpoint.x`
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bertclf"):
                package = importlib.import_module(node.module)
                for a in node.names:
                    if importlib.util.find_spec(f"{node.module}.{a.name}") if hasattr(package, "__path__") else None:
                        modules[a.asname or a.name] = importlib.import_module(f"{node.module}.{a.name}")  # a module
                    elif a.name not in getattr(package, "__all__", ()):
                        outside.append(f"{path.name}: {node.module}.{a.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr not in getattr(modules[node.value.id], "__all__", ())):
                outside.append(f"{path.name}: {modules[node.value.id].__name__}.{node.attr}")
    assert not outside, f"not in the module's __all__: {outside}"
