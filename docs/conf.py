"""Sphinx configuration for the trio_jobs docs (built with ``-W``: warnings fail)."""

from __future__ import annotations

import sys
from pathlib import Path

# Document the source tree even when the package is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import trio_jobs

project = "trio_jobs"
author = "The trio_jobs developers"
copyright = "the trio_jobs developers"
release = trio_jobs.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    # Renders ``async def``, ``async with`` and decorators in signatures.
    "sphinxcontrib_trio",
]
# No intersphinx: the build must work with no network.

exclude_patterns = ["_build"]
root_doc = "index"

autodoc_member_order = "bysource"
# Type hints in the signatures, short names (no module paths).
autodoc_typehints = "signature"
autodoc_typehints_format = "short"

# Every cross-reference must resolve (with -W, a broken one fails the build), except
# names of other projects: without intersphinx they cannot link anywhere.
nitpicky = True
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(collections\.abc|contextlib|datetime|functools|logging|os|psycopg|pytest|random"
        r"|typing|trio|starlette|prometheus_client|hypercorn|jinja2)(\..*)?",
    ),
    # Type variables and private helpers named in signatures and docstrings.
    (r"py:class", r"(trio_jobs\._\w+\.)?(H|P|R|T|PosArgsT|HandleOwner|_RetryOverrides)"),
    (r"py:(meth|data)", r"_notify_quietly|CHANGE_POLL"),
]

napoleon_google_docstring = True
napoleon_numpy_docstring = False
# attrs classes list their fields under "Attributes:"; as :ivar: entries they do not
# clash with the attribute entries autodoc generates for the same names.
napoleon_use_ivar = True

html_theme = "alabaster"
html_title = f"trio_jobs {release}"
