"""Sphinx configuration of the specprod-db documentation (``make docs``).

The Markdown pages (daily.md, setup.md ...) are read by myst-parser as they are; the
schema reference is generated from ``specprod_db.schema`` by ``_ext/schema_ref.py``.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "py"))

from specprod_db import __version__  # noqa: E402

project = "specprod-db"
author = "DESI"
copyright = "DESI Collaboration"
version = release = __version__

extensions = ["sphinx.ext.autosectionlabel", "myst_parser", "schema_ref"]
# Sections are :ref:-able as "page:Title" (e.g. daily:Guards), Markdown pages too.
autosectionlabel_prefix_document = True
autosectionlabel_maxdepth = 2
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_data", "_ext", "queries"]
# Markdown headings get anchors, so pages can link to daily.md#guards.
myst_heading_anchors = 3
highlight_language = "none"
nitpicky = True

html_theme = "alabaster"
html_static_path = []
html_theme_options = {"description": "DESI spectroscopic productions in PostgreSQL",
                      "page_width": "1200px"}
