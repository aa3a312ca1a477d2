"""Developer tasks: ``nox`` runs tests, lint, typecheck and docs; ``nox -s bench`` on demand."""

from __future__ import annotations

from pathlib import Path

import nox

nox.needs_version = ">=2024.4"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
# Libraries the benchmarks compare against; never dependencies of the package.
BENCH_PEERS = [
    "tenacity",
    "stamina",
    "backoff",
    "huey",
    "procrastinate",
    "saq[postgres]",
    "aiojobs",
]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite; extra arguments go to pytest."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Run ruff (with the flake8-async rules) over the code."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "bench", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Run mypy --strict on src and tests/typing (configured in pyproject.toml)."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs; any Sphinx warning fails the build."""
    session.install("-e", ".", "sphinx>=7", "sphinxcontrib-trio>=1.1")
    session.run("sphinx-build", "-W", "-b", "html", "docs", "docs/_build/html", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmark scripts given as arguments, or every bench/*.py (not bench/_*.py)."""
    session.install("-e", ".[postgres]", *BENCH_PEERS)
    scripts = session.posargs or sorted(
        str(p.relative_to(ROOT)) for p in ROOT.glob("bench/*.py") if not p.name.startswith("_")
    )
    for script in scripts:
        session.log(f"--- {script}")
        session.run("python", script)
