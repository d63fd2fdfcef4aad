"""Production safety: what stops or guards a command that changes a database.

refusals   checks that stop a command before it changes anything
lock       one migration at a time per database (the dialect says how: GET_LOCK, an advisory lock, a file lock)
timeouts   short lock waits with retries, and the open transactions that would block us
backups    verified dumps before production changes, and restore
lint       risky operations in pending revisions, read from Alembic's operation objects
diagnosis  what a revision that failed part way left, told from the run
cancel     stopping between revisions on Ctrl-C or a lost connection
runlog     the log of every run, shown by db.status; a half-applied revision blocks migrations until resolved
What differs by database kind is not here: each guard asks the database's dialect (deploy/dialects).
"""

from .refusals import (
    check_expected_head,
    check_on_this_machine,
    check_resettable,
    check_single_head,
    check_stamped,
    confirm,
    confirm_database,
)

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
]
