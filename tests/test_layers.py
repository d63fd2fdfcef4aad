"""The package's import graph: read from the source, as Python would resolve each import."""

import ast
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def module_name(path: Path) -> str:
    parts = path.relative_to(DEPLOY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's own modules that `path` imports, at any depth of its code (lazy imports count)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules} - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = list(DEPLOY.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once, as the path that closes it."""
    found, done = [], set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            circle = path[path.index(name) :]
            if frozenset(circle) not in done:
                done.add(frozenset(circle))
                found.append([*circle, name])
            return
        for imported in sorted(graph[name]):
            visit(imported, [*path, name])

    for name in sorted(graph):
        visit(name, [])
    return found


def test_the_graph_is_read_as_python_resolves_imports():
    graph = import_graph()
    assert "deploy.errors" in graph["deploy.credentials"]
    assert "deploy.guards.lock" in graph["deploy.commands"]  # from .guards import lock
    assert "deploy.dialects.base" in graph["deploy.dialects.mariadb"]  # from .base import ...


def test_a_circle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_package_has_no_import_circles():
    assert cycles(import_graph()) == []


def layer_of() -> dict[str, int]:
    from deploy import LAYERS

    return {f"deploy.{name}": number for number, layer in enumerate(LAYERS) for name in layer}


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return [
        f"{name} (layer {layers[name]}) imports {imported} (layer {layers[imported]})"
        for name, imports in sorted(graph.items())
        for imported in sorted(imports)
        if layers[imported] > layers[name]
    ]


def test_every_module_has_its_one_layer():
    from deploy import LAYERS

    named = [name for layer in LAYERS for name in layer]
    assert sorted(named) == sorted(set(named))
    assert set(layer_of()) == set(import_graph()) - {"deploy"}


def test_an_import_up_the_layers_is_found():
    layers = {"low": 0, "high": 1}
    assert upward_imports({"low": {"high"}, "high": set()}, layers) == ["low (layer 0) imports high (layer 1)"]


def test_no_module_imports_up_the_layers():
    graph = import_graph()
    del graph["deploy"]
    assert upward_imports(graph, layer_of()) == []
