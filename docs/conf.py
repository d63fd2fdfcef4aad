"""Sphinx configuration: MyST Markdown pages, one local extension, no network."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The project's root, for `deploy` (the command reference loads its tasks), and the local extension.
sys.path[:0] = [str(HERE.parent), str(HERE / "_ext")]

project = "flask-schema-deploy"
author = "the flask-schema-deploy authors"
copyright = "the flask-schema-deploy authors"
language = "en"

extensions = ["myst_parser", "task_reference"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
# Links such as [Fleets](production.md#fleets-several-hosts-several-databases) resolve to headings.
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = "flask-schema-deploy"
html_theme_options = {"description": "Flask schema migrations without fear", "fixed_sidebar": True}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
