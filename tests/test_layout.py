"""The package layout's rules, read from the source: the runtime never imports the export side; the
export side's modules, and its subpackages as wholes, import each other without cycles (lazy imports
included); a package's __init__ imports its own submodules before it defines anything."""

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
    ``known``, also the packages above it, whose __init__ runs first. ``name``'s own packages count
    only where it imports names from them (``from . import X``): their __init__ must have defined X."""
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
    packages_above: set[str] = set()
    for target in targets:
        if target in known:
            parts = target.split(".")
            packages_above.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return (targets | (packages_above - ancestors_of_self)) - {name}


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same top-level package it imports."""
    found = modules(package)
    known = set(found)
    return {name: imported_names(name, path, known) & known for name, path in found.items()}


def package_graph(graph: dict[str, set[str]], root: str) -> dict[str, set[str]]:
    """The module graph with each subpackage of ``root`` (and each module at its top) as one node."""

    def unit(module: str) -> str:
        return ".".join(module.split(".")[:2]) if module.startswith(root + ".") else module

    units: dict[str, set[str]] = {}
    for module, targets in graph.items():
        units.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    return units


def late_imports(init: Path, package: str) -> list[str]:
    """Imports of ``package``'s own submodules that its ``init`` runs after defining a name (dunders
    aside): a submodule importing such a name back works only by the order of the lines."""

    def statements(body: list[ast.stmt]):  # in execution order, into if/try/with but not into functions
        for node in body:
            yield node
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                for field in ("body", "handlers", "orelse", "finalbody"):
                    yield from statements([n for n in getattr(node, field, []) if isinstance(n, ast.stmt)])

    def defines(node: ast.stmt) -> bool:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return True
        if not isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            return False
        bound = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [n.id for target in bound for n in ast.walk(target) if isinstance(n, ast.Name)]
        return any(not (n.startswith("__") and n.endswith("__")) for n in names)

    def own(node: ast.stmt) -> bool:
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            return node.level == 1 or (node.level == 0 and (module == package or module.startswith(package + ".")))
        return isinstance(node, ast.Import) and any(a.name.startswith(package + ".") for a in node.names)

    defined, late = False, []
    for node in statements(ast.parse(init.read_text(), str(init)).body):
        defined = defined or defines(node)
        if defined and own(node):
            late.append(f"{init.name}:{node.lineno}: {ast.unparse(node)}")
    return late


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


def test_the_export_side_has_no_cycles_between_its_subpackages():
    graph = package_graph(import_graph(EXPORT), "nvp_export")
    assert {"nvp_export.inr", "nvp_export.backbone"} <= graph["nvp_export.route"]  # subpackages and top modules
    assert cycle(graph) is None, " -> ".join(cycle(graph))


@pytest.mark.parametrize("package", [EXPORT, RUNTIME])
def test_a_package_imports_its_own_submodules_before_defining_names(package):
    inits = {name: path for name, path in modules(package).items() if path.name == "__init__.py"}
    assert not {name: late for name, path in inits.items() if (late := late_imports(path, name))}


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


def test_a_package_cycle_and_an_import_after_a_definition_are_found(tmp_path):
    pkg = tmp_path / "pkg"
    for sub in ("a", "b"):
        (pkg / sub).mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from ..b.y import f\n")
    (pkg / "b" / "__init__.py").write_text("")
    (pkg / "b" / "y.py").write_text("def f():\n    pass\n")
    (pkg / "b" / "z.py").write_text("def g():\n    from ..a.x import f\n")  # lazily, from another module
    assert cycle(import_graph(pkg)) is None  # no module cycle: x -> y, z -> x
    assert set(cycle(package_graph(import_graph(pkg), "pkg"))) == {"pkg.a", "pkg.b"}
    (pkg / "b" / "z.py").write_text("")
    assert cycle(package_graph(import_graph(pkg), "pkg")) is None

    (pkg / "b" / "__init__.py").write_text(
        '"""doc"""\nfrom .y import f\n__all__ = ["f"]\nif True:\n    from . import z\n'
    )
    assert late_imports(pkg / "b" / "__init__.py", "pkg.b") == []  # dunders define nothing
    assert cycle(import_graph(pkg)) is None
    (pkg / "b" / "z.py").write_text("from . import f\n")  # a name back from the __init__ that imports z
    assert set(cycle(import_graph(pkg))) == {"pkg.b", "pkg.b.z"}
    (pkg / "b" / "__init__.py").write_text("from .y import f\nLIMIT = 3\nfrom ..a import x\nfrom .z import *  # noqa\n")
    assert late_imports(pkg / "b" / "__init__.py", "pkg.b") == ["__init__.py:4: from .z import *"]  # not ..a
