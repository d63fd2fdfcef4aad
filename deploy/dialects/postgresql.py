"""PostgreSQL (SQLAlchemy's "postgresql" dialect; psycopg in production)."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import math
import os
import re
import select
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic.operations import ops
from sqlalchemy import event, func, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..errors import DeployError, own, relayed, remember
from .base import LOCK_NAME_PREFIX, POLL, Alteration, Dialect, Tool, TooSlow, busy, describe, explain, merged, said
from .guarded import Transaction, retrying, what_blocks

# PostgreSQL SQLSTATE codes (psycopg errors carry them as `.sqlstate`).
PG_ACCESS_DENIED = {"28P01", "28000"}  # wrong password / no pg_hba.conf entry for this user
PG_UNKNOWN_DATABASE = "3D000"
PG_PRIVILEGE_MISSING = "42501"
PG_CANNOT_CONNECT = {"08000", "08001", "08003", "08004", "08006", "57P01", "57P02", "57P03"}
# libpq gives no SQLSTATE for a failure while connecting, only the server's or its own message:
# these are matched in it (the server's are English unless its lc_messages says otherwise).
PG_CONNECT_MESSAGES = (
    ("password authentication failed", "28P01"),
    ("no password supplied", "28P01"),
    ("no pg_hba.conf entry", "28000"),
    ('role "', "28000"),  # role "x" does not exist
    ("permission denied for database", "42501"),
    ('database "', "3D000"),  # database "x" does not exist
    ("could not connect", "08001"),
    ("connection refused", "08001"),
    ("could not translate host name", "08001"),
    ("timeout expired", "08001"),
    ("server closed the connection unexpectedly", "08006"),
)


def _sqlstate(orig: BaseException) -> str | None:
    """A PostgreSQL failure's SQLSTATE: from the error; for one while connecting, from its English
    message, else (a server whose lc_messages is another language) from the connection tried again."""
    if getattr(orig, "sqlstate", None):
        return orig.sqlstate
    message = str(orig).lower()
    known = next((code for fragment, code in PG_CONNECT_MESSAGES if fragment in message), None)
    return known or _connect_sqlstate(orig)


def _while_connecting(orig: BaseException) -> bool:
    """Whether psycopg failed to open the connection (its own wording), rather than in a statement."""
    return not getattr(orig, "sqlstate", None) and str(orig).startswith(("connection failed:", "connection is bad:"))


# PQconnectPoll's answers, and PQERRORS_VERBOSE (libpq-fe.h: stable since PostgreSQL 7.4).
_POLL_FAILED, _POLL_READING, _POLL_WRITING, _POLL_OK = 0, 1, 2, 3
_CONNECTION_BAD = 1
_ERRORS_VERBOSE = 2
_SQLSTATE_IN_MESSAGE = re.compile(r":  ([0-9A-Z]{5}): ")


def _libpq():
    """libpq through ctypes: the copy psycopg's binary package carries, else the system's; or None."""
    candidates: list[str] = []
    try:
        import psycopg_binary

        candidates += sorted(
            str(path) for path in Path(psycopg_binary.__file__).parent.parent.glob("psycopg_binary.libs/libpq*.so*")
        )
    except ImportError:
        pass
    candidates += [name for name in (ctypes.util.find_library("pq"),) if name]
    for candidate in candidates:
        try:
            library = ctypes.CDLL(candidate)
        except OSError:
            continue
        library.PQconnectStart.restype = ctypes.c_void_p
        library.PQconnectStart.argtypes = [ctypes.c_char_p]
        for name in ("PQconnectPoll", "PQstatus", "PQsocket"):
            getattr(library, name).argtypes = [ctypes.c_void_p]
        library.PQsetErrorVerbosity.argtypes = [ctypes.c_void_p, ctypes.c_int]
        library.PQerrorMessage.restype = ctypes.c_char_p
        library.PQerrorMessage.argtypes = [ctypes.c_void_p]
        library.PQfinish.argtypes = [ctypes.c_void_p]
        return library
    return None


def _connect_sqlstate(orig: BaseException, timeout: float = 10) -> str | None:
    """The SQLSTATE of a failed psycopg connection, read by trying the same connection once more.

    psycopg keeps no SQLSTATE for a failure while connecting (no result, and its libpq's error
    verbosity cannot be set), and the server words it in its own lc_messages. libpq does put the
    code in the message when its verbosity is VERBOSE, which must be set between PQconnectStart and
    the server's answer: so the connection is started again, with the very parameters psycopg used
    (they stay on the failed connection: host, port, user, password, TLS settings...), through
    libpq's C API. The parameters, password included, go only to libpq; the message read is used
    for its code alone."""
    pgconn = getattr(orig, "pgconn", None)
    if pgconn is None or not _while_connecting(orig):
        return None
    try:
        from psycopg.conninfo import make_conninfo

        params = {option.keyword.decode(): option.val.decode() for option in pgconn.info if option.val is not None}
        library = _libpq()
    except Exception:  # no libpq to ask, or a finished connection without its parameters
        return None
    if library is None:
        return None
    conn = library.PQconnectStart(make_conninfo(**params).encode())
    if not conn:
        return None
    try:
        library.PQsetErrorVerbosity(conn, _ERRORS_VERBOSE)
        deadline = time.monotonic() + timeout
        while library.PQstatus(conn) != _CONNECTION_BAD:
            polled = library.PQconnectPoll(conn)
            if polled == _POLL_OK:
                return None  # it works now: nothing to tell
            if polled == _POLL_FAILED:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock = library.PQsocket(conn)
            wanted = ([sock], []) if polled == _POLL_READING else ([], [sock])
            select.select(*wanted, [], left)
        found = _SQLSTATE_IN_MESSAGE.search((library.PQerrorMessage(conn) or b"").decode(errors="replace"))
        return found.group(1) if found else None
    finally:
        library.PQfinish(conn)


def _pg_detail(orig: BaseException) -> str:
    """The server's own words, on one line: after libpq's "connection to server ... failed: FATAL:"
    (the severity word is the server's lc_messages' too: "FATAL", "ВАЖНО"...)."""
    line = (str(orig).splitlines() or [type(orig).__name__])[0]
    if "FATAL:" in line:
        return relayed(line.rpartition("FATAL:")[2].strip())
    server_said = re.search(r" failed: [^\s:]+:  (.*)", line)
    return relayed(server_said.group(1).strip() if server_said else line)


def advisory_key(database: str) -> int:
    """A signed 64-bit advisory-lock key for the database's name. Advisory locks are per database
    already; the name's hash keeps the key stable across runs and machines."""
    digest = hashlib.sha256((LOCK_NAME_PREFIX + database).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# pg_locks shows a bigint advisory key as two oids (classid: high half, objid: low half), objsubid 1.
# What another role's session shows beyond its user needs pg_read_all_stats (else NULL): then less is said.
ADVISORY_HOLDER = """
    SELECT a.pid, a.usename, host(a.client_addr), a.client_port,
           EXTRACT(EPOCH FROM clock_timestamp() - a.state_change)
    FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.classid = CAST(:classid AS oid) AND l.objid = CAST(:objid AS oid)
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


# Indexes a concurrent build left invalid, in the connection's own schema.
UNFINISHED_INDEXES = (
    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid AND n.nspname = current_schema()"
)


def advisory_lock(url: URL, session, wait: float):
    # A session lock: no transaction stays open while it is held (it would block VACUUM and show up
    # as an open transaction), and it lasts until released or the session ends.
    key = advisory_key(url.database or "")

    def acquire(connection) -> None:
        # The server's idle_session_timeout (14+) would end the idle session, and the lock with it.
        if connection.dialect.server_version_info >= (14,):
            connection.exec_driver_sql("SET idle_session_timeout = 0")
        deadline = time.monotonic() + wait
        while not connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise busy(url, wait, advisory_holder(connection, key))
            time.sleep(min(POLL, remaining))

    def release(connection) -> None:
        connection.scalar(text("SELECT pg_advisory_unlock(:key)"), {"key": key})

    return session(acquire, release)


def advisory_holder(connection, key: int) -> str:
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    row = connection.execute(
        text(ADVISORY_HOLDER), {"classid": unsigned >> 32, "objid": unsigned & 0xFFFF_FFFF}
    ).first()
    if row is None:
        return "it was released just now"
    pid, user, address, port, seconds = row
    if seconds is None:
        return f"backend pid {pid}, {user} (its address and time are visible only with pg_read_all_stats)"
    where = (f"[{address}]:{port}" if ":" in address else f"{address}:{port}") if address else "a Unix socket"
    # The lock is the last thing its session did, so the time since its last change is the time held.
    return f"backend pid {pid}, {user}@{where}, for {round(seconds)} s"


# The guarded session: see deploy/safety/timeouts.py for why each statement runs in a savepoint.
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


PG_QUERY_CANCELED = "57014"  # statement_timeout reached (or a cancel request)


@contextmanager
def pg_bounded(connection: Connection, seconds: float) -> Iterator[None]:
    """SET LOCAL statement_timeout, in a read-only transaction of its own, rolled back at the end."""
    if connection.in_transaction():
        connection.rollback()
    try:
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        if seconds > 0:
            connection.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, math.ceil(seconds * 1000))}")
        try:
            yield
        except DBAPIError as exc:
            if pg_code(exc.orig) == PG_QUERY_CANCELED:
                raise TooSlow(f"over {seconds:g} s") from None
            raise
    finally:
        connection.rollback()


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


# What each operation does to a table that holds rows, in the form the suite runs it (pg_alteration), and
# what the lint says of what still blocks the application (lint_risks): one table of facts for both.
PG_REWRITE = "PostgreSQL rewrites the table under an ACCESS EXCLUSIVE lock, blocking reads and writes until done"
PG_VALIDATE = "PostgreSQL blocks writes while it checks every row: name it, and it is added NOT VALID, then validated"
PG_AFTER_CHANGES = (
    "PostgreSQL blocks writes while it runs: after other changes of its revision it runs in their transaction, "
    "not online; give it a revision of its own, or put it first"
)
CATALOG = Alteration("catalog only", "reads and writes", False)  # a moment's ACCESS EXCLUSIVE lock
REWRITE = Alteration("rewrite", "reads and writes", True)
CONCURRENTLY = "CONCURRENTLY"
NOT_VALID = "NOT VALID, then VALIDATE"
NOT_NULL_BY_CHECK = "a CHECK (column IS NOT NULL) NOT VALID, then VALIDATE, then SET NOT NULL"
# The versions that made each form possible: a column's constant default kept in the catalog (11),
# SET NOT NULL that trusts a validated CHECK instead of scanning (12).
FAST_DEFAULT, NOT_NULL_TRUSTS_CHECK = (11,), (12,)
# Defaults evaluated once per row, which a new column's rows must each get: the table is rewritten.
VOLATILE_DEFAULT = re.compile(
    r"\b(random|clock_timestamp|timeofday|gen_random_uuid|uuid_generate_v\w*|nextval)\s*\(", re.IGNORECASE
)
# How much each answer costs, for the one an operation of several changes is told by.
WEIGHT = {"catalog only": 0, "validation scan": 1, "index build": 1, "rewrite": 2}


def _pg_keeps_rows(old, new) -> bool:
    """Whether PostgreSQL changes the type without rewriting the table: a string type made no shorter
    (VARCHAR(n) to VARCHAR(m >= n), or to TEXT / unbounded VARCHAR), same collation; a NUMERIC given more
    digits at the same scale."""
    if old is None:
        return False
    if all(type_.__visit_name__ == "numeric" for type_ in (old, new)):
        return (
            old.scale == new.scale
            and old.precision is not None
            and (new.precision is None or new.precision >= old.precision)
        )
    strings = {"string", "VARCHAR", "unicode", "NVARCHAR", "text", "TEXT", "unicode_text"}
    if not all(type_.__visit_name__ in strings for type_ in (old, new)):
        return False
    if getattr(old, "collation", None) != getattr(new, "collation", None):
        return False
    old_length, new_length = getattr(old, "length", None), getattr(new, "length", None)
    if new_length is None:
        return True
    return old_length is not None and new_length >= old_length and old.__visit_name__ not in ("text", "TEXT")


def _changes_type(operation: ops.AlterColumnOp) -> bool:
    new, old = operation.modify_type, operation.existing_type
    return new is not None and (old is None or repr(old) != repr(new))


def _sets_not_null(operation: ops.AlterColumnOp) -> bool:
    return operation.modify_nullable is False and operation.existing_nullable is not False


def _new_column(column, version: tuple) -> Alteration:
    """ADD COLUMN: kept in the catalog, unless each existing row needs a value of its own."""
    default = column.server_default
    default_text = str(getattr(default, "arg", "")) if default is not None else ""
    if (
        column.primary_key
        or column.identity is not None
        or column.computed is not None
        or (default is not None and (version < FAST_DEFAULT or VOLATILE_DEFAULT.search(default_text)))
    ):
        return REWRITE
    return CATALOG


def _column_change(operation: ops.AlterColumnOp, version: tuple) -> Alteration:
    """ALTER COLUMN: the costliest of what it changes (a type, NOT NULL, a default, a name)."""
    found = [CATALOG]
    if _changes_type(operation) and (
        operation.kw.get("postgresql_using") or not _pg_keeps_rows(operation.existing_type, operation.modify_type)
    ):
        found.append(REWRITE)
    if _sets_not_null(operation):
        if version >= NOT_NULL_TRUSTS_CHECK:
            found.append(Alteration("validation scan", "nothing", True, NOT_NULL_BY_CHECK))
        else:
            found.append(Alteration("validation scan", "reads and writes", True))
    return max(found, key=lambda alteration: WEIGHT[alteration.how])


def pg_alteration(operation, version: tuple = NOT_NULL_TRUSTS_CHECK) -> Alteration | None:
    """What `operation` does to its existing table on a PostgreSQL server of `version`, as online() runs it
    (see PostgreSQL's manual, ALTER TABLE and CREATE INDEX, "Notes")."""
    match operation:
        case ops.CreateIndexOp() if operation.kw.get("postgresql_concurrently"):
            return Alteration("index build", "nothing", True)
        case ops.CreateIndexOp():
            return Alteration("index build", "nothing", True, CONCURRENTLY)
        case ops.CreateForeignKeyOp() | ops.CreateCheckConstraintOp() if operation.kw.get("postgresql_not_valid"):
            return Alteration("catalog only", "writes", False)  # the author validates it later
        case ops.CreateForeignKeyOp() | ops.CreateCheckConstraintOp() if operation.constraint_name:
            # SHARE UPDATE EXCLUSIVE while VALIDATE scans: reads and writes go on.
            return Alteration("validation scan", "nothing", True, NOT_VALID)
        case ops.CreateForeignKeyOp() | ops.CreateCheckConstraintOp():
            return Alteration("validation scan", "writes", True)  # unnamed: there is no name to validate
        case ops.CreateUniqueConstraintOp():
            return Alteration("index build", "writes", True)
        case ops.CreatePrimaryKeyOp():
            return Alteration("index build", "reads and writes", True)
        case ops.AddColumnOp():
            return _new_column(operation.column, version)
        case ops.AlterColumnOp():
            return _column_change(operation, version)
        case ops.DropColumnOp() | ops.DropIndexOp() | ops.DropConstraintOp() | ops.DropTableOp() | ops.RenameTableOp():
            return CATALOG
    return None  # a new table, raw SQL, rows: no existing table's structure changes, or it cannot be told


def lint_risks(operation, named: str):
    """What still blocks the application while PostgreSQL runs the operation on a table that holds rows,
    once online() has put it in its least-locking form: what the suite cannot do for the author."""
    alteration = pg_alteration(operation)
    if alteration is None or alteration.online is not None or alteration.blocks == "nothing":
        return
    match operation:
        case ops.AlterColumnOp() if alteration.how == "rewrite":
            yield f"{named} type", PG_REWRITE
        case ops.AddColumnOp() if alteration.how == "rewrite":
            yield named, PG_REWRITE
        case ops.CreateForeignKeyOp() | ops.CreateCheckConstraintOp() if alteration.per_row:
            yield named, PG_VALIDATE


def pg_in_revision(operations: list) -> dict[int, str]:
    """The operations whose least-locking form would leave the revision's transaction (a concurrent build,
    a validation apart) but come after another change of the revision: they run in its transaction, in the
    plain form (OnlineForms.may_leave), so that a failure still rolls the revision back whole."""
    found, changed, created = {}, False, set()
    for position, operation in enumerate(operations):
        if isinstance(operation, ops.CreateTableOp):
            created.add((operation.table_name, operation.schema))
        table = (
            (operation.source_table, operation.kw.get("source_schema"))
            if isinstance(operation, ops.CreateForeignKeyOp)
            else (getattr(operation, "table_name", None), getattr(operation, "schema", None))
        )
        if isinstance(operation, ops.CreateIndexOp) and operation.kw.get("postgresql_concurrently"):
            continue  # the author's own, in an autocommit_block(): out of the transaction already
        alteration = pg_alteration(operation)
        if alteration is None or alteration.online is None or table in created:
            changed = True
        elif changed:
            found[position] = PG_AFTER_CHANGES
    return found


def rewrite_refusal(dialect: PostgreSQL, connection: Connection, operation, guards) -> str | None:
    """Why a pending operation will not run: PostgreSQL must rewrite a table, which no online form avoids,
    the table is bigger than db.safety.copy_in_place_rows, and --allow-rewrite was not given."""
    alteration = dialect.alteration(connection, operation)
    if guards.allow_rewrite or alteration is None or alteration.how != REWRITE.how:
        return None
    table, schema = operation.table_name, operation.schema
    found = dialect.table_size(connection, table, schema)
    if found is None:
        return None  # not there yet: made by a pending revision, and empty
    rows, size = found
    if rows <= guards.copy_in_place_rows:
        return None  # small enough that the rewrite is over in a moment
    instead = (
        "add the column without its default, then backfill it"
        if isinstance(operation, ops.AddColumnOp)
        else "add a new column and backfill it"
    )
    return (
        f"PostgreSQL rewrites {table} ({rows:,} rows, {math.ceil(size / 1_000_000)} MB), its reads and writes "
        f"blocked throughout: {instead}, or pass --allow-rewrite"
    )


# -- The least-locking forms, applied to each revision's statements as they run (PostgreSQL.online) --------
#
# A revision's statements are rewritten on their way to the server (before_cursor_execute), on a table the
# revision did not create itself (one it did is empty, and the plain forms run in its transaction):
# - CREATE INDEX runs CONCURRENTLY outside the transaction, as Alembic's autocommit_block() runs it; an
#   invalid index of the same name, left by a build that failed or was cancelled, is dropped first;
# - a named FOREIGN KEY or CHECK is added NOT VALID and committed, then validated in a step of its own,
#   which lets reads and writes go on;
# - SET NOT NULL (PostgreSQL 12 on) is preceded by a CHECK (column IS NOT NULL) added NOT VALID and
#   validated, so that it trusts the check instead of scanning; the check is dropped after.
# Each leaves the revision's transaction only when nothing of the revision is in it yet (no transaction id
# assigned): committing the rest early would break the promise that a revision that fails is rolled back
# whole. After an earlier change of the same revision, the plain form runs in the transaction (the lint
# says so). When the revision fails after a form committed, what the form made is dropped again, so that
# the database is exactly as before the revision.
# The long steps (the build, the validation) wait on no lock that stops the application, so they run
# without lock_timeout; the short ones keep the guard's lock wait and its retries.
_NAME = r'(?:"(?:[^"]|"")+"|[^\s"(),.;]+)'
_QUALIFIED = rf"(?:{_NAME}\.)?{_NAME}"
CREATE_TABLE = re.compile(
    rf"\s*CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<table>{_QUALIFIED})", re.I
)
CREATE_INDEX = re.compile(
    rf"(?P<head>\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+)(?P<concurrently>CONCURRENTLY\s+)?(?P<exists>IF\s+NOT\s+EXISTS\s+)?"
    rf"(?P<index>{_NAME})\s+ON\s+(?:ONLY\s+)?(?P<table>{_QUALIFIED})",
    re.I,
)
ADD_CONSTRAINT = re.compile(
    rf"\s*ALTER\s+TABLE\s+(?:ONLY\s+)?(?P<table>{_QUALIFIED})\s+ADD\s+CONSTRAINT\s+(?P<constraint>{_NAME})\s+"
    r"(?:FOREIGN\s+KEY|CHECK)\b",
    re.I,
)
NOT_VALID_ALREADY = re.compile(r"\bNOT\s+VALID\s*;?\s*$", re.I)
SET_NOT_NULL = re.compile(
    rf"\s*ALTER\s+TABLE\s+(?:ONLY\s+)?(?P<table>{_QUALIFIED})\s+ALTER\s+COLUMN\s+(?P<column>{_NAME})\s+"
    r"SET\s+NOT\s+NULL\s*;?\s*$",
    re.I,
)
# pg_index of a name in the table's schema: whether it is valid, and whether it is on that very table.
PG_INDEX_STATE = """
    SELECT i.indisvalid, i.indrelid = to_regclass(%(table)s)
    FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.relname = %(name)s AND n.nspname = COALESCE(%(schema)s, current_schema())
"""
PG_CONSTRAINT_VALIDATED = (
    "SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass(%(table)s) AND conname = %(name)s"
)
# Whether the transaction changed anything yet: a write, DDL included, assigns it an id (PostgreSQL 10 on).
PG_WROTE = "SELECT txid_current_if_assigned() IS NOT NULL"
WROTE_TOLD = (10,)
NOT_NULL_CHECK_SUFFIX = "_not_null"  # the name of the check SET NOT NULL goes through: <table>_<column>_not_null
PG_IDENTIFIER_BYTES = 63
_IDLE = 0  # psycopg.pq.TransactionStatus.IDLE


def _unquoted(name: str) -> str:
    """An identifier as the catalog keeps it: a quoted one as written, else folded to lower case."""
    return name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()


def _schema_of(table: str) -> str | None:
    """The schema a rendered table name is qualified with, as the catalog keeps it; None for none."""
    found = re.match(rf"({_NAME})\.", table)
    return _unquoted(found.group(1)) if found else None


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class OnlineForms:
    """One revision's statements put in their least-locking forms (see above), on the driver's connection
    under SQLAlchemy's: what is committed or switched to autocommit here, SQLAlchemy's transaction follows
    (it commits or rolls back whatever the driver's connection holds when the revision ends)."""

    def __init__(self, version: tuple, retries: int, pause: float):
        self.version = version
        self.retries, self.pause = retries, pause
        self.created: set[str] = set()  # the tables this revision made: empty, the plain forms are fine there
        self.after: Callable[[object], None] | None = None  # what follows the statement once it ran
        self.building: tuple[str, str] | None = None  # (index, table) of the concurrent build under way
        self.restore: tuple[bool, str] | None = None  # autocommit and lock_timeout, as before a long step
        self.made: list[tuple[str, str, str]] = []  # (kind, table, name) committed by a form: undone on failure

    def before(self, conn, cursor, statement, parameters, context, executemany):
        self.after = None
        if executemany or not isinstance(statement, str):
            return statement, parameters
        dbapi = cursor.connection
        if found := CREATE_TABLE.match(statement):
            self.created.add(found["table"])
        elif (found := CREATE_INDEX.match(statement)) and self.may_leave(dbapi, found["table"]):
            statement = self.build_concurrently(dbapi, statement, found)
        elif (
            (found := ADD_CONSTRAINT.match(statement))
            and not NOT_VALID_ALREADY.search(statement)
            and self.may_leave(dbapi, found["table"])
        ):
            statement = self.add_not_valid(dbapi, statement, found)
        elif (
            (found := SET_NOT_NULL.match(statement))
            and self.version >= NOT_NULL_TRUSTS_CHECK
            and self.may_leave(dbapi, found["table"])
        ):
            self.check_not_null(dbapi, found)
        return statement, parameters

    def after_statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        after, self.after = self.after, None
        if after is not None:
            after(cursor.connection)

    def may_leave(self, dbapi, table: str) -> bool:
        """Whether a form may leave the transaction for `table`: one the revision did not create, and
        nothing of the revision in the transaction that leaving it would commit."""
        if table in self.created:
            return False
        if dbapi.autocommit:  # in an autocommit_block(): out of any transaction already
            return True
        return self.version >= WROTE_TOLD and not dbapi.execute(PG_WROTE).fetchone()[0]

    # -- CREATE INDEX CONCURRENTLY, outside the revision's transaction
    def build_concurrently(self, dbapi, statement: str, found) -> str:
        index, table = found["index"], found["table"]
        ours = not dbapi.autocommit  # else the author's own autocommit_block(), theirs to undo
        self.go_long(dbapi)
        self.drop_invalid_index(dbapi, index, table)
        self.building = (index, table)

        def built(dbapi) -> None:
            self.building = None
            if ours:
                self.made.append(("index", table, index))
            self.come_back(dbapi)

        self.after = built
        if found["concurrently"]:
            return statement
        return found["head"] + "CONCURRENTLY " + statement[len(found["head"]) :]

    def drop_invalid_index(self, dbapi, index: str, table: str) -> None:
        """An index of this name on this table that a build left invalid (failed, cancelled, its process
        killed): dropped, so that the build can run again. A valid one is left alone (the build then says
        it exists). Outside any transaction."""
        schema = _schema_of(table)
        row = dbapi.execute(PG_INDEX_STATE, {"name": _unquoted(index), "schema": schema, "table": table}).fetchone()
        if row is not None and not row[0] and row[1]:
            self.drop_index(dbapi, table, index)

    def drop_index(self, dbapi, table: str, index: str) -> None:
        schema = _schema_of(table)
        dbapi.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_quoted(schema) + '.' if schema else ''}{index}")

    # -- FOREIGN KEY, CHECK: NOT VALID in the transaction, then validated in a step of its own
    def add_not_valid(self, dbapi, statement: str, found) -> str:
        table, constraint = found["table"], found["constraint"]
        self.drop_unvalidated(dbapi, table, constraint)

        def validate(dbapi) -> None:
            dbapi.commit()  # the constraint, NOT VALID: the revision held nothing else
            self.made.append(("constraint", table, constraint))
            self.validate(dbapi, table, constraint)

        self.after = validate
        return statement.rstrip().rstrip(";") + " NOT VALID"

    def drop_unvalidated(self, dbapi, table: str, constraint: str) -> None:
        """A constraint of this name left not validated by a validation that failed or was stopped: dropped
        before it is added again (one the revision's author added NOT VALID is never met: it is not rewritten)."""
        row = dbapi.execute(PG_CONSTRAINT_VALIDATED, {"table": table, "name": _unquoted(constraint)}).fetchone()
        if row is not None and not row[0]:
            self.brief(dbapi, f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {constraint}")

    def validate(self, dbapi, table: str, constraint: str) -> None:
        """VALIDATE CONSTRAINT in its own transaction (when rows break it, the revision fails, and
        abandoned() drops the constraint)."""
        self.go_long(dbapi)
        try:
            dbapi.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {constraint}")
        finally:
            self.come_back(dbapi)

    # -- SET NOT NULL through a validated CHECK (column IS NOT NULL)
    def check_not_null(self, dbapi, found) -> None:
        table, column = found["table"], found["column"]
        base = f"{_unquoted(table.rpartition('.')[2])}_{_unquoted(column)}"
        limit = PG_IDENTIFIER_BYTES - len(NOT_NULL_CHECK_SUFFIX)
        check = _quoted(base.encode()[:limit].decode(errors="ignore") + NOT_NULL_CHECK_SUFFIX)
        dbapi.rollback()  # what may_leave() read: nothing else is in the transaction
        self.drop_unvalidated(dbapi, table, check)
        self.brief(dbapi, f"ALTER TABLE {table} ADD CONSTRAINT {check} CHECK ({column} IS NOT NULL) NOT VALID")
        self.made.append(("constraint", table, check))
        self.validate(dbapi, table, check)

        def drop_check(dbapi) -> None:  # SET NOT NULL holds the table's lock: this waits for nothing
            dbapi.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {check}")

        self.after = drop_check

    # -- the driver's connection: out of the transaction for a long step, and back
    def go_long(self, dbapi) -> None:
        """Commit, autocommit, no lock_timeout: a long step that blocks no reader or writer may wait."""
        if dbapi.info.transaction_status != _IDLE:
            dbapi.commit()
        autocommit, dbapi.autocommit = dbapi.autocommit, True
        self.restore = (autocommit, dbapi.execute("SELECT current_setting('lock_timeout')").fetchone()[0])
        dbapi.execute("SET lock_timeout = 0")

    def come_back(self, dbapi) -> None:
        if self.restore is None:
            return
        autocommit, lock_timeout = self.restore
        self.restore = None
        dbapi.execute("SELECT set_config('lock_timeout', %(value)s, false)", {"value": lock_timeout})
        dbapi.autocommit = autocommit

    def brief(self, dbapi, statement: str) -> None:
        """A statement under a short lock (in a transaction of its own, or a savepoint of the one open),
        given the guard's lock wait and retries: it queues the application behind it while it waits."""
        for attempt in range(self.retries + 1):
            try:
                with dbapi.transaction():
                    dbapi.execute(statement)
                return
            except dbapi.Error as exc:
                if pg_code(exc) != PG_LOCK_NOT_AVAILABLE or attempt == self.retries:
                    raise
            time.sleep(self.pause)

    def abandoned(self, dbapi) -> None:
        """The revision failed or was stopped: its transaction is rolled back, the index a build left
        invalid dropped, and what the forms committed dropped again, last first. On a broken connection
        nothing can be: the next run drops what a build left invalid, and says what else is there."""
        try:
            if dbapi.closed:
                return
            if dbapi.info.transaction_status != _IDLE:
                dbapi.rollback()
            self.come_back(dbapi)
            autocommit, dbapi.autocommit = dbapi.autocommit, True  # DROP INDEX CONCURRENTLY needs it
            try:
                if self.building is not None:
                    self.drop_invalid_index(dbapi, *self.building)
                for kind, table, name in reversed(self.made):
                    if kind == "index":
                        self.drop_index(dbapi, table, name)
                    else:
                        self.brief(dbapi, f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
            finally:
                dbapi.autocommit = autocommit
        except Exception:
            pass  # the error that ended the revision is the one to tell


@contextmanager
def pg_online(connection: Connection, guards) -> Iterator[None]:
    forms = OnlineForms(
        connection.dialect.server_version_info or NOT_NULL_TRUSTS_CHECK, guards.retries, guards.retry_pause
    )
    dbapi = connection.connection.dbapi_connection
    event.listen(connection, "before_cursor_execute", forms.before, retval=True)
    event.listen(connection, "after_cursor_execute", forms.after_statement)
    try:
        yield
    except BaseException:
        forms.abandoned(dbapi)
        raise
    finally:
        event.remove(connection, "before_cursor_execute", forms.before)
        event.remove(connection, "after_cursor_execute", forms.after_statement)


# -- Backups: pg_dump and pg_restore, the URL's password in a private password file -------------

# pg_dump's own compression is off: the archive is gzip'd here like every backup, so the same stream
# check applies, and the whole of it is read back by pg_restore before it counts.
PG_DUMP_FLAGS = ("--format=custom", "--compress=0", "--no-password")
PG_RESTORE_FLAGS = ("--clean", "--if-exists", "--single-transaction", "--exit-on-error", "--no-password")
# Libpq reads these from the environment too; ours must not be overridden (or a stray one used).
PG_PASSWORD_VARIABLES = ("PGPASSWORD", "PGPASSFILE")
PG_NOT_IN_QUERY = ("password", "passfile", "service")


def client_program(name: str) -> str:
    # Debian's /usr/bin/pg_dump picks the newest installed version for a --host; else the newest itself.
    found = shutil.which(name) or shutil.which(name, path=os.defpath)
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]), reverse=True)
    if found or versions:
        return found or str(versions[0])
    raise DeployError(f"{name} is not installed: install the PostgreSQL client (postgresql-client)")


