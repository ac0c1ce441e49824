"""The package's layering: no module of lyre/ imports, even lazily, a module that imports it back,
and the dependencies between packages keep to the contracts declared in pyproject.toml
([tool.importlinter], checked here with import-linter).

A cycle makes the import order matter and hides which module depends on which; the map in
docs/architecture.md is only true while the graph stays a DAG. A contract says which way a
dependency may go (the ground floor imports no stage; lyre.hf does not reach into the task
packages; nothing but the CLI imports lyre.cli; ...), which a cycle check cannot see.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lyre"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node, except what sits under `if TYPE_CHECKING:` (never imported at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in ast.walk(child))
            continue
        yield node
        yield from _runtime_nodes(node)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every lyre module that `path` imports anywhere (top level or inside a function), type
    checking aside."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        # A package's own submodules are not a dependency of the package on itself.
        graph[name] = {m for m in imports_of(path, modules) if m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (depth-first search with colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour[node] == 0 and (cycle := visit(node)):
            return cycle
    return None


def test_the_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges from a package's __init__ to its own submodules are how packages re-export; the
    cycle that matters is between modules, so a package importing its children is dropped
    when the child imports the package only for a sibling (`from lyre.model import X`)."""
    out = {}
    for name, deps in graph.items():
        out[name] = {d for d in deps if not d.startswith(name + ".")}
    return out


def test_no_import_cycle_inside_lyre():
    cycle = find_cycle(package_edges(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_import_contracts_are_kept(capsys):
    """`lint-imports`, through its Python API, on this tree's pyproject.toml: 0 when every
    contract is kept; its report (which import broke which contract) is the failure message."""
    import sys

    from importlinter.cli import lint_imports

    root = PACKAGE.parent
    sys.path.insert(0, str(root))  # analyse this tree's lyre, wherever lyre is installed
    try:
        code = lint_imports(config_filename=str(root / "pyproject.toml"), no_cache=True, no_logo=True)
    finally:
        sys.path.remove(str(root))
    report = capsys.readouterr().out
    assert code == 0, report
    assert "0 broken" in report


def test_a_broken_contract_is_reported(tmp_path, capsys, monkeypatch):
    """The check can fail: a package whose ground floor imports a stage breaks its contract."""
    from importlinter.cli import lint_imports

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("import pkg.train\n")
    (pkg / "train.py").write_text("")
    (tmp_path / "setup.toml").write_text(
        '[tool.importlinter]\nroot_package = "pkg"\n\n[[tool.importlinter.contracts]]\n'
        'name = "ground floor"\ntype = "forbidden"\nsource_modules = ["pkg.config"]\n'
        'forbidden_modules = ["pkg.train"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert lint_imports(config_filename=str(tmp_path / "setup.toml"), no_cache=True, no_logo=True) == 1
    assert "pkg.config -> pkg.train" in capsys.readouterr().out


def test_train_and_generate_are_modules_of_the_package():
    """`lyre.train.trainer` and `lyre.generate.simple` name modules, not functions re-exported over them."""
    import inspect

    import lyre
    import lyre.generate.simple as generate_module
    import lyre.train.trainer as train_module

    assert inspect.ismodule(train_module) and inspect.ismodule(generate_module)
    assert inspect.ismodule(lyre.train.trainer) and inspect.ismodule(lyre.generate.simple)
    assert callable(train_module.train) and callable(generate_module.generate)


def test_every_face_name_resolves_in_a_fresh_process():
    """The documented Python API: every name that `lyre` and the packages' faces (lyre.train,
    lyre.generate, lyre.rag, lyre.classify) export lazily imports, in a process that imported
    nothing else first (a wrong module path there only shows on first use)."""
    import subprocess
    import sys

    code = (
        "import importlib\n"
        "bad = []\n"
        "for face in ('lyre', 'lyre.train', 'lyre.generate', 'lyre.rag', 'lyre.classify'):\n"
        "    module = importlib.import_module(face)\n"
        "    names = getattr(module, '__all__', None) or list(getattr(module, '_FACE', {}))\n"
        "    assert names, face\n"
        "    for name in names:\n"
        "        try:\n"
        "            getattr(module, name)\n"
        "        except Exception as e:\n"
        "            bad.append(f'{face}.{name}: {e}')\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_package_has_its_layer():
    """The layers contract names every top-level package of lyre: a new package is placed in
    the architecture (pyproject.toml's layers, docs/architecture.md) before it can be imported."""
    import tomllib

    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    layered = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    packages = {f"lyre.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == layered
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert flat == [], f"modules outside the packages: {flat}"
