"""The package's layering, read from its source: siblings share lower modules instead of importing each other."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "yolo_advamd"
SIBLINGS = {  # parts that may share lower modules but never import one another
    "validation": {
        "yolo_advamd.validate",
        "yolo_advamd.validators",
        "yolo_advamd.coco_scoring",
        "yolo_advamd.results_table",
    },
    "attack API": {"yolo_advamd.attack_api", "yolo_advamd.attack_result", "yolo_advamd.image_labels"},
    "export": {"yolo_advamd.export"},
}
ATTACKS = {
    "yolo_advamd.attacks",
    "yolo_advamd.attacks.base",
    "yolo_advamd.attacks.fgsm",
    "yolo_advamd.attacks.pgd",
    "yolo_advamd.attacks.deepfool",
    "yolo_advamd.attacks.strategies",
}


def module_name(file: Path) -> str:
    """Return the dotted name of a file of the package (a package's `__init__.py` is the package)."""
    parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """Return each module's explicit imports of the package's modules, at any depth of its code (`from pkg import
    name` counts as importing `pkg.name` when that is a module)."""
    modules = {module_name(f): f for f in PACKAGE.rglob("*.py")}
    graph = {}
    for name, file in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
        graph[name] = {m for m in imported if m in modules}
    return graph


def reachable(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    """Return every module imported, directly or through others, by the modules in `start`."""
    seen, todo = set(), list(start)
    while todo:
        for m in graph[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_every_named_module_exists():
    graph = package_imports()
    assert set().union(*SIBLINGS.values(), ATTACKS, {"yolo_advamd.cli", "yolo_advamd.attacks.objectives"}) <= set(graph)


@pytest.mark.parametrize("part", SIBLINGS)
def test_validation_export_and_the_attack_api_do_not_import_each_other(part):
    others = set().union(*(modules for name, modules in SIBLINGS.items() if name != part))
    assert not reachable(package_imports(), SIBLINGS[part]) & others


def test_the_library_never_imports_its_cli():
    graph = package_imports()
    assert [m for m, imported in graph.items() if "yolo_advamd.cli" in imported] == []


def test_objectives_import_no_attack():
    """What an attack maximizes knows no attack: strategies (`attack_terms=max`) combine them one level up."""
    assert not package_imports()["yolo_advamd.attacks.objectives"] & ATTACKS
