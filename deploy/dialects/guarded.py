"""What every dialect's guarded session shares: each statement run by the suite itself, tried again
while the dialect says its lock wait timed out; and how another connection's open transaction is told."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.engine import Connection

from ..errors import DeployError

# executemany is left alone: a driver may run it row by row, so a retry could repeat rows that succeeded.
RETRIED_EVENTS = ("do_execute", "do_execute_no_params")
SHOWN_STATEMENT = 80
SECRET_STATEMENT = re.compile(r"\b(IDENTIFIED|PASSWORD)\b", re.IGNORECASE)


class GaveWay(DeployError):
    """A statement still blocked after its last try: the caller may add where the migration stopped."""


@dataclass(frozen=True)
class Transaction:
    """Another connection's open transaction; `statement` is None while it sits idle."""

    connection_id: int
    user: str | None
    host: str | None
    seconds: float
    statement: str | None

    def __str__(self) -> str:
        who = f"{self.user}@{self.host}" if self.user else "user unknown"
        doing = f"running `{shown(self.statement)}`" if self.statement else "idle"
        return f"connection {self.connection_id} ({who}, open {round(self.seconds)} s, {doing})"


def shown(statement: str) -> str:
    """A statement on one short line; one that may carry a password is not shown at all."""
    if SECRET_STATEMENT.search(statement):
        return "a statement that may hold a password"
    line = " ".join(statement.split())
    return line if len(line) <= SHOWN_STATEMENT else line[: SHOWN_STATEMENT - 3] + "..."


@contextmanager
def retrying(
    connection: Connection,
    blocked: Callable,
    blockers: Callable[[], str],
    seconds: float,
    retries: int,
    pause: float,
    around: Callable[[object, str], AbstractContextManager] = lambda cursor, statement: nullcontext(),
) -> Iterator[None]:
    """Run each statement ourselves (the do_execute events), trying again while `blocked(error)`;
    each try runs inside `around(cursor, statement)` (PostgreSQL's savepoint)."""
    engine, dialect = connection.engine, connection.dialect

    def retried(run):
        def execute(cursor, statement, *rest):
            for attempt in range(1, retries + 2):
                try:
                    with around(cursor, statement):
                        run(cursor, statement, *rest)
                    return True  # executed: SQLAlchemy must not run it again
                except dialect.loaded_dbapi.Error as exc:
                    if not blocked(exc):
                        raise
                    if attempt > retries:
                        tries = f"{attempt} tr{'ies' if attempt > 1 else 'y'}"
                        raise GaveWay(
                            f"`{shown(statement)}` gave way after {tries} of {seconds:g} s: {blockers()}"
                        ) from exc
                time.sleep(pause)

        return execute

    # The engine is this connection's own (NullPool, one per connect()): no other connection is touched.
    listeners = {name: retried(getattr(dialect, name)) for name in RETRIED_EVENTS}
    for name, listener in listeners.items():
        event.listen(engine, name, listener)
    try:
        yield
    finally:
        for name, listener in listeners.items():
            event.remove(engine, name, listener)


def what_blocks(read_transactions, grant: str, other_holders: str) -> str:
    """What a lock-wait timeout waited for: the open transactions `read_transactions()` finds, else
    which grant would show them (`grant`), else the other things that hold tables (`other_holders`)."""
    try:
        found = read_transactions()
    except DeployError:
        return f"grant the migration user {grant} to see what blocked it"
    except Exception as exc:  # the timeout is the news; not knowing its cause must not hide it
        return f"cannot tell what blocked it ({type(exc).__name__})"
    if not found:
        return f"no other transaction is open ({other_holders} may hold the table)"
    return f"blocked by {len(found)} open transaction{'s' * (len(found) > 1)}: {'; '.join(map(str, found))}"
