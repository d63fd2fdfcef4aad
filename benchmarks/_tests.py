"""The tests' helpers, imported (not copied): throwaway servers (tests/servers.py) and the set-up of
checkouts, databases and fab (tests/helpers.py). They import each other as top-level modules."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from helpers import COPY_IGNORE, PASSWORD, REPO, Checkout, Remote, make_database  # noqa: E402
from servers import MariaDB, PostgreSQL, SSHServer  # noqa: E402

__all__ = [
    "COPY_IGNORE",
    "PASSWORD",
    "REPO",
    "Checkout",
    "MariaDB",
    "PostgreSQL",
    "Remote",
    "SSHServer",
    "make_database",
]
