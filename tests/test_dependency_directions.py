"""Dependencies point one way, and every error lives in contourd/errors.py.

The allowed directions (docs/architecture.md, "Types, errors and dependency
directions"): ``daemon`` -> all others; ``training`` -> ``inference``,
``model_store``; ``inference`` -> ``model_store``; ``routing`` ->
``model_store``; ``model_store`` -> nothing of ours; everything -> ``contourd``.

Two independent checks: each package is imported with all its modules in a
fresh interpreter and ``sys.modules`` is read afterwards (what really gets
loaded), and every ``import`` statement is read with ``ast``, including the
lazy ones inside functions and under ``TYPE_CHECKING`` (what could get
loaded). The same source scan finds import cycles between modules.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contourd", "routing", "inference", "model_store", "training", "daemon")
ALLOWED: dict[str, frozenset[str]] = {
    "contourd": frozenset(),
    "model_store": frozenset({"contourd"}),
    "routing": frozenset({"contourd", "model_store"}),
    "inference": frozenset({"contourd", "model_store"}),
    "training": frozenset({"contourd", "inference", "model_store"}),
    "daemon": frozenset(PACKAGES) - {"daemon"},
}

# Imports every module of one package, then reports which of our packages got
# loaded and which exception classes are defined outside contourd.errors.
_PROBE = """
import importlib, json, pkgutil, sys
package = sys.argv[1]
ours = set(sys.argv[2].split(","))
root = importlib.import_module(package)
names = [package] + sorted(
    m.name for m in pkgutil.walk_packages(root.__path__, package + ".")
    if not m.name.endswith("__main__")
)
stray = []
for name in names:
    module = importlib.import_module(name)
    for value in vars(module).values():
        if (isinstance(value, type) and issubclass(value, BaseException)
                and value.__module__ == name and name != "contourd.errors"):
            stray.append(f"{name}.{value.__name__}")
loaded = sorted({m.split(".")[0] for m in sys.modules} & ours)
print(json.dumps({"modules": len(names), "loaded": loaded, "stray_errors": stray}))
"""


def _probe(package: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, package, ",".join(PACKAGES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("package", PACKAGES)
def test_package_alone_loads_only_what_it_may(package: str) -> None:
    result = _probe(package)
    assert isinstance(result["modules"], int) and result["modules"] >= 1
    loaded = set(result["loaded"])  # type: ignore[arg-type]
    assert package in loaded
    assert loaded - {package} <= ALLOWED[package], (
        f"importing {package} loads {sorted(loaded - {package} - ALLOWED[package])}, "
        f"which it must not use (allowed: {sorted(ALLOWED[package])})"
    )
    assert result["stray_errors"] == [], "exception classes belong in contourd/errors.py"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Ids of the import nodes under ``if TYPE_CHECKING:`` (never run)."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                guarded |= {id(n) for n in ast.walk(child)}
    return guarded


def _imports(path: Path, *, runtime_only: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in a file, lazy ones included.

    ``runtime_only`` leaves out the imports under ``TYPE_CHECKING``: they
    never run, so they make no cycle (they still count for the directions,
    since the type checker follows them).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree) if runtime_only else set()
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def _source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_no_import_statement_points_upward() -> None:
    wrong = []
    for path in _source_files():
        package = path.relative_to(ROOT).parts[0]
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert wrong == [], "imports against the allowed directions:\n" + "\n".join(wrong)


def _module_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _source_files()}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for _line, target in _imports(path, runtime_only=True):
            # ``from a.b import c`` names a.b.c: a module when one exists, else a.b.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if not target or target == name or target.split(".")[0] not in PACKAGES:
                continue
            # a module importing its own package's __init__ is no cycle worth a name
            if not (modules[target].name == "__init__.py" and name.startswith(target + ".")):
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# Cycles left on purpose, each with its reason; any other cycle fails.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}
# (The one cycle inside daemon.web, create_app <-> its routers and the old
# HealthServer alias, went when WebContext moved to daemon.web.context.)


def test_no_import_cycles_between_modules() -> None:
    cycles = [c for c in _cycles(_module_graph()) if tuple(c) not in KNOWN_CYCLES]
    assert cycles == [], "modules that import each other (lazy imports count):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
