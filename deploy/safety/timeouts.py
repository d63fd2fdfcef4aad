"""The application never stalls behind a migration.

A migration's statement that waits for a lock holds up every application query queued behind it
(MariaDB queues a table's readers behind a waiting ALTER). So the migration waits briefly, gives way,
pauses to let the application through, and tries again; at the end it names what blocked it.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from .. import safety
from ..credentials import describe
from ..database import explain
from ..errors import DeployError

DEFAULT_LOCK_WAIT_TIMEOUT = 2.0
DEFAULT_RETRIES = 5
DEFAULT_PAUSE = 3.0
DEFAULT_OLDER_THAN = 10.0

LOCK_WAIT_TIMEOUT = 1205  # MariaDB raises it for metadata-lock (DDL) and InnoDB row-lock waits alike
NEEDS_PROCESS = 1227
SQLITE_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
# executemany is left alone: a driver may run it row by row, so a retry could repeat rows that succeeded.
RETRIED_EVENTS = ("do_execute", "do_execute_no_params")
SHOWN_STATEMENT = 80
SECRET_STATEMENT = re.compile(r"\b(IDENTIFIED|PASSWORD)\b", re.IGNORECASE)
TRANSACTIONS = """
    SELECT t.trx_mysql_thread_id, p.USER, p.HOST,
           TIMESTAMPDIFF(MICROSECOND, t.trx_started, NOW(6)) / 1000000, COALESCE(p.INFO, t.trx_query)
    FROM information_schema.INNODB_TRX AS t
    LEFT JOIN information_schema.PROCESSLIST AS p ON p.ID = t.trx_mysql_thread_id
    WHERE t.trx_mysql_thread_id <> CONNECTION_ID()
    ORDER BY t.trx_started
"""


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
def guard_session(
    connection: Connection,
    lock_wait_timeout: float = DEFAULT_LOCK_WAIT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    pause: float = DEFAULT_PAUSE,
) -> Iterator[Connection]:
    """Within the block, each statement waits at most `lock_wait_timeout` s for a lock, then pauses
    `pause` s and tries again, `retries` times, before GaveWay (a DeployError) names what blocked it."""
    guard = safety.for_dialect(GUARDS, connection.engine.url, "the lock-wait guard")
    with guard(connection, lock_wait_timeout, retries, pause):
        yield connection


def open_transactions(connection: Connection, older_than: float = DEFAULT_OLDER_THAN) -> list[Transaction]:
    """Other connections' transactions open longer than `older_than` s, oldest first."""
    reader = safety.for_dialect(READERS, connection.engine.url, "reading open transactions")
    return reader(connection, older_than)


def check_no_open_transactions(connection: Connection, older_than: float = DEFAULT_OLDER_THAN) -> None:
    """Refuse to start while another transaction is old enough to block the migration's first ALTER."""
    found = open_transactions(connection, older_than)
    if found:
        several = len(found) > 1
        raise DeployError(
            f"{len(found)} transaction{'s' * several} open longer than {older_than:g} s: "
            f"{'; '.join(map(str, found))}; refusing: end {'them' if several else 'it'} or pass --ignore-transactions"
        )


@contextmanager
def retrying(
    connection: Connection, blocked: Callable, blockers: Callable[[], str], seconds: float, retries: int, pause: float
) -> Iterator[None]:
    """Run each statement ourselves (the do_execute events), trying again while `blocked(error)`."""
    engine, dialect = connection.engine, connection.dialect

    def retried(run):
        def execute(cursor, statement, *rest):
            for attempt in range(1, retries + 2):
                try:
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


def server_code(error: BaseException) -> int | None:
    code = error.args[0] if error.args else None
    return code if isinstance(code, int) else None


