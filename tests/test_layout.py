"""The layer rules of the package's layout (issue 17), read from the source with ``ast``.

Every import statement of every module of ``py/specprod_db`` and ``bench/`` counts:
module-level and inside functions, absolute and relative. An import edge goes to the
module named (``import a.b.c`` -> ``a.b.c``; ``from a.b import c`` -> ``a.b.c`` when
``c`` is a module, else ``a.b``); the packages a dotted name passes through are not
edges of their own. Imports inside ``if TYPE_CHECKING:`` are not run, so they are no
import cycle, but they still count for the layer rules.

The rules:

* ``extract/`` imports neither psycopg2 nor mpi4py, directly or through another
  specprod_db module it imports;
* the core modules (top level) import nothing from ``db/``, ``load/``, ``ops/``;
* ``ops/`` does not import ``load/pipeline``, nor a module that imports it;
* no import cycle in ``py/`` or ``bench/`` (the failure prints the cycle);
* no ``from X import _name`` of a private name of another module.

The checkers are plain functions of a module graph; the tests at the end feed them small
synthetic graphs (and a small synthetic package on disk), so each rule is shown to fail.
"""
import ast
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "py" / "specprod_db"
BENCH_DIR = ROOT / "bench"
PACKAGE = "specprod_db"
# bench/ scripts import each other by their file names (bench/ is on sys.path); their
# nodes in the graph are "bench:NAME" so they cannot be taken for installed packages.
BENCH_PREFIX = "bench:"

CORE = ["errors", "log", "faults", "schema", "ids", "conninfo", "paths", "mpi", "stage",
        "cli", "__init__"]
CORE_FORBIDDEN = ["db", "load", "ops"]
EXTRACT_FORBIDDEN = ["psycopg2", "mpi4py"]
PIPELINE = f"{PACKAGE}.load.pipeline"


@dataclass
class Module:
    """One module of the graph: the modules of the graph it imports (all, and those run
    at import or call time, i.e. not under ``if TYPE_CHECKING:``), the top-level names
    of the external packages it imports, and its ``from X import _name`` imports."""
    name: str
    path: str = ""
    imports: set = field(default_factory=set)
    runtime_imports: set = field(default_factory=set)
    external: set = field(default_factory=set)
    private: list = field(default_factory=list)   # (line, from-module, name)


# --- reading the source ----------------------------------------------------------------

def package_modules(pkg_dir, pkg_name):
    """{dotted module name: (path, is_package)} of a package directory."""
    out = {}
    for path in sorted(Path(pkg_dir).rglob("*.py")):
        rel = path.relative_to(pkg_dir).with_suffix("")
        parts = [pkg_name] + list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def bench_modules(bench_dir):
    return {BENCH_PREFIX + p.stem: (p, False) for p in sorted(Path(bench_dir).glob("*.py"))}


def _is_type_checking(test):
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(tree):
    """(node, under TYPE_CHECKING) of every import statement of a module, at any depth."""
    out = []

    def visit(node, guarded):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for c in child.body:
                    visit_one(c, True)
                for c in child.orelse:
                    visit_one(c, guarded)
            else:
                visit_one(child, guarded)

    def visit_one(child, guarded):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            out.append((child, guarded))
        visit(child, guarded)

    visit(tree, False)
    return out


def _resolve_relative(name, is_pkg, level, module):
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def read_graph(modules, bench=None):
    """The graph of ``modules`` ({name: (path, is_package)}, see package_modules); bench
    modules (names starting with BENCH_PREFIX) resolve ``import NAME`` to ``bench:NAME``
    when bench/NAME.py is one of them."""
    graph = {name: Module(name, str(path)) for name, (path, _) in modules.items()}
    bench_names = {n[len(BENCH_PREFIX):] for n in modules if n.startswith(BENCH_PREFIX)}

    def target(dotted, in_bench):
        """The graph module of a dotted name, or None when it is external."""
        top = dotted.split(".")[0]
        if in_bench and top in bench_names:
            return BENCH_PREFIX + top
        parts = dotted.split(".")
        while parts:
            if ".".join(parts) in graph:
                return ".".join(parts)
            parts.pop()
        return None

    for name, (path, is_pkg) in modules.items():
        mod = graph[name]
        in_bench = name.startswith(BENCH_PREFIX)
        tree = ast.parse(Path(path).read_text(), filename=str(path))
        for node, guarded in _import_nodes(tree):
            if isinstance(node, ast.Import):
                dotted = [a.name for a in node.names]
            else:
                if node.level:
                    base = _resolve_relative(name, is_pkg, node.level, node.module)
                else:
                    base = node.module
                dotted = []
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    dotted.append(sub if sub in graph else base)
                    if (a.name.startswith("_") and not a.name.startswith("__")
                            and target(base, in_bench) not in (None, name)):
                        mod.private.append((node.lineno, base, a.name))
            for d in dotted:
                t = target(d, in_bench)
                if t is None:
                    mod.external.add(d.split(".")[0])
                elif t != name:
                    mod.imports.add(t)
                    if not guarded:
                        mod.runtime_imports.add(t)
    return graph


