"""The application never stalls behind a migration.

A migration's statement that waits for a lock holds up every application query queued behind it
(MariaDB queues a table's readers behind a waiting ALTER, and so does PostgreSQL). So the migration
waits briefly, gives way, pauses to let the application through, and tries again; at the end it names
what blocked it.

PostgreSQL aborts the whole transaction on any error, a lock timeout included, and each revision runs
in one transaction: a statement retried after its timeout would only meet "current transaction is
aborted". So there each statement runs inside a SAVEPOINT; on a lock timeout (SQLSTATE 55P03) it rolls
back to it, which undoes that one statement and keeps the revision's transaction (and its earlier
statements) alive, and the statement is tried again. Any other error is left as it was, aborting the
transaction, and the revision is rolled back whole.

Each dialect keeps its guard and its reader of open transactions (deploy/dialects); this module asks it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection

from ..dialects import dialect_for
from ..dialects.guarded import GaveWay, Transaction, shown
from ..errors import DeployError
from ..switches import setting

__all__ = ["GaveWay", "Transaction", "check_no_open_transactions", "guard_session", "open_transactions", "shown"]

# Declared with the other guard settings (deploy.switches), which Invoke's config may override.
DEFAULT_LOCK_WAIT_TIMEOUT = setting("lock_wait_timeout").default
DEFAULT_RETRIES = setting("retries").default
DEFAULT_PAUSE = setting("retry_pause").default
DEFAULT_OLDER_THAN = setting("open_transactions_after").default


@contextmanager
def guard_session(
    connection: Connection,
    lock_wait_timeout: float = DEFAULT_LOCK_WAIT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    pause: float = DEFAULT_PAUSE,
) -> Iterator[Connection]:
    """Within the block, each statement waits at most `lock_wait_timeout` s for a lock, then pauses
    `pause` s and tries again, `retries` times, before GaveWay (a DeployError) names what blocked it."""
    guard = dialect_for(connection, "the lock-wait guard").guard
    with guard(connection, lock_wait_timeout, retries, pause):
        yield connection


def open_transactions(connection: Connection, older_than: float = DEFAULT_OLDER_THAN) -> list[Transaction]:
    """Other connections' transactions open longer than `older_than` s, oldest first."""
    return dialect_for(connection, "reading open transactions").open_transactions(connection, older_than)


def check_no_open_transactions(connection: Connection, older_than: float = DEFAULT_OLDER_THAN) -> None:
    """Refuse to start while another transaction is old enough to block the migration's first ALTER."""
    found = open_transactions(connection, older_than)
    if found:
        several = len(found) > 1
        raise DeployError(
            f"{len(found)} transaction{'s' * several} open longer than {older_than:g} s: "
            f"{'; '.join(map(str, found))}; refusing: end {'them' if several else 'it'} or pass --ignore-transactions"
        )
