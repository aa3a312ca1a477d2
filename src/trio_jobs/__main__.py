"""``python -m trio_jobs``: the ``trio-jobs`` command (see :mod:`trio_jobs.cli`)."""

from __future__ import annotations

import sys

from .cli import main as main

if __name__ == "__main__":
    sys.exit(main())