def project_graph():
    modules = package_modules(PACKAGE_DIR, PACKAGE)
    modules.update(bench_modules(BENCH_DIR))
    return read_graph(modules)


# --- the checks (each returns a list of violations, empty when the rule holds) ---------

def closure(graph, start, runtime=False):
    """The modules ``start`` imports, directly or through others: {module: path of
    imports from start to it}."""
    seen = {start: [start]}
    todo = [start]
    while todo:
        m = todo.pop()
        deps = graph[m].runtime_imports if runtime else graph[m].imports
        for d in sorted(deps):
            if d not in seen:
                seen[d] = seen[m] + [d]
                todo.append(d)
    del seen[start]
    return seen


def _in(name, folder):
    return name == folder or name.startswith(folder + ".")


def check_extract(graph, package=PACKAGE, forbidden=EXTRACT_FORBIDDEN):
    """extract/ imports none of ``forbidden``, directly or through a module it imports."""
    out = []
    for name in sorted(graph):
        if not _in(name, f"{package}.extract"):
            continue
        chains = {name: [name], **closure(graph, name)}
        for m, chain in sorted(chains.items()):
            for ext in sorted(set(forbidden) & graph[m].external):
                out.append(f"{name} imports {ext}: " + " -> ".join(chain + [ext]))
    return out


def check_core(graph, package=PACKAGE, core=CORE, forbidden=CORE_FORBIDDEN):
    """The core modules import nothing from the ``forbidden`` folders."""
    out = []
    for c in core:
        name = package if c == "__init__" else f"{package}.{c}"
        if name not in graph:
            continue
        for d in sorted(graph[name].imports):
            if any(_in(d, f"{package}.{f}") for f in forbidden):
                out.append(f"core module {name} imports {d}")
    return out


def check_ops(graph, package=PACKAGE, pipeline=None):
    """ops/ imports neither load/pipeline nor a module that imports it."""
    pipeline = pipeline or f"{package}.load.pipeline"
    out = []
    for name in sorted(graph):
        if _in(name, f"{package}.ops"):
            chain = closure(graph, name).get(pipeline)
            if chain:
                out.append(f"{name} imports {pipeline}: " + " -> ".join(chain))
    return out


def find_cycles(graph):
    """Every import cycle (of runtime imports), one per strongly connected component,
    as a list of module names that starts and ends with the same module."""
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []
    counter = [0]

    def strongconnect(v):   # Tarjan, iterative
        work = [(v, iter(sorted(graph[v].runtime_imports)))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w].runtime_imports))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    scc = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        scc.append(w)
                        if w == node:
                            break
                    sccs.append(scc)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    cycles = []
    for scc in sccs:
        members = set(scc)
        if len(scc) == 1 and scc[0] not in graph[scc[0]].runtime_imports:
            continue
        start = min(scc)
        # the shortest way back to start inside the component
        prev, todo, found = {start: None}, [start], None
        while todo and found is None:
            nxt = []
            for m in todo:
                for d in sorted(graph[m].runtime_imports & members):
                    if d == start:
                        found = m
                        break
                    if d not in prev:
                        prev[d] = m
                        nxt.append(d)
                if found is not None:
                    break
            todo = nxt
        path = [start]
        m = found
        while m is not None and m != start:
            path.insert(1, m)
            m = prev[m]
        cycles.append(path + [start])
    return sorted(cycles)