def conninfo(url: URL) -> str:
    """Where and as whom, as psycopg would connect: all from the URL (its query holds libpq's
    parameters, sslmode and the like), none of it secret."""
    from psycopg.conninfo import make_conninfo

    for key in PG_NOT_IN_QUERY:
        if key in url.query:
            raise DeployError(f"backups take the connection from the URL alone: remove its {key} option")
    query = {key: value if isinstance(value, str) else value[-1] for key, value in url.query.items()}
    where = {"host": url.host, "port": url.port, "dbname": url.database, "user": url.username}
    # The query's own host (a socket directory, say) wins over an empty host part, as in psycopg.
    return make_conninfo("", **{**{key: value for key, value in where.items() if value is not None}, **query})


def owner_only(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def pgpass_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def run_tool(program: str, url: URL | None, args: list[str], tool: Tool, feed=None, sink=None) -> None:
    """Run a PostgreSQL client tool (as the URL's user, when given), feeding its stdin or its stdout.

    The password reaches it in a password file (libpq reads no pipe: it wants a plain file with mode
    0600), written in a private directory made for this one run and removed when the tool ends; the
    environment carries only that file's path. Never argv, never PGPASSWORD."""
    argv = [client_program(program), *([f"--dbname={conninfo(url)}"] if url is not None else []), *args]
    env = {key: value for key, value in os.environ.items() if key not in PG_PASSWORD_VARIABLES}
    with tempfile.TemporaryDirectory(prefix="deploy-pgpass-") as private:  # mode 0700
        if url is not None and url.password:
            if "\n" in url.password or "\r" in url.password:
                raise DeployError("a password with a line break cannot be handed to the PostgreSQL tools")
            passfile = os.path.join(private, "pgpass")
            with open(passfile, "x", opener=owner_only) as out:
                out.write(f"*:*:*:*:{pgpass_value(url.password)}\n")
            env["PGPASSFILE"] = passfile
        tool.run(argv, feed, sink, env=env)


# What a restore removes first, so that objects made after the backup go too (pg_restore --clean drops
# only the archive's own): tables, views, sequences and types in every schema but the system's, except
# an extension's and a sequence a column owns (it goes with its table).
PG_OBJECTS = """
    SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                          WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, n.nspname, c.relname
    FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND NOT c.relispartition
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND left(n.nspname, 3) <> 'pg_'
      AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype IN ('e', 'a', 'i'))
    UNION ALL
    SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, n.nspname, t.typname
    FROM pg_type AS t JOIN pg_namespace AS n ON n.oid = t.typnamespace
    WHERE t.typtype IN ('e', 'd', 'r')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND left(n.nspname, 3) <> 'pg_'
      AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                      AND d.deptype = 'e')
"""


# Ordinary users may use max_connections less the slots kept for superusers and (PostgreSQL 16 on) for
# pg_use_reserved_connections; client backends take slots, background workers and WAL senders have their
# own. pg_stat_activity lists every backend to every role, but shows another role's backend_type only to
# pg_read_all_stats: a backend in a database, as a user, of a type not shown, is counted as a client (an
# autovacuum worker too, which errs on the side of fewer). pg_stat_clear_snapshot: a transaction keeps the
# list it read first, and the caller's may be open.
SPARE_CONNECTIONS = """
    SELECT current_setting('max_connections')::int
           - current_setting('superuser_reserved_connections')::int
           - COALESCE(NULLIF(current_setting('reserved_connections', true), '')::int, 0)
           - (SELECT count(*) FROM pg_stat_activity
              WHERE backend_type = 'client backend'
                 OR (backend_type IS NULL AND datid IS NOT NULL AND usesysid IS NOT NULL))
"""


BUSY_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE backend_type = 'client backend' AND state = 'active' AND pid <> pg_backend_pid()"
)


