"""The import layers of evax (docs/ARCHITECTURE.md), checked on the source with ``ast``.

Every ``import`` / ``from ... import`` of every module under ``src/evax`` counts -- at module
level, inside functions and under ``if TYPE_CHECKING:`` alike; relative imports are resolved.
(``importlib.import_module`` calls with computed names, as in ``evax.bench.components`` and the
package root's lazy ``__getattr__``, are not imports and are not checked.)

Three rules:

(a) no upward import: a module imports only from its own layer or the layers below it;
(b) no private name crosses a package: ``from evax.x._m import y`` or ``from evax.x import _y``
    only inside ``evax.x``;
(c) no cycle between packages.

A package is the first component under ``evax`` (``evax.core.noise`` -> ``core``,
``evax.cli`` -> ``cli``); ``evax`` itself (the package root) is the top layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top; packages of one layer may import each other (but rule (c) forbids cycles).
EVAX_LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("core", "groups"),
    ("perturbation",),
    ("bounds",),
    ("attribution",),
    ("metrics",),
    ("viz", "zoo"),
    ("bench",),
    ("cli",),
    ("",),  # the package root, evax/__init__.py
)


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``names`` from module ``target`` (``lineno`` in ``source``)."""

    source: str
    target: str
    names: tuple[str, ...]
    lineno: int


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_edges(root: Path, package: str) -> list[Edge]:
    """Every import of a module of ``package`` by a module of ``package``."""
    modules = module_names(root, package)
    edges = []
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == package or alias.name.startswith(package + "."):
                        edges.append(Edge(name, alias.name, (), node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target != package and not target.startswith(package + "."):
                    continue
                plain = []
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:  # `from evax import groups`: an import of the module
                        edges.append(Edge(name, sub, (), node.lineno))
                    else:
                        plain.append(alias.name)
                if plain or not node.names:
                    edges.append(Edge(name, target, tuple(plain), node.lineno))
    return edges


def package_of(module: str) -> str:
    """``evax.core.noise`` -> ``core``; ``evax`` -> ``""`` (the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_index(layers: Sequence[Sequence[str]]) -> dict[str, int]:
    return {pkg: i for i, layer in enumerate(layers) for pkg in layer}


def upward_imports(edges: Iterable[Edge], layers: Sequence[Sequence[str]]) -> list[str]:
    """Rule (a); also reports a package missing from ``layers``."""
    index = layer_index(layers)
    bad = []
    for e in edges:
        src, dst = package_of(e.source), package_of(e.target)
        for pkg in (src, dst):
            if pkg not in index:
                bad.append(f"{pkg!r} ({e.source} -> {e.target}) is in no layer")
        if src in index and dst in index and index[dst] > index[src]:
            bad.append(f"{e.source}:{e.lineno} imports {e.target} (layer {dst!r} is above {src!r})")
    return bad


def private_imports(edges: Iterable[Edge]) -> list[str]:
    """Rule (b)."""
    bad = []
    for e in edges:
        if package_of(e.source) == package_of(e.target):
            continue
        private = [p for p in e.target.split(".")[1:] if p.startswith("_")]
        private += [n for n in e.names if n.startswith("_")]
        if private:
            bad.append(f"{e.source}:{e.lineno} imports private {private} from {e.target}")
    return bad


def package_cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """Rule (c): the cycles of the package graph (one per strongly connected component)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        src, dst = package_of(e.source), package_of(e.target)
        graph.setdefault(src, set())
        graph.setdefault(dst, set())
        if src != dst:
            graph[src].add(dst)
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


# ------------------------------------------------------------------ the real package
@pytest.fixture(scope="module")
def evax_edges() -> list[Edge]:
    edges = import_edges(SRC, "evax")
    assert len(edges) > 100  # the parser sees the package
    return edges


def test_no_upward_import(evax_edges):
    assert upward_imports(evax_edges, EVAX_LAYERS) == []


def test_no_private_name_crosses_a_package(evax_edges):
    assert private_imports(evax_edges) == []


def test_no_cycle_between_packages(evax_edges):
    assert package_cycles(evax_edges) == []


def test_attribution_and_metrics_import_only_downward(evax_edges):
    """The issue's rule, spelled out: the two do not import each other, in either direction."""
    for e in evax_edges:
        pair = (package_of(e.source), package_of(e.target))
        assert pair not in {("attribution", "metrics"), ("metrics", "attribution")}, e


def test_every_package_has_a_layer():
    index = layer_index(EVAX_LAYERS)
    for name in module_names(SRC, "evax"):
        assert package_of(name) in index, name


# ------------------------------------------------------------------ the checker itself
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


_LAYERS = (("low",), ("mid",), ("top",), ("",))


def _clean_package(root: Path) -> None:
    _write(
        root,
        {
            "pkg/__init__.py": "from pkg.top import run\n",
            "pkg/low/__init__.py": "",
            "pkg/low/util.py": "def helper():\n    return 1\n\ndef _secret():\n    return 2\n",
            "pkg/low/_impl.py": "X = 1\n",
            "pkg/mid/__init__.py": "from pkg.low.util import helper\nfrom ._inner import Y\n",
            "pkg/mid/_inner.py": "from ..low import util\nY = util.helper()\n",
            "pkg/top.py": "def run():\n    from pkg.mid import Y\n    return Y\n",
        },
    )


def test_checker_accepts_a_clean_package(tmp_path):
    _clean_package(tmp_path)
    edges = import_edges(tmp_path, "pkg")
    targets = {(e.source, e.target) for e in edges}
    # relative imports resolved; function-level imports seen; `from pkg.low import util` is a module
    assert ("pkg.mid", "pkg.mid._inner") in targets
    assert ("pkg.mid._inner", "pkg.low.util") in targets
    assert ("pkg.top", "pkg.mid") in targets
    assert upward_imports(edges, _LAYERS) == []
    assert private_imports(edges) == []
    assert package_cycles(edges) == []


def test_checker_catches_an_injected_upward_import(tmp_path):
    _clean_package(tmp_path)
    _write(tmp_path, {"pkg/low/util.py": "def helper():\n    from pkg.mid import Y\n    return Y\n"})
    edges = import_edges(tmp_path, "pkg")
    bad = upward_imports(edges, _LAYERS)
    assert len(bad) == 1 and "pkg.low.util" in bad[0] and "'mid' is above 'low'" in bad[0]
    assert package_cycles(edges) == [["low", "mid"]]


def test_checker_catches_private_names_and_modules(tmp_path):
    _clean_package(tmp_path)
    _write(tmp_path, {"pkg/top.py": "from pkg.low.util import _secret\nfrom pkg.low._impl import X\n"})
    bad = private_imports(import_edges(tmp_path, "pkg"))
    assert len(bad) == 2
    assert any("_secret" in b for b in bad) and any("_impl" in b for b in bad)


def test_checker_catches_a_cycle_within_a_layer(tmp_path):
    _clean_package(tmp_path)
    _write(
        tmp_path,
        {
            "pkg/a.py": "import pkg.b\n",
            "pkg/b.py": "from pkg import a\n",
        },
    )
    edges = import_edges(tmp_path, "pkg")
    assert upward_imports(edges, (("low",), ("mid",), ("top", "a", "b"), ("",))) == []
    assert package_cycles(edges) == [["a", "b"]]
