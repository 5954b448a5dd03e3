"""Sphinx configuration for satchel's documentation site: the guides (Markdown, read
by MyST) and the API reference built from the docstrings (``python3 tasks.py docs``)."""

from __future__ import annotations

import satchel

project = "satchel"
author = "satchel developers"
release = satchel.__version__
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# Headings get anchors, so a link to another page's section is checked too.
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# satchel.stores re-exports Store, Change and Record from satchel.stores.base, so
# an annotation naming one has two equal targets; that is the only warning silenced.
suppress_warnings = ["ref.python"]
nitpicky = False
html_theme = "alabaster"
exclude_patterns = ["_build"]
html_title = "satchel"