def pg_spare_connections(connection: Connection) -> int:
    opened_here = not connection.in_transaction()
    try:
        connection.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        spare = connection.exec_driver_sql(SPARE_CONNECTIONS).scalar_one()
    finally:
        if opened_here:
            connection.rollback()
    return max(0, int(spare))


class PostgreSQL(Dialect):
    names = ("postgresql",)
    backup_suffix = ".pgdump.gz"  # a pg_dump custom-format archive, gzipped (deploy/safety/backups.py)
    backup_incomplete = "it holds no pg_dump archive"
    transactional_ddl = True  # a failed revision's transaction takes its DDL back with it
    server_programs = frozenset({"postgres", "postmaster"})

    def explain(self, orig: BaseException, url: URL, where: str) -> str:
        """explain() for psycopg's errors: by SQLSTATE (PostgreSQL's codes, not MySQL's numbers)."""
        state = _sqlstate(orig)
        if state in PG_ACCESS_DENIED:
            return f"access denied for {where}: wrong user or password"
        if state in PG_CANNOT_CONNECT and getattr(orig, "sqlstate", None):
            # The server ended a session it had (pg_terminate_backend, a shutdown): it answered, so it ran.
            return f"the database server ended the connection to {where} ({_pg_detail(orig)})"
        if state in PG_CANNOT_CONNECT:
            return f"cannot reach the database server for {where}: is it running? ({_pg_detail(orig)})"
        if state == PG_UNKNOWN_DATABASE:
            return f"database {url.database!r} does not exist on the server ({where})"
        if state == PG_PRIVILEGE_MISSING and _while_connecting(orig):
            # Refused while connecting: no CONNECT privilege on the database.
            return f"{url.username} may not use database {url.database!r} ({where}): is it granted?"
        if state == PG_PRIVILEGE_MISSING:
            return f"{url.username} lacks a privilege on {where}: {_pg_detail(orig)}"
        return f"database error on {where}: {_pg_detail(orig)}"

    def migration_lock(self, url: URL, session, wait: float):
        """A session-level advisory lock (pg_try_advisory_lock, polled), on the session `session` gives it."""
        return advisory_lock(url, session, wait)

    def guard(self, connection: Connection, lock_wait_timeout: float, retries: int, pause: float):
        """lock_timeout; SQLSTATE 55P03 is retried, each statement in a savepoint of its own."""
        return pg_guard(connection, lock_wait_timeout, retries, pause)

    def open_transactions(self, connection: Connection, older_than: float) -> list[Transaction]:
        """pg_stat_activity (needs pg_read_all_stats to see other roles' sessions)."""
        return pg_open_transactions(connection, older_than)

    def spare_connections(self, connection: Connection) -> int | None:
        """max_connections less the reserved slots and the client backends of pg_stat_activity."""
        return pg_spare_connections(connection)

    def busy_sessions(self, connection: Connection) -> int | None:
        """The other client backends of pg_stat_activity running a statement (other roles' need
        pg_read_all_stats: without it they are not counted)."""
        connection.exec_driver_sql("SELECT pg_stat_clear_snapshot()")  # else the transaction's first reading
        return int(connection.exec_driver_sql(BUSY_SESSIONS).scalar_one())

    def bounded(self, connection: Connection, seconds: float):
        """SET LOCAL statement_timeout in a read-only transaction; SQLSTATE 57014 is TooSlow."""
        return pg_bounded(connection, seconds)

    def character_length(self, expression):
        return func.char_length(expression)

    def checks_existing_rows(self, operation) -> bool:
        # NOT VALID: existing rows are not checked (a later VALIDATE CONSTRAINT does).
        return not operation.kw.get("postgresql_not_valid") if hasattr(operation, "kw") else True

    def lint_risks(self, operation, found: list[tuple[str, str]], named: str) -> list[tuple[str, str]]:
        if isinstance(operation, (ops.CreateForeignKeyOp, ops.CreateCheckConstraintOp)) and operation.kw.get(
            "postgresql_not_valid"
        ):
            # NOT VALID: existing rows are not checked (a later VALIDATE CONSTRAINT does, without blocking).
            found = [finding for finding in found if finding[0] != named]
        return merged(found, lint_risks(operation, named))

    def online(self, connection: Connection, guards):
        """CREATE INDEX CONCURRENTLY, constraints NOT VALID then validated, SET NOT NULL through a validated
        check, on the tables a revision did not create (OnlineForms)."""
        return pg_online(connection, guards)

    def lint_in_revision(self, operations: list) -> dict[int, str]:
        return pg_in_revision(operations)

    def online_refusal(self, connection: Connection, operation, guards) -> str | None:
        """A table rewrite (rewrite_refusal), unless --allow-rewrite."""
        return rewrite_refusal(self, connection, operation, guards)

    def alteration(self, connection: Connection, operation) -> Alteration | None:
        """By the operation and the server's version (pg_alteration)."""
        return pg_alteration(operation, connection.dialect.server_version_info or NOT_NULL_TRUSTS_CHECK)

    def dump(self, url: URL, tool: Tool, write: Callable[[bytes], object]) -> None:
        """pg_dump: a custom-format archive."""
        remember(url.password)
        try:
            run_tool("pg_dump", url, list(PG_DUMP_FLAGS), tool, sink=write)
        except DeployError as exc:
            raise DeployError(own(f"backup of {describe(url)} failed: {said(exc)}")) from None

    def load(self, url: URL, chunks: Callable[[], Iterable[bytes]], tool: Tool, connected) -> None:
        """pg_restore in one transaction, after dropping every object of the database's own (PG_OBJECTS)."""
        with connected(url) as connection:
            quote = connection.dialect.identifier_preparer.quote
            for kind, schema, name in connection.exec_driver_sql(PG_OBJECTS).all():
                # CASCADE: a view or foreign key of another dropped object; IF EXISTS: gone with one.
                connection.exec_driver_sql(f"DROP {kind} IF EXISTS {quote(schema)}.{quote(name)} CASCADE")
            connection.commit()
        # One transaction: should the load fail, what it loaded is rolled back (the drops above are not:
        # restore puts the database back from the backup taken first).
        run_tool("pg_restore", url, list(PG_RESTORE_FLAGS), tool, feed=chunks())

    def complete(self, head: bytes, tail: bytes, size: int) -> bool:
        return head.startswith(b"PGDMP")

    def readable(self, chunks: Callable[[], Iterable[bytes]], tool: Tool) -> str | None:
        """What pg_restore finds wrong reading the whole archive (its table of contents and every data
        block, written out as SQL to nowhere), or None. No database is involved."""
        try:
            run_tool("pg_restore", None, ["--file=/dev/null"], tool, feed=chunks())
        except DeployError as exc:
            return f"pg_restore cannot read it ({said(exc)})"
        return None

    def named(self, head: bytes) -> str | None:
        """The archive's database, from its header (pg_dump's ReadHead): PGDMP, version (3 bytes), int
        and offset sizes, format; the compression (a byte from 1.15, an int before); 7 ints of time; the
        name. An int is a sign byte and `int size` bytes, little-endian; a string its length, then it."""
        try:
            major, minor, int_size = head[5], head[6], head[8]
            at = 12 if (major, minor) >= (1, 15) else 11 + 1 + int_size

            def integer() -> int:
                nonlocal at
                value = int.from_bytes(head[at + 1 : at + 1 + int_size], "little")
                at += 1 + int_size
                return -value if head[at - 1 - int_size] else value

            for _ in range(7 if (major, minor) >= (1, 4) else 0):
                integer()
            length = integer()
            name = head[at : at + length]
        except IndexError:
            return None
        return name.decode(errors="replace") if head.startswith(b"PGDMP") and 0 < length == len(name) else None

    def server_process(self, connection: Connection) -> int | None:
        (pid,) = connection.exec_driver_sql("SELECT pg_backend_pid()").one()
        connection.rollback()
        return int(pid)

    def unfinished_indexes(self, connection: Connection) -> frozenset[str]:
        """pg_index.indisvalid false: a CREATE INDEX CONCURRENTLY that failed or was stopped (online())."""
        return frozenset(connection.exec_driver_sql(UNFINISHED_INDEXES).scalars())

    def table_size(self, connection: Connection, table: str, schema: str | None = None) -> tuple[int, int] | None:
        """pg_class's rows per page times the pages the table has now (as the planner scales them), and its
        bytes with indexes and TOAST; for a table never analyzed, the planner's own guess (None when the
        user may not read it)."""
        found = connection.execute(
            text(
                "SELECT c.oid::regclass::text, c.reltuples, c.relpages, pg_relation_size(c.oid),"
                " pg_total_relation_size(c.oid), current_setting('block_size')::int,"
                " has_table_privilege(c.oid, 'SELECT')"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relname = :table AND n.nspname = COALESCE(:schema, current_schema()) AND c.relkind = 'r'"
            ),
            {"schema": schema, "table": table},
        ).first()
        if found is None:
            return None
        name, rows, pages, heap, total, block, readable = found
        if rows >= 0 and pages > 0:
            rows = rows / pages * (heap // block)
        elif rows < 0 and heap:  # never vacuumed nor analyzed: the planner guesses, for a user who may read it
            if not readable:
                return None
            plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) SELECT * FROM {name}").scalar()
            rows = plan[0]["Plan"]["Plan Rows"]
        return max(0, int(rows)), int(total)

    def create_database(self, connection: Connection, name: str) -> bool:
        quote = connection.dialect.identifier_preparer.quote
        encoding, collate, ctype = connection.exec_driver_sql(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database"
            " WHERE datname = current_database()"
        ).one()

        def literal(value: str) -> str:
            return "'" + value.replace("'", "''") + "'"

        try:
            connection.exec_driver_sql(
                f"CREATE DATABASE {quote(name)} TEMPLATE template0 ENCODING {literal(encoding)}"
                f" LC_COLLATE {literal(collate)} LC_CTYPE {literal(ctype)}"
            )
        except DBAPIError as exc:
            if pg_code(exc.orig) == PG_PRIVILEGE_MISSING:
                return False
            raise
        return True

    def drop_database(self, connection: Connection, name: str) -> None:
        # FORCE (PostgreSQL 13): a session left on the copy does not keep it.
        quote = connection.dialect.identifier_preparer.quote
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {quote(name)} WITH (FORCE)")

    def database_bytes(self, connection: Connection) -> int | None:
        return int(connection.exec_driver_sql("SELECT pg_database_size(current_database())").scalar())

    def data_directory(self, connection: Connection) -> str | None:
        # Shown to superusers and pg_read_all_settings only; others get no row.
        return connection.exec_driver_sql("SELECT setting FROM pg_settings WHERE name = 'data_directory'").scalar()

    # -- expand and contract (deploy.expand)

    def sync_columns(self, table: str, old: str, new: str, name: str, quote: Callable[[str], str]) -> list[str]:
        # As MariaDB's: an insert that sets the new column gives it to the old one, else takes the old
        # one's; an update gives the column it changed to the other. NOT NULL is checked after this.
        trigger, old, new = quote(name), quote(old), quote(new)
        body = (
            f"BEGIN IF TG_OP = 'INSERT' THEN"
            f" IF NEW.{new} IS NULL THEN NEW.{new} = NEW.{old}; ELSE NEW.{old} = NEW.{new}; END IF;"
            f" ELSIF NEW.{new} IS DISTINCT FROM OLD.{new} THEN NEW.{old} = NEW.{new};"
            f" ELSIF NEW.{old} IS DISTINCT FROM OLD.{old} THEN NEW.{new} = NEW.{old};"
            " END IF; RETURN NEW; END"
        )
        return [
            f"CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $sync$ {body} $sync$",
            f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {quote(table)}"
            f" FOR EACH ROW EXECUTE FUNCTION {trigger}()",
        ]

    def unsync_columns(self, table: str, name: str, quote: Callable[[str], str]) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {quote(name)} ON {quote(table)}", f"DROP FUNCTION IF EXISTS {quote(name)}()"]
