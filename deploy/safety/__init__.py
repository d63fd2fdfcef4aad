"""Production safety: what stops or guards a command that changes a database.

refusals   checks that stop a command before it changes anything
lock       one migration at a time per database (GET_LOCK; a file lock beside SQLite)
timeouts   short lock waits with retries, and the open transactions that would block us
backups    verified dumps before production changes, and restore
lint       risky operations in pending revisions, read from Alembic's operation objects
diagnosis  what a revision that failed part way left, told from the run
cancel     stopping between revisions on Ctrl-C or a lost connection
runlog     the log of every run, shown by db.status; a half-applied revision blocks migrations until resolved
Each guard that differs by database kind keeps one implementation per kind, in a table keyed by
SQLAlchemy's backend name ("mysql" for MariaDB/MySQL, "sqlite", ...), chosen by `for_dialect`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import DeployError
from .refusals import (
    check_expected_head,
    check_on_this_machine,
    check_resettable,
    check_single_head,
    check_stamped,
    confirm,
    confirm_database,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

FROM_DATABASE = "the backup is of database NAME, not this one: replace this one with it all the same"

__all__ = [
    "FROM_DATABASE",
    "check_expected_head",
    "check_on_this_machine",
    "check_resettable",
    "check_single_head",
    "check_stamped",
    "confirm",
    "confirm_database",
    "for_dialect",
]


def for_dialect(implementations: dict, url: URL, what: str):
    """The one place a guard's implementation is chosen by the database's kind."""
    backend = url.get_backend_name()
    if backend not in implementations:
        raise DeployError(f"{what} is not supported on {backend} databases (supported: {', '.join(implementations)})")
    return implementations[backend]
