"""The package layout's rules, read from the source: the runtime never imports the export side,
and the export side's modules import each other without cycles (lazy imports included)."""

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "python" / "nvp_rt"
EXPORT = ROOT / "export" / "nvp_export"


def modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``package`` (a package's own is its __init__)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_names(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports, anywhere in it (functions too), as it resolves; for a module of
    ``known``, also the packages above it, whose __init__ runs first (except ``name``'s own)."""
    is_package = path.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    ancestors_of_self = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")) + 1)}
    resolved = set(targets)
    for target in targets:
        if target in known:
            parts = target.split(".")
            resolved.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return {t for t in resolved if t not in ancestors_of_self}


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same top-level package it imports."""
    found = modules(package)
    known = set(found)
    return {name: imported_names(name, path, known) & known for name, path in found.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        return e.args[1]
    return None


def test_the_runtime_never_imports_the_export_side():
    found = modules(RUNTIME)
    offenders = {
        name: sorted(t for t in imported_names(name, path, set(found)) if t.split(".")[0] == "nvp_export")
        for name, path in found.items()
    }
    assert len(found) > 5
    assert not {k: v for k, v in offenders.items() if v}


def test_the_export_side_has_no_import_cycles():
    graph = import_graph(EXPORT)
    assert "nvp_export.route.adapt" in graph["nvp_export.benchmark.assets"]  # the graph sees relative imports
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_every_export_package_says_what_it_holds():
    packages = [p for p in EXPORT.rglob("__init__.py")]
    assert len(packages) >= 6
    for init in packages:
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(ROOT)} has no docstring"


@pytest.mark.parametrize("lazy", [False, True])
def test_a_cycle_through_a_package_or_a_lazy_import_is_found(tmp_path, lazy):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")  # importing pkg.sub.a runs this first
    (pkg / "sub" / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("from ..c import y\n")
    body = "def f():\n    from .sub.a import x\n" if lazy else "from .sub.a import x\n"
    (pkg / "c.py").write_text(body + "y = 2\n")
    graph = import_graph(pkg)
    assert graph["pkg.c"] == {"pkg.sub", "pkg.sub.a"}
    assert set(cycle(graph)) == {"pkg.sub", "pkg.sub.b", "pkg.c"}
    (pkg / "c.py").write_text("y = 2\n")
    assert cycle(import_graph(pkg)) is None
