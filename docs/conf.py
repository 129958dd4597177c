"""Sphinx configuration of the attnflow documentation site (``make docs``).

The site: getting started, the user guide (Markdown pages of ``docs/``, MyST), the architecture
page, an API reference generated from the numpydoc docstrings (``docs/api/``, written at build
time by ``docs/_ext/attnflow_docs.py``) and a gallery with one page per ``demos/demo_*.py``
(``docs/demos/``, written at build time after running each demo with ``--small``). The build
runs with warnings as errors (``sphinx-build -W --keep-going``).
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))

import attnflow  # noqa: E402  (the version comes from the package: one source)

project = "attnflow"
author = "The attnflow developers"
copyright = "2026, The attnflow developers"
release = attnflow.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "attnflow_docs",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "**/.ipynb_checkpoints"]
templates_path: list[str] = []

# -- MyST --------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# -- autodoc (numpydoc docstrings, rendered by attnflow_docs.numpy_sections_to_rst) ---------
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = False
python_use_unqualified_type_names = True

# Demo pages are Markdown cells of scripts: a heading may skip a level there.
suppress_warnings = ["myst.header"]

# -- HTML --------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"attnflow {release}"
html_static_path: list[str] = []
html_last_updated_fmt = None
html_show_sourcelink = False
# No sphinx.ext.viewcode: it links each module's source page to one documented name per module,
# and the API documents a package's names under the package and the rest under the submodule.
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_depth": 3,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
