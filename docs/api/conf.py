"""Sphinx configuration for satchel's API reference, built from the docstrings."""

from __future__ import annotations

import satchel

project = "satchel"
author = "satchel developers"
release = satchel.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# satchel.stores re-exports Store, Change and Record from satchel.stores.base, so
# an annotation naming one has two equal targets; that is the only warning silenced.
suppress_warnings = ["ref.python"]
nitpicky = False
html_theme = "alabaster"
exclude_patterns = ["_build"]
