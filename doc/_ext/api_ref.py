"""The pages of the API reference (``doc/api.rst``), written from the package's files.

:func:`modules` lists the modules under ``py/specprod_db`` by layer (the top-level
modules are the core; each sub-package is a layer), reading only file names and
docstrings (``ast``), never importing the package. :func:`write_pages` writes one page
per module (``automodule`` with its members) to ``doc/api/`` and ``doc/api/layers.inc``,
the per-layer tables of contents that ``api.rst`` includes. ``conf.py`` calls it at every
build (writing only the pages that changed, removing those of modules that are gone),
so a module added or removed by anyone is in the reference without editing ``api.rst``.

As a Sphinx extension (:func:`setup`) it reads the NumPy-style sections (Parameters,
Returns ...) of functions, classes and modules (:func:`numpy_sections`), and links a docstring's reference to a name
the module imported (``:class:`InputError``` in a module that imports it from
:mod:`specprod_db.errors`) to where that object is documented
(:func:`resolve_imported`).
"""
import ast
import importlib
import inspect
import os
from pathlib import Path

from sphinx.ext.napoleon import Config as NapoleonConfig
from sphinx.ext.napoleon.docstring import NumpyDocstring
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docstrings import prepare_docstring
from sphinx.util.nodes import make_refnode

PACKAGE = "specprod_db"
CORE = "core"
#: How the core layer is introduced (a sub-package says it in its own docstring).
CORE_TEXT = ("The top-level modules: errors, logging, fault injection, the schema, ids, "
             "paths, the MPI roles, stage files and the command line. They import "
             "nothing from ``db/``, ``load/`` or ``ops/``.")


#: The layers from the bottom up; a folder not listed comes after them, alphabetically.
LAYER_ORDER = ("extract", "db", "load", "ops", "vac", "commands", "devdb", "mock")


def _summary(path):
    """The first paragraph of a module's docstring, or ''."""
    doc = ast.get_docstring(ast.parse(Path(path).read_text(), filename=str(path))) or ""
    return " ".join(doc.split("\n\n")[0].split())


def modules(pkg_dir):
    """``{layer: (summary, [module names])}``: ``core`` first, then the sub-packages in
    :data:`LAYER_ORDER`; modules whose name starts with ``_`` (other than ``__init__``)
    are left out."""
    pkg_dir = Path(pkg_dir)
    layers = {CORE: (CORE_TEXT, [PACKAGE])}
    for path in sorted(pkg_dir.glob("*.py")):
        if not path.stem.startswith("_"):
            layers[CORE][1].append(f"{PACKAGE}.{path.stem}")
    subs = [p for p in pkg_dir.iterdir() if (p / "__init__.py").exists()]
    order = {name: i for i, name in enumerate(LAYER_ORDER)}
    for sub in sorted(subs, key=lambda p: (order.get(p.name, len(order)), p.name)):
        names = [f"{PACKAGE}.{sub.name}"]
        for path in sorted(sub.rglob("*.py")):
            rel = path.relative_to(pkg_dir).with_suffix("").parts
            if any(part.startswith("_") for part in rel[1:]):
                continue
            names.append(".".join((PACKAGE,) + rel))
        layers[f"{sub.name}/"] = (_summary(sub / "__init__.py"), names)
    return layers


def _path(pkg_dir, name):
    """The file of module ``name`` (``specprod_db.db.sql``) under ``pkg_dir``."""
    rel = Path(*name.split(".")[1:])
    package = Path(pkg_dir) / rel / "__init__.py"
    return package if package.exists() else (Path(pkg_dir) / rel).with_suffix(".py")


def _title(text, char):
    return f"{text}\n{char * len(text)}\n"


def undocumented_constants(path, name):
    """Public names a module assigns at its top level without a ``#:`` comment or a
    docstring: autodoc leaves them out (their value's ``__module__`` is not the
    module's), yet docstrings refer to them (``:data:`EXIT_INTERNAL```)."""
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    documented = {n for (ns, n) in ModuleAnalyzer.for_file(str(path), name).find_attr_docs()
                  if ns == ""}
    out = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (isinstance(target, ast.Name) and not target.id.startswith("_")
                        and target.id not in documented and target.id not in out):
                    out.append(target.id)
    return out


def module_page(name, path=None):
    """The page of one module: its name as title, ``automodule`` with its members, and
    ``autodata`` of the constants autodoc would leave out."""
    page = _title(f"``{name}``", "=") + f"\n.. automodule:: {name}\n"
    for const in undocumented_constants(path, name) if path else []:
        page += f"\n.. autodata:: {name}.{const}\n   :no-value:\n"
    return page