def check_cycles(graph):
    out = []
    for cyc in find_cycles(graph):
        files = sorted({os.path.relpath(graph[m].path, ROOT) if graph[m].path else m
                        for m in cyc})
        out.append("import cycle: " + " -> ".join(cyc) + "  (" + ", ".join(files) + ")")
    return out


def check_private(graph):
    """No ``from X import _name`` of another module's private name."""
    out = []
    for name in sorted(graph):
        for line, base, attr in graph[name].private:
            where = os.path.relpath(graph[name].path, ROOT) if graph[name].path else name
            out.append(f"{where}:{line}: from {base} import {attr}")
    return out


def _fail(violations):
    if violations:
        pytest.fail("\n".join(violations), pytrace=False)


# --- the rules on the project ----------------------------------------------------------

@pytest.fixture(scope="module")
def graph():
    return project_graph()


def test_graph_is_read(graph):
    """The reader finds the layers and the edges the layout is known to have."""
    for folder in ("db", "extract", "load", "ops", "devdb", "mock", "vac", "commands"):
        assert f"{PACKAGE}.{folder}" in graph
    assert f"{PACKAGE}.extract.rows" in graph[f"{PACKAGE}.extract.tile"].imports
    assert "numpy" in graph[f"{PACKAGE}.extract.tile"].external
    assert f"{PACKAGE}.db.sql" in graph[f"{PACKAGE}.db.ddl"].imports
    assert BENCH_PREFIX + "scale" in graph[BENCH_PREFIX + "run"].imports
    assert BENCH_PREFIX + "mocks" in graph[BENCH_PREFIX + "scale"].imports


def test_extract_imports_neither_psycopg2_nor_mpi4py(graph):
    _fail(check_extract(graph))


def test_core_imports_no_db_load_ops(graph):
    _fail(check_core(graph))


def test_ops_does_not_import_the_pipeline(graph):
    _fail(check_ops(graph))


def test_no_import_cycles(graph):
    _fail(check_cycles(graph))


def test_no_private_imports_across_modules(graph):
    _fail(check_private(graph))


# --- the checkers themselves, on synthetic graphs --------------------------------------

def synthetic(edges, external=None, private=None, guarded=()):
    """A graph of modules of package ``p`` from {module: [imported modules]}."""
    names = (set(edges) | {d for ds in edges.values() for d in ds} | set(external or {})
             | set(private or {}))
    g = {n: Module(n) for n in names}
    for n, ds in edges.items():
        g[n].imports = set(ds)
        g[n].runtime_imports = {d for d in ds if (n, d) not in guarded}
    for n, exts in (external or {}).items():
        g[n].external = set(exts)
    for n, items in (private or {}).items():
        g[n].private = list(items)
    return g


def test_checker_extract():
    ok = synthetic({"p.extract.a": ["p.extract.b", "p.ids"], "p.ids": []},
                   external={"p.extract.a": {"numpy"}, "p.load.x": {"psycopg2"}})
    assert check_extract(ok, package="p") == []
    direct = synthetic({"p.extract.a": []}, external={"p.extract.a": {"mpi4py"}})
    assert check_extract(direct, package="p") == [
        "p.extract.a imports mpi4py: p.extract.a -> mpi4py"]
    through = synthetic({"p.extract.a": ["p.ids"], "p.ids": ["p.db.connect"]},
                        external={"p.db.connect": {"psycopg2"}})
    assert check_extract(through, package="p") == [
        "p.extract.a imports psycopg2: p.extract.a -> p.ids -> p.db.connect -> psycopg2"]


def test_checker_core():
    ok = synthetic({"p.log": ["p.errors"], "p.cli": ["p.commands.load"],
                    "p.commands.load": ["p.load.pipeline"]})
    assert check_core(ok, package="p") == []
    bad = synthetic({"p.stage": ["p.db.sql"], "p": ["p.ops"], "p.mpi": ["p.load.tasks"],
                     "p.extract.tile": ["p.db.sql"]})
    assert check_core(bad, package="p") == [
        "core module p.mpi imports p.load.tasks", "core module p.stage imports p.db.sql",
        "core module p imports p.ops"]