@contextmanager
def server_guard(connection: Connection, lock_wait_timeout: float, retries: int, pause: float) -> Iterator[None]:
    # Whole seconds only (a fraction is refused), and 0 would mean "never wait" rather than "briefly".
    seconds = max(1, math.ceil(lock_wait_timeout))
    before = connection.exec_driver_sql(
        "SELECT @@session.lock_wait_timeout, @@session.innodb_lock_wait_timeout, @@innodb_rollback_on_timeout"
    ).one()
    if before[2]:
        # The server rolls the whole transaction back on a row-lock timeout: retrying the one statement
        # would run the rest of a migration without its first half.
        retries = 0
    connection.exec_driver_sql(f"SET SESSION lock_wait_timeout = {seconds}, innodb_lock_wait_timeout = {seconds}")
    dbapi_connection = connection.connection.dbapi_connection
    try:
        with retrying(
            connection,
            lambda error: server_code(error) == LOCK_WAIT_TIMEOUT,
            lambda: what_blocks(dbapi_connection),
            seconds,
            retries,
            pause,
        ):
            yield
    finally:
        try:
            connection.exec_driver_sql(
                f"SET SESSION lock_wait_timeout = {int(before[0])}, innodb_lock_wait_timeout = {int(before[1])}"
            )
        except SQLAlchemyError:
            pass  # the connection is broken or failed: it is about to be closed, with its settings


def what_blocks(dbapi_connection) -> str:
    try:
        found = server_transactions(dbapi_connection, 0)
    except DeployError:
        return "grant the migration user PROCESS to see what blocked it"
    except Exception as exc:  # the timeout is the news; not knowing its cause must not hide it
        return f"cannot tell what blocked it ({type(exc).__name__})"
    if not found:
        return "no other transaction is open (a long statement, LOCK TABLES or another DDL may hold the table)"
    return f"blocked by {len(found)} open transaction{'s' * (len(found) > 1)}: {'; '.join(map(str, found))}"


def server_transactions(dbapi_connection, older_than: float) -> list[Transaction]:
    """On the driver's connection, so that it can run while SQLAlchemy is executing a statement."""
    cursor = dbapi_connection.cursor()
    try:
        try:
            cursor.execute(TRANSACTIONS)
        except Exception as exc:
            if server_code(exc) != NEEDS_PROCESS:
                raise
            cursor.execute("SELECT CURRENT_USER()")
            user, _, host = cursor.fetchone()[0].rpartition("@")
            raise DeployError(
                "reading open transactions needs the PROCESS privilege: grant it to the migration user "
                f"(GRANT PROCESS ON *.* TO '{user}'@'{host}') or pass --ignore-transactions"
            ) from None
        rows = cursor.fetchall()
    finally:
        cursor.close()
    return [Transaction(row[0], row[1], row[2], float(row[3]), row[4]) for row in rows if float(row[3]) > older_than]


def server_open_transactions(connection: Connection, older_than: float) -> list[Transaction]:
    try:
        return server_transactions(connection.connection.dbapi_connection, older_than)
    except connection.dialect.loaded_dbapi.Error as exc:
        raise DeployError(explain(exc, connection.engine.url)) from None


@contextmanager
def file_guard(connection: Connection, lock_wait_timeout: float, retries: int, pause: float) -> Iterator[None]:
    before = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
    connection.exec_driver_sql(f"PRAGMA busy_timeout = {math.ceil(lock_wait_timeout * 1000)}")
    where = describe(connection.engine.url)
    try:
        with retrying(
            connection,
            lambda error: getattr(error, "sqlite_errorcode", 0) & 0xFF in SQLITE_BUSY_CODES,
            lambda: f"another connection holds the lock on {where} (SQLite cannot tell which)",
            lock_wait_timeout,
            retries,
            pause,
        ):
            yield
    finally:
        try:
            connection.exec_driver_sql(f"PRAGMA busy_timeout = {int(before)}")
        except SQLAlchemyError:
            pass  # as on a server: a broken connection is about to be closed


GUARDS = {"mysql": server_guard, "mariadb": server_guard, "sqlite": file_guard}
READERS = {
    "mysql": server_open_transactions,
    "mariadb": server_open_transactions,
    # One writer at a time, and no way to list the others: nothing to report.
    "sqlite": lambda connection, older_than: [],
}