def layers_inc(layers):
    """The per-layer sections that ``api.rst`` includes, each a table of contents."""
    out = []
    for layer, (summary, names) in layers.items():
        out.append(_title(f"{layer}", "-"))
        if summary:
            out.append(summary + "\n")
        out.append(".. toctree::\n   :maxdepth: 1\n")
        out.extend(f"   api/{name}" for name in names)
        out.append("")
    return "\n".join(out) + "\n"


def _write(path, text):
    """Write ``path`` unless it holds ``text`` already, by rename (another build reading
    the directory at the same time sees the old page or the new one, never none)."""
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_pages(pkg_dir, out_dir):
    """Bring ``out_dir`` in step with the package: one ``NAME.rst`` per module and
    ``layers.inc``, pages of modules that no longer exist removed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = modules(pkg_dir)
    pages = {"layers.inc": layers_inc(layers)}
    for _, names in layers.values():
        for name in names:
            pages[f"{name}.rst"] = module_page(name, _path(pkg_dir, name))
    for name, text in pages.items():
        _write(out_dir / name, text)
    for path in out_dir.iterdir():
        if path.name not in pages and path.suffix in (".rst", ".inc"):
            path.unlink(missing_ok=True)
    return layers


# --- references to imported names --------------------------------------------------------

def _resolve(modname, target):
    """The object ``target`` (``name`` or ``name.attr``) names in module ``modname``'s
    namespace, or None."""
    try:
        obj = importlib.import_module(modname)
    except Exception:  # noqa: BLE001 - autodoc already said why, if it matters
        return None
    for part in target.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return None
    return obj


def _documented_name(obj, last, objects):
    """The documented full name of ``obj`` (whose own name is ``last``), or None."""
    if inspect.ismodule(obj):
        return obj.__name__ if obj.__name__ in objects else None
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        full = f"{module}.{qualname}"
        if full in objects:
            return full
    # data (a constant imported from another module) has no name of its own: the
    # documented object of that name that is the same object
    for full in objects:
        if full.rsplit(".", 1)[-1] == last:
            owner, _, attr = full.rpartition(".")
            try:
                if getattr(importlib.import_module(owner), attr) is obj:
                    return full
            except Exception:  # noqa: BLE001 - not a module: a class member, not data
                continue
    return None


def resolve_imported(app, env, node, contnode):
    """``missing-reference``: a docstring's unqualified ``:class:`InputError```
    (or ``:func:`rows.build```) names what its module imported under that name; link it
    to where that object is documented."""
    if node.get("refdomain") != "py" or not node.get("py:module"):
        return None
    target = node["reftarget"]
    obj = _resolve(node["py:module"], target)
    if obj is None:
        return None
    domain = env.get_domain("py")
    full = _documented_name(obj, target.rsplit(".", 1)[-1], domain.objects)
    if full is None:
        return None
    entry = domain.objects[full]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id,
                        contnode, full)


#: Parameter types are words ("structured array", "mapping"): shown as written, not
#: cross-referenced.
NAPOLEON = NapoleonConfig(napoleon_google_docstring=False, napoleon_use_param=False,
                          napoleon_use_rtype=False)


def numpy_sections(app, what, name, obj, options, lines):
    """``autodoc-process-docstring``: NumPy-style sections as napoleon renders them, for
    functions, methods, classes and modules only (napoleon would read a constant's
    ``#: Every kind (in order): ...`` comment as a type and a description); a constant
    without a comment of its own gets no text (not its type's docstring)."""
    if what in ("module", "class", "exception", "function", "method"):
        lines[:] = NumpyDocstring(lines, NAPOLEON, app, what, name, obj, options).lines()
    elif what in ("data", "attribute") and lines and _text(lines) in _value_docs(obj):
        lines[:] = []   # an undocumented constant: not the docstring of dict, ndarray ...


def _text(lines):
    return " ".join(" ".join(lines).split())


def _value_docs(obj):
    """The docstrings a value has from its type (its own ``__doc__``, its type's)."""
    docs = (getattr(obj, "__doc__", None), getattr(type(obj), "__doc__", None))
    return {_text(prepare_docstring(d)) for d in docs if isinstance(d, str)}


def setup(app):
    app.connect("autodoc-process-docstring", numpy_sections)
    app.connect("missing-reference", resolve_imported)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