def test_checker_ops():
    ok = synthetic({"p.ops.status": ["p.load.plan"], "p.load.plan": ["p.db.sql"],
                    "p.commands.load": ["p.load.pipeline"]})
    assert check_ops(ok, package="p") == []
    bad = synthetic({"p.ops.status": ["p.load.plan"], "p.load.plan": ["p.load.pipeline"],
                     "p.ops.verify": ["p.load.pipeline"]})
    assert check_ops(bad, package="p") == [
        "p.ops.status imports p.load.pipeline: p.ops.status -> p.load.plan -> p.load.pipeline",
        "p.ops.verify imports p.load.pipeline: p.ops.verify -> p.load.pipeline"]


def test_checker_cycles():
    ok = synthetic({"a": ["b"], "b": ["c"], "c": [], "d": ["a", "c"]})
    assert find_cycles(ok) == []
    bad = synthetic({"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e"],
                     "x": ["y"], "y": ["x"]})
    assert find_cycles(bad) == [["a", "b", "c", "a"], ["e", "e"], ["x", "y", "x"]]
    assert check_cycles(bad)[0].startswith("import cycle: a -> b -> c -> a")
    # an import under TYPE_CHECKING is no cycle
    typing_only = synthetic({"a": ["b"], "b": ["a"]}, guarded={("b", "a")})
    assert find_cycles(typing_only) == []


def test_checker_private():
    assert check_private(synthetic({"a": ["b"]})) == []
    bad = synthetic({"a": ["b"]}, private={"a": [(3, "b", "_helper")]})
    assert check_private(bad) == ["a:3: from b import _helper"]


def test_reader_on_a_synthetic_package(tmp_path):
    """Relative and absolute, module-level and function-level imports, TYPE_CHECKING,
    private names, bench scripts importing each other: the reader sees them all."""
    pkg = tmp_path / "p"
    for d in ("", "extract", "db", "ops", "load"):
        (pkg / d).mkdir(exist_ok=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "ids.py").write_text("import numpy as np\n")
    (pkg / "extract" / "tile.py").write_text(
        "from . import rows\nfrom ..ids import composite\n"
        "def f():\n    from p.db.sql import _quote\n    return _quote\n")
    (pkg / "extract" / "rows.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .tile import f\n")
    (pkg / "db" / "sql.py").write_text("import psycopg2.extras\n_quote = 1\n")
    (pkg / "load" / "pipeline.py").write_text("from ..ops import status\n")
    (pkg / "ops" / "status.py").write_text(
        "def g():\n    import p.load.pipeline\n")
    (pkg / "stage.py").write_text("from p.db import sql\n")
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "run.py").write_text("import scale\nimport numpy\n")
    (bench / "scale.py").write_text("def h():\n    from run import mock_env\n")
    modules = package_modules(pkg, "p")
    modules.update(bench_modules(bench))
    g = read_graph(modules)

    assert g["p.extract.tile"].imports == {"p.extract.rows", "p.ids", "p.db.sql"}
    assert g["p.extract.rows"].imports == {"p.extract.tile"}
    assert g["p.extract.rows"].runtime_imports == set()
    assert g["p.db.sql"].external == {"psycopg2"}
    assert g["p.ops.status"].imports == {"p.load.pipeline"}
    assert g["p.load.pipeline"].imports == {"p.ops.status"}
    assert g["p.stage"].imports == {"p.db.sql"}
    assert g[BENCH_PREFIX + "run"].imports == {BENCH_PREFIX + "scale"}
    assert g[BENCH_PREFIX + "run"].external == {"numpy"}

    assert check_extract(g, package="p") == [
        "p.extract.rows imports psycopg2: p.extract.rows -> p.extract.tile -> p.db.sql "
        "-> psycopg2",
        "p.extract.tile imports psycopg2: p.extract.tile -> p.db.sql -> psycopg2"]
    assert check_core(g, package="p") == ["core module p.stage imports p.db.sql"]
    assert check_ops(g, package="p") == [
        "p.ops.status imports p.load.pipeline: p.ops.status -> p.load.pipeline"]
    assert find_cycles(g) == [["bench:run", "bench:scale", "bench:run"],
                              ["p.load.pipeline", "p.ops.status", "p.load.pipeline"]]
    assert [v.split(": ", 1)[1] for v in check_private(g)] == ["from p.db.sql import _quote"]
