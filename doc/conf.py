"""Sphinx configuration of the specprod-db documentation (``make docs``).

The Markdown pages (daily.md, setup.md ...) are read by myst-parser as they are; the
schema reference is generated from ``specprod_db.schema`` by ``_ext/schema_ref.py``; the
API reference (``api.rst``) from the modules under ``py/specprod_db`` by ``_ext/api_ref.py``
(pages written to ``doc/api/`` at every build, not committed).
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "py"))

import api_ref  # noqa: E402
from specprod_db import __version__  # noqa: E402

project = "specprod-db"
author = "DESI"
copyright = "DESI Collaboration"
version = release = __version__

extensions = ["sphinx.ext.autosectionlabel", "sphinx.ext.autodoc", "myst_parser",
              "schema_ref", "api_ref"]
# Sections are :ref:-able as "page:Title" (e.g. daily:Guards), Markdown pages too.
autosectionlabel_prefix_document = True
autosectionlabel_maxdepth = 2
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_data", "_ext", "queries", "api/*.inc"]
# Markdown headings get anchors, so pages can link to daily.md#guards.
myst_heading_anchors = 3
highlight_language = "none"
nitpicky = True

# --- the API reference -------------------------------------------------------------------
# One page per module, written now (so a module added to the package appears without
# editing api.rst; pages of removed modules are removed).
api_ref.write_pages(HERE.parent / "py" / "specprod_db", HERE / "api")
# Members defined in each module (not those it imports, whatever its __all__), in source
# order; annotations are not shown: they name numpy, psycopg2, mpi4py, h5py types this
# offline build (no intersphinx) cannot link to, and the docstrings say what is passed.
autodoc_default_options = {"members": True, "undoc-members": True,
                           "show-inheritance": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_class_signature = "separated"
# References into the packages the code uses, which this offline build has no inventory of.
EXTERNAL = ("numpy", "psycopg2", "mpi4py", "h5py", "fitsio", "astropy", "desiutil",
            "desispec", "desitarget", "sqlalchemy", "matplotlib", "yaml")
nitpick_ignore_regex = [(r"py:.*", rf"({'|'.join(EXTERNAL)})(\..*)?")]
# ops/verify.py's module docstring names a private function (not in the reference) as
# :func:`_desiname_sql`; to go when it is written ``_desiname_sql``.
nitpick_ignore = [("py:func", "_desiname_sql")]

html_theme = "alabaster"
html_static_path = []
html_theme_options = {"description": "DESI spectroscopic productions in PostgreSQL",
                      "page_width": "1200px"}
