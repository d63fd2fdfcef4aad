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
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
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
            lambda: what_blocks(
                lambda: server_transactions(dbapi_connection, 0),
                "PROCESS",
                "a long statement, LOCK TABLES or another DDL",
            ),
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


# -- PostgreSQL ---------------------------------------------------------------------------------------

PG_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired (or NOWAIT): nothing else raises it
RETRY_SAVEPOINT = "deploy_lock_retry"
# Transaction control runs bare: it waits for no lock, and a savepoint of ours around SQLAlchemy's own
# (begin_nested) would be released or rolled back with it.
TRANSACTION_CONTROL = re.compile(r"\s*(SAVEPOINT|RELEASE|ROLLBACK|COMMIT|BEGIN|START|END|ABORT|PREPARE)\b", re.I)
# Other sessions' transactions in this database. clock_timestamp(), not now(): now() is our own
# transaction's start. Another role's session shows its state, times, query and even backend_type only
# to a superuser or a member of pg_read_all_stats; to others these are NULL, and only its user, pid
# and database show (background workers have no user).
PG_TRANSACTIONS = """
    SELECT pid, usename, host(client_addr), client_port,
           EXTRACT(EPOCH FROM clock_timestamp() - xact_start), state, query
    FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND (backend_type = 'client backend' OR (backend_type IS NULL AND usename IS NOT NULL))
      AND (xact_start IS NOT NULL OR state IS NULL)
    ORDER BY xact_start
"""


def pg_code(error: BaseException) -> str | None:
    return getattr(error, "sqlstate", None)


@contextmanager
def pg_guard(connection: Connection, lock_wait_timeout: float, retries: int, pause: float) -> Iterator[None]:
    milliseconds = max(1, math.ceil(lock_wait_timeout * 1000))  # 0 would mean "wait forever"
    began = not connection.in_transaction()
    before = connection.exec_driver_sql("SELECT current_setting('lock_timeout')").scalar()
    connection.exec_driver_sql(f"SET lock_timeout = {milliseconds}")
    if began:
        # SET is transactional in PostgreSQL: committed now, so that a revision's rollback keeps it.
        connection.commit()
    dbapi_connection = connection.connection.dbapi_connection
    try:
        with retrying(
            connection,
            lambda error: pg_code(error) == PG_LOCK_NOT_AVAILABLE,
            lambda: what_blocks(
                lambda: pg_transactions(dbapi_connection, 0), "pg_read_all_stats", "a long statement or another DDL"
            ),
            milliseconds / 1000,
            retries,
            pause,
            pg_savepoint,
        ):
            yield
    finally:
        # Restored outside any transaction only: the caller's open one is not ours to commit or end
        # (every command closes this connection right after, its settings with it).
        if not connection.in_transaction():
            try:
                connection.exec_driver_sql("SELECT set_config('lock_timeout', %(before)s, false)", {"before": before})
                connection.commit()
            except SQLAlchemyError:
                pass  # the connection is broken: it is about to be closed, with its settings


@contextmanager
def pg_savepoint(cursor, statement: str) -> Iterator[None]:
    """One statement's try, undone alone when its lock wait timed out (see the module's docstring)."""
    from psycopg.pq import TransactionStatus

    dbapi_connection = cursor.connection
    # Autocommit (CREATE INDEX CONCURRENTLY in an autocommit_block): no transaction to keep alive.
    if dbapi_connection.autocommit or TRANSACTION_CONTROL.match(statement):
        yield
        return
    dbapi_connection.execute(f"SAVEPOINT {RETRY_SAVEPOINT}")  # opens the transaction if none is
    try:
        yield
    except Exception as exc:
        if pg_code(exc) == PG_LOCK_NOT_AVAILABLE:
            dbapi_connection.execute(f"ROLLBACK TO SAVEPOINT {RETRY_SAVEPOINT}")
            dbapi_connection.execute(f"RELEASE SAVEPOINT {RETRY_SAVEPOINT}")
        raise
    # A statement such as COMMIT may have ended the transaction, and the savepoint with it.
    if dbapi_connection.info.transaction_status == TransactionStatus.INTRANS:
        dbapi_connection.execute(f"RELEASE SAVEPOINT {RETRY_SAVEPOINT}")


def pg_transactions(dbapi_connection, older_than: float) -> list[Transaction]:
    """On the driver's connection, so that it can run while SQLAlchemy is executing a statement."""
    cursor = dbapi_connection.cursor()
    try:
        # Statistics are read once per transaction and kept: read them afresh.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(PG_TRANSACTIONS)
        rows = cursor.fetchall()
        if any(row[5] is None for row in rows):
            cursor.execute("SELECT current_user")
            user = cursor.fetchone()[0]
            raise DeployError(
                "reading open transactions needs the pg_read_all_stats role: grant it to the migration user "
                f'(GRANT pg_read_all_stats TO "{user}") or pass --ignore-transactions'
            )
    finally:
        cursor.close()
    found = []
    for pid, user, address, port, seconds, state, query in rows:
        if float(seconds) <= older_than:
            continue
        host = (f"[{address}]:{port}" if ":" in address else f"{address}:{port}") if address else "local"
        # Idle in a transaction, `query` is the last statement it ran, not one it is running.
        found.append(Transaction(pid, user, host, float(seconds), query if state == "active" else None))
    return found


def pg_open_transactions(connection: Connection, older_than: float) -> list[Transaction]:
    outside = not connection.in_transaction()
    dbapi_connection = connection.connection.dbapi_connection
    try:
        return pg_transactions(dbapi_connection, older_than)
    except connection.dialect.loaded_dbapi.Error as exc:
        raise DeployError(explain(exc, connection.engine.url)) from None
    finally:
        if outside:
            # The driver opened a transaction that SQLAlchemy does not know of: end it, as none was open.
            dbapi_connection.rollback()


GUARDS = {"mysql": server_guard, "mariadb": server_guard, "postgresql": pg_guard, "sqlite": file_guard}
READERS = {
    "mysql": server_open_transactions,
    "mariadb": server_open_transactions,
    "postgresql": pg_open_transactions,
    # One writer at a time, and no way to list the others: nothing to report.
    "sqlite": lambda connection, older_than: [],
}
