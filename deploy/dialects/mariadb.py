"""MariaDB and MySQL (SQLAlchemy's "mysql" and "mariadb" dialects; PyMySQL in production)."""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from types import ModuleType

from alembic.operations import ops
from sqlalchemy import event, func, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..errors import DeployError, mask, own, relayed, remember
from .base import (
    LOCK_NAME_PREFIX,
    Alteration,
    Dialect,
    Tool,
    TooSlow,
    busy,
    describe,
    explain,
    merged,
    said,
    widens_varchar,
)
from .guarded import GaveWay, Transaction, retrying, what_blocks

# MySQL/MariaDB client error numbers that have a clear meaning for the user.
ACCESS_DENIED = {1045, 1698}
DATABASE_DENIED = 1044
CANNOT_CONNECT = {2002, 2003, 2005, 2006, 2013}
UNKNOWN_DATABASE = 1049
PRIVILEGE_MISSING = {1142, 1143, 1227}
GET_LOCK_NAME_MAX = 64  # bytes; MySQL refuses longer names (MariaDB does not, but the server may be MySQL)
# An idle lock connection must outlive the longest migration: the server's default wait_timeout (8 h)
# would end the session, and with it the lock, in the middle of one.
IDLE_FOR_A_YEAR = "SET SESSION wait_timeout = 31536000"
COPY = (
    "MariaDB can only copy the table: the upgrade copies it online (pt-online-schema-change), or in place, "
    "blocking writes until it is done, when it is small or --allow-copy says so"
)
REBUILD = "MariaDB rebuilds the table (writes go on, but it takes as long as a copy)"
LOCK_WAIT_TIMEOUT = 1205  # MariaDB raises it for metadata-lock (DDL) and InnoDB row-lock waits alike
NEEDS_PROCESS = 1227
DUMP_FLAGS = (
    "--single-transaction",  # a consistent InnoDB snapshot, without locking the application out
    "--routines",
    "--triggers",
    "--events",
    "--no-tablespaces",  # MySQL's mysqldump needs PROCESS for them otherwise
    "--hex-blob",
)
# The client tools' own global option files; the user's ~/.my.cnf is left out on purpose (see run_tool).
GLOBAL_OPTION_FILES = ("/etc/my.cnf", "/etc/mysql/my.cnf")
SSL_OPTIONS = ("ssl_ca", "ssl_cert", "ssl_key", "ssl_capath", "ssl_cipher")
# The client tools read an option file in pieces of 4094 bytes: the rest of a longer line is read as a
# line of its own (an option they name in their error).
OPTION_LINE_BYTES = 4094
TRANSACTIONS = """
    SELECT t.trx_mysql_thread_id, p.USER, p.HOST,
           TIMESTAMPDIFF(MICROSECOND, t.trx_started, NOW(6)) / 1000000, COALESCE(p.INFO, t.trx_query)
    FROM information_schema.INNODB_TRX AS t
    LEFT JOIN information_schema.PROCESSLIST AS p ON p.ID = t.trx_mysql_thread_id
    WHERE t.trx_mysql_thread_id <> CONNECTION_ID()
    ORDER BY t.trx_started
"""


def lock_name(database: str) -> str:
    """GET_LOCK names are server-wide: one per database name, hashed when too long to be a name."""
    name = LOCK_NAME_PREFIX + database
    if len(name.encode()) <= GET_LOCK_NAME_MAX:
        return name
    digest = hashlib.sha256(database.encode()).hexdigest()
    return LOCK_NAME_PREFIX + digest[: GET_LOCK_NAME_MAX - len(LOCK_NAME_PREFIX)]


def server_lock(url: URL, session, wait: float):
    name = lock_name(url.database or "")

    def acquire(connection) -> None:
        connection.exec_driver_sql(IDLE_FOR_A_YEAR)
        acquired = connection.scalar(text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": wait})
        if acquired != 1:
            raise busy(url, wait, server_holder(connection, name))

    def release(connection) -> None:
        connection.scalar(text("SELECT RELEASE_LOCK(:name)"), {"name": name})

    return session(acquire, release)


def server_holder(connection, name: str) -> str:
    """The holder, as far as this user may see it: PROCESSLIST shows other users only with PROCESS."""
    holder = connection.scalar(text("SELECT IS_USED_LOCK(:name)"), {"name": name})
    if holder is None:
        return "it was released just now"
    row = connection.execute(
        text("SELECT USER, HOST, TIME FROM information_schema.PROCESSLIST WHERE ID = :id"), {"id": holder}
    ).first()
    if row is None:
        return f"connection {holder} (its user and host are visible only with the PROCESS privilege)"
    user, host, seconds = row
    # The lock is the last thing its connection did, so the idle time is the time it has held it.
    return f"connection {holder}, {user}@{host}, for {seconds} s"


def server_code(error: BaseException) -> int | None:
    code = error.args[0] if error.args else None
    return code if isinstance(code, int) else None


STATEMENT_TIMEOUT = 1969  # ER_STATEMENT_TIMEOUT: max_statement_time exceeded


@contextmanager
def server_bounded(connection: Connection, seconds: float) -> Iterator[None]:
    """The session's max_statement_time for the block (then put back); error 1969 is TooSlow."""
    before = connection.exec_driver_sql("SELECT @@session.max_statement_time").scalar()
    connection.exec_driver_sql(f"SET SESSION max_statement_time = {float(seconds)!r}")
    try:
        yield
    except DBAPIError as exc:
        if exc.orig is not None and exc.orig.args and exc.orig.args[0] == STATEMENT_TIMEOUT:
            raise TooSlow(f"over {seconds:g} s") from None
        raise
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.exec_driver_sql(f"SET SESSION max_statement_time = {float(before)!r}")


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


def lint_risks(operation, named: str):
    """What MariaDB can only copy or rebuild to run the operation on a table that holds rows, as
    server_alteration() tells it for a current MariaDB (the charset unknown: the lint errs toward a copy)."""
    if isinstance(operation, ops.AlterColumnOp):
        for aspect, found in column_alterations(LINTED, operation):
            if aspect == "type" and found.how != COPIED.how:
                yield f"{named} type", "MariaDB does it in place"
            elif aspect == "type":
                widened = widens_varchar(operation.existing_type, operation.modify_type)
                yield f"{named} type", COPY + (" (unless it stays under or over 255 bytes)" if widened else "")
            elif aspect == "NOT NULL":
                yield f"{named} NOT NULL", REBUILD
        return
    found = server_alteration(LINTED, operation)
    if found is None:
        return
    if found.how == COPIED.how and isinstance(operation, ops.AddColumnOp) and operation.column.foreign_keys:
        yield f"{named} foreign key", f"adds a foreign key: {COPY}"
    elif found.how == COPIED.how:
        yield named, COPY
    elif found == REBUILT:
        yield named, REBUILD


# -- Online DDL: how the server alters a table that holds rows ------------------------------------------
#
# As measured on MariaDB 10.11.19 (each operation tried with ALGORITHM=INSTANT, then NOCOPY and INPLACE
# with LOCK=NONE, then COPY), and for older servers and MySQL from their manuals (mariadb.com/kb: "InnoDB
# Online DDL Operations with the INSTANT / NOCOPY / INPLACE Alter Algorithm"; MySQL 8.0 "Online DDL
# Operations"):
# - INSTANT (metadata only): adding a column (MariaDB 10.3.2, at the end; MySQL 8.0.12), dropping one
#   (10.4; MySQL 8.0.29) unless an index holds it, renaming one (MySQL 8.0.28), defaults, comments,
#   a longer VARCHAR whose length prefix keeps its size (1 byte up to 255 bytes,
#   else 2; 10.4), renaming a table or an index, dropping a foreign key or a CHECK;
# - NOCOPY (no rebuild; writes go on): building an index (its time grows with the rows), dropping one;
# - INPLACE with LOCK=NONE (a rebuild; writes go on, as long as a copy): NULL -> NOT NULL and back, a primary
#   key added;
# - COPY only (writes blocked, LOCK=NONE refused before 11.2): other type changes (INT -> BIGINT, VARCHAR ->
#   TEXT, a shorter VARCHAR, a VARCHAR crossing 255 bytes), a foreign key added (foreign_key_checks on),
#   a CHECK added, a primary key dropped, a stored generated or AUTO_INCREMENT column added.
# Each form the suite adds makes the server refuse at once (errors 1845, 1846) rather than copy silently.
INSTANT_FORM = "ALGORITHM=INSTANT"
INPLACE_FORM = "ALGORITHM=INPLACE, LOCK=NONE"
ONLINE_COPY = "pt-online-schema-change"
INSTANT = Alteration("INSTANT", "nothing", False, INSTANT_FORM)
INDEX_BUILD = Alteration("NOCOPY", "nothing", True, INPLACE_FORM)  # reads every row to build the index
INDEX_DROP = Alteration("NOCOPY", "nothing", False, INPLACE_FORM)
IN_PLACE = Alteration("INPLACE", "nothing", False, INPLACE_FORM)  # no rebuild, where INSTANT is unknown
REBUILT = Alteration("INPLACE", "nothing", True, INPLACE_FORM)
COPIED = Alteration("COPY", "writes", True, ONLINE_COPY)
# DROP INDEX takes no ALGORITHM or LOCK clause (MariaDB 10.11's parser refuses them); it drops in place.
DROPPED_INDEX = Alteration("NOCOPY", "nothing", False, None)
RANKS = ("INSTANT", "NOCOPY", "INPLACE", "COPY")
# What the lint assumes, without a server to ask.
LINTED_VERSION = (10, 11)


@dataclass(frozen=True)
class Server:
    """The server's kind and version, which decide what it does in place."""

    mariadb: bool
    version: tuple[int, ...]

    def at_least(self, mariadb: tuple[int, ...], mysql: tuple[int, ...]) -> bool:
        return self.version >= (mariadb if self.mariadb else mysql)

    @property
    def knows_instant(self) -> bool:
        """Whether ALGORITHM=INSTANT is in its grammar (MariaDB 10.3.7, MySQL 8.0.12)."""
        return self.at_least((10, 3, 7), (8, 0, 12))

    def instant(self, since_mariadb: tuple[int, ...], since_mysql: tuple[int, ...], before: Alteration) -> Alteration:
        """INSTANT from these versions on, `before` on older servers."""
        return INSTANT if self.knows_instant and self.at_least(since_mariadb, since_mysql) else before


LINTED = Server(mariadb=True, version=LINTED_VERSION)


def server_of(connection: Connection) -> Server:
    info = tuple(part for part in connection.dialect.server_version_info or () if isinstance(part, int))
    return Server(bool(getattr(connection.dialect, "is_mariadb", False)), info)


def worst(*found: Alteration | None) -> Alteration | None:
    """The alteration of several changes made by one statement: its slowest part decides."""
    known = [alteration for alteration in found if alteration is not None]
    if not known:
        return None
    slowest = max(known, key=lambda alteration: (RANKS.index(alteration.how), alteration.per_row))
    return replace(slowest, per_row=any(alteration.per_row for alteration in known))


def prefix_bytes(characters: int, bytes_per_character: int) -> int:
    """The bytes of a VARCHAR's length prefix: 1 while its longest value fits in 255 bytes, else 2."""
    return 1 if characters * bytes_per_character <= 255 else 2


def widened_in_place(old, new, bytes_per_character: int | None = None) -> bool:
    """Whether MariaDB widens a VARCHAR without a copy: while its length prefix keeps its size. An unknown
    charset (1 to 4 bytes a character) means: for every charset (at most 63 characters, or from 256)."""
    sizes = [bytes_per_character] if bytes_per_character else [1, 2, 3, 4]
    return all(prefix_bytes(old.length, size) == prefix_bytes(new.length, size) for size in sizes)


def column_alterations(server: Server, operation: ops.AlterColumnOp, bytes_per_character: int | None = None):
    """(aspect, Alteration) for each change an alter_column makes: "type", "NOT NULL", "NULL", "rename",
    "default", "comment"."""
    new, old = operation.modify_type, operation.existing_type
    if new is not None and (old is None or repr(old) != repr(new)):
        if widens_varchar(old, new) and widened_in_place(old, new, bytes_per_character):
            yield "type", server.instant((10, 4), (99,), IN_PLACE)
        else:
            yield "type", COPIED
    if operation.modify_nullable is False and operation.existing_nullable is not False:
        yield "NOT NULL", REBUILT
    elif operation.modify_nullable is True and operation.existing_nullable is False:
        yield "NULL", REBUILT  # INSTANT and NOCOPY refused (error 1845) on 10.11 too
    if operation.modify_name:
        yield "rename", server.instant((10, 3, 7), (8, 0, 28), IN_PLACE)
    if operation.modify_server_default is not False:
        yield "default", server.instant((10, 3, 7), (8, 0, 12), IN_PLACE)
    if operation.modify_comment is not False:
        yield "comment", server.instant((10, 3, 7), (8, 0, 12), IN_PLACE)


def server_alteration(server: Server, operation, bytes_per_character: int | None = None, indexed: bool = False):
    """What `operation` does to its existing table on `server`; None when it changes none, or cannot be told.
    `bytes_per_character`: the altered column's charset; `indexed`: an index holds the dropped column."""
    match operation:
        case ops.AddColumnOp():
            column = operation.column
            stored = column.computed is not None and column.computed.persisted is not False
            if column.foreign_keys or column.primary_key or stored:
                return COPIED
            added = server.instant((10, 3, 2), (8, 0, 12), REBUILT)
            return worst(added, INDEX_BUILD) if column.index or column.unique else added
        case ops.DropColumnOp():
            return INDEX_DROP if indexed else server.instant((10, 4), (8, 0, 29), REBUILT)
        case ops.AlterColumnOp():
            return worst(*(found for _, found in column_alterations(server, operation, bytes_per_character)))
        case ops.CreateIndexOp():
            fulltext = {operation.kw.get(f"{kind}_prefix") for kind in ("mysql", "mariadb")} & {"FULLTEXT", "SPATIAL"}
            return Alteration("INPLACE", "writes", True, None) if fulltext else INDEX_BUILD
        case ops.DropIndexOp():
            return DROPPED_INDEX
        case ops.CreateUniqueConstraintOp():
            return INDEX_BUILD
        case ops.CreateForeignKeyOp() | ops.CreateCheckConstraintOp():
            return COPIED  # foreign_key_checks stays on: the rows there are checked, which needs a copy
        case ops.CreatePrimaryKeyOp():
            return REBUILT
        case ops.DropConstraintOp(constraint_type="primary"):
            return COPIED
        case ops.DropConstraintOp(constraint_type="unique"):
            return INDEX_DROP
        case ops.DropConstraintOp(constraint_type="foreignkey" | "check"):
            return server.instant((10, 3, 7), (8, 0, 12), IN_PLACE)
        case ops.RenameTableOp():
            # LOCK=NONE is refused for a rename (error 1845): its instant form has no lock clause.
            return INSTANT if server.knows_instant else Alteration("INPLACE", "nothing", False, None)
        case ops.CreateTableCommentOp() | ops.DropTableCommentOp():
            return server.instant((10, 3, 7), (8, 0, 12), IN_PLACE)
    return None


COLUMN_FACTS = """
    SELECT CHARACTER_OCTET_LENGTH DIV NULLIF(CHARACTER_MAXIMUM_LENGTH, 0),
           EXISTS (SELECT 1 FROM information_schema.STATISTICS AS s WHERE s.TABLE_SCHEMA = c.TABLE_SCHEMA
                   AND s.TABLE_NAME = c.TABLE_NAME AND s.COLUMN_NAME = c.COLUMN_NAME)
    FROM information_schema.COLUMNS AS c
    WHERE c.TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND c.TABLE_NAME = :table AND c.COLUMN_NAME = :column
"""


def live_alteration(connection: Connection, operation) -> Alteration | None:
    """server_alteration() with what the server says of the column an operation alters or drops."""
    bytes_per_character, indexed = None, False
    if isinstance(operation, (ops.AlterColumnOp, ops.DropColumnOp)):
        found = connection.execute(
            text(COLUMN_FACTS),
            {"schema": operation.schema, "table": operation.table_name, "column": operation.column_name},
        ).first()
        if found is not None:
            bytes_per_character, indexed = (int(found[0]) if found[0] else None), bool(found[1])
    return server_alteration(server_of(connection), operation, bytes_per_character, indexed)


# -- Online DDL as it runs: the strongest form the server accepts, else an online copy ------------------

NOT_ONLINE = {1845, 1846}  # ER_ALTER_OPERATION_NOT_SUPPORTED(_REASON): that form is refused, nothing done
NAME = r"(?:`(?:[^`]|``)+`|[\w$]+)"
QUALIFIED = rf"{NAME}(?:\s*\.\s*{NAME})?"
ALTER_TABLE = re.compile(
    rf"\s*ALTER\s+TABLE\s+(?P<table>{QUALIFIED})\s+(?P<spec>.+?)[\s;]*\Z", re.IGNORECASE | re.DOTALL
)
CREATE_INDEX = re.compile(
    rf"\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+{NAME}\s+ON\s+(?P<table>{QUALIFIED})\s*\(.*?[\s;]*\Z",
    re.IGNORECASE | re.DOTALL,
)
CHOSEN_FORM = re.compile(r"\b(?:ALGORITHM|LOCK)\s*=", re.IGNORECASE)
RENAME_ONLY = re.compile(rf"RENAME\s+(?:TO\s+|AS\s+)?{QUALIFIED}\Z", re.IGNORECASE)
DROPS_PRIMARY_KEY = re.compile(r"\bDROP\s+PRIMARY\s+KEY\b", re.IGNORECASE)
CHANGES_COLUMN = re.compile(rf"\bCHANGE\s+(?:COLUMN\s+)?(?P<old>{NAME})\s+(?P<new>{NAME})", re.IGNORECASE)
PR_SET_PDEATHSIG = 1  # prctl(2)
ONLINE_COPY_STOPPED = 30  # seconds pt-online-schema-change is given to stop after being told to


@dataclass(frozen=True)
class Altering:
    """A statement that alters an existing table: the forms tried in turn, strongest first, and its changes
    as pt-online-schema-change takes them (None: it is never a copy, and runs as written if refused)."""

    database: str | None
    table: str
    forms: tuple[str, ...]
    copy_spec: str | None


def unquoted(qualified: str) -> tuple[str | None, str]:
    """(database, table) of a name as a statement writes it."""
    names = [name[1:-1].replace("``", "`") if name.startswith("`") else name for name in re.findall(NAME, qualified)]
    return (names[0], names[1]) if len(names) == 2 else (None, names[0])


def altering(server: Server, statement: str) -> Altering | None:
    """The online forms of an ALTER TABLE or CREATE INDEX; None for another statement, or one whose author
    chose its own ALGORITHM or LOCK."""
    if CHOSEN_FORM.search(statement):
        return None
    text_ = statement.strip().rstrip(";").rstrip()
    instant = (f"{text_}, {INSTANT_FORM}",) if server.knows_instant else ()
    if found := ALTER_TABLE.match(text_):
        database, table = unquoted(found["table"])
        if RENAME_ONLY.match(found["spec"]):  # LOCK=NONE is refused for a rename, which never copies
            return Altering(database, table, instant, None) if instant else None
        return Altering(database, table, (*instant, f"{text_}, {INPLACE_FORM}"), found["spec"])
    if found := CREATE_INDEX.match(text_):
        database, table = unquoted(found["table"])
        return Altering(database, table, (f"{text_} ALGORITHM=INPLACE LOCK=NONE",), None)
    return None


def renames(spec: str) -> bool:
    """Whether ALTER TABLE's changes rename a column (CHANGE old new ...)."""
    return any(unquoted(found["old"]) != unquoted(found["new"]) for found in CHANGES_COLUMN.finditer(spec))


def quoted_name(*names: str) -> str:
    return ".".join(quote(name) for name in names)


def copy_obstacle(
    dbapi_connection, database: str, table: str, drops_primary_key: bool, renames_column: bool
) -> str | None:
    """Why pt-online-schema-change cannot copy `table` online (its triggers, its swap by RENAME); None if it can."""
    if not online_copy_program():
        return "pt-online-schema-change is not installed (Debian's percona-toolkit)"
    if drops_primary_key:
        return "it drops the primary key, which pt-online-schema-change copies by"
    if renames_column:
        return "it renames a column too, which pt-online-schema-change will not do in a copy (rename it on its own)"
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(TABLE_OBSTACLES, {"database": database, "table": table})
        keyed, referring, referred, triggers = cursor.fetchone()
    finally:
        cursor.close()
    if not keyed:
        return f"{table} has no primary key or unique index, which pt-online-schema-change copies by"
    if referring:
        return (
            f"foreign keys of other tables refer to {table} ({referring}), which pt-online-schema-change would "
            "have to rebuild or drop"
        )
    if referred:
        return f"{table}'s own foreign keys would be renamed by pt-online-schema-change (an underscore added)"
    if triggers and f"pt_osc_{database}_{table}_" in triggers:
        return (
            f"an online copy that was killed left its triggers on {table} ({triggers}): drop them, and its shadow "
            f"table _{table}_new"
        )
    if triggers:
        return f"{table} has triggers of its own ({triggers}), which pt-online-schema-change does not carry over"
    return None


def ended_with_us() -> None:
    """In the online copy's process, before it starts: SIGTERM when the process that started it dies (a
    killed run), so that no copy swaps a table in for a revision nobody records."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


TABLE_OBSTACLES = """
    SELECT
        EXISTS (SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %(database)s
                AND TABLE_NAME = %(table)s AND NON_UNIQUE = 0),
        (SELECT GROUP_CONCAT(DISTINCT TABLE_NAME ORDER BY TABLE_NAME SEPARATOR ', ')
         FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE UNIQUE_CONSTRAINT_SCHEMA = %(database)s
         AND REFERENCED_TABLE_NAME = %(table)s AND NOT (CONSTRAINT_SCHEMA = %(database)s AND TABLE_NAME = %(table)s)),
        EXISTS (SELECT 1 FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = %(database)s
                AND TABLE_NAME = %(table)s),
        (SELECT GROUP_CONCAT(TRIGGER_NAME ORDER BY TRIGGER_NAME SEPARATOR ', ') FROM information_schema.TRIGGERS
         WHERE EVENT_OBJECT_SCHEMA = %(database)s AND EVENT_OBJECT_TABLE = %(table)s)
"""


def online_copy_program() -> str | None:
    return shutil.which(ONLINE_COPY) or shutil.which(ONLINE_COPY, path=os.defpath)


def copied_in_place(rows: int | None, guards) -> bool:
    """Whether a table only a copy can change is copied in place, writes blocked meanwhile: when asked to
    (--allow-copy), or when it is small enough that the copy is over in a moment (db.safety.copy_in_place_rows)."""
    return bool(guards.allow_copy) or (rows is not None and rows <= guards.copy_in_place_rows)


def copy_refusal(dialect: MariaDB, connection: Connection, operation, guards) -> str | None:
    """Why a pending operation will not run: MariaDB can only copy its table, the table is too big for a
    copy in place, and pt-online-schema-change cannot copy it online."""
    alteration = dialect.alteration(connection, operation)
    if alteration is None or alteration.how != COPIED.how:
        return None
    table, schema = altered_table(operation)
    database = schema or connection.engine.url.database or ""
    found = dialect.table_size(connection, table, schema)
    if found is None:
        return None  # not there yet: made by a pending revision, and empty
    rows, size = found
    if copied_in_place(rows, guards):
        return None
    dropping = isinstance(operation, ops.DropConstraintOp) and operation.constraint_type == "primary"
    renaming = isinstance(operation, ops.AlterColumnOp) and bool(operation.modify_name)
    obstacle = copy_obstacle(connection.connection.dbapi_connection, database, table, dropping, renaming)
    if obstacle is None:
        return None
    sized = f"{rows:,} rows, {math.ceil(size / 1_000_000)} MB"
    return (
        f"MariaDB can only copy {table} (COPY; {sized}), and not online: {obstacle}; pass --allow-copy to copy "
        f"it in place, writes to {table} blocked for the copy"
    )


def altered_table(operation) -> tuple[str, str | None]:
    if isinstance(operation, ops.CreateForeignKeyOp):
        return operation.source_table, operation.kw.get("source_schema")
    return operation.table_name, operation.schema


class CopyStopped(GaveWay):
    """An online copy aborted and cleaned away: the table is as it was, so the revision's operation left
    nothing, and the way out is only to run it again (as after a statement that gave way)."""


class OnlineCopy:
    """pt-online-schema-change run on one table, as the URL's user: chunked copy into a shadow table kept
    up to date by triggers, paused while the server is busy, then swapped in under a short lock wait.

    The password reaches it in an option file held in memory (memfd): never argv, environment or disk;
    pt-online-schema-change opens it anew for each of its connections, as a pipe could not be."""

    def __init__(self, url: URL, database: str, table: str, spec: str, guards) -> None:
        self.url, self.database, self.table, self.spec, self.guards = url, database, table, spec, guards
        self.lines: list[str] = []

    def argv(self, options_fd: int) -> list[str]:
        seconds = max(1, math.ceil(self.guards.lock_wait_timeout))
        tries = f"{int(self.guards.retries) + 1}:{max(0.1, float(self.guards.retry_pause)):g}"
        running = int(self.guards.online_copy_max_running)
        socket = self.url.query.get("unix_socket")
        where = [f"S={socket}"] if socket else [f"h={self.url.host or 'localhost'}", f"P={self.url.port or 3306}"]
        user = [f"u={self.url.username}"] if self.url.username else []
        dsn = ",".join([*where, *user, f"D={self.database}", f"t={self.table}", "A=utf8mb4", f"F=/dev/fd/{options_fd}"])
        return [
            online_copy_program() or ONLINE_COPY,
            f"--alter={self.spec}",
            "--execute",
            "--recursion-method=processlist",  # replicas found as the server's binlog dump threads; their lag
            f"--max-load=Threads_running={running}",  # paused while more statements run than this
            f"--critical-load=Threads_running={max(50, 2 * running)}",
            # Each chunk's INSERT ... SELECT holds the rows the copying triggers write to: an application's
            # write waits for the chunk in progress, so chunks of 0.1 s (not the 0.5 s default) keep it short.
            "--chunk-time=0.1",
            f"--set-vars=lock_wait_timeout={seconds},innodb_lock_wait_timeout={seconds}",
            f"--tries=create_triggers:{tries},drop_triggers:{tries},swap_tables:{tries}",
            "--progress=time,5",
            dsn,
        ]

    def run(self, dbapi_connection) -> None:
        ssl = [
            f"{key.replace('_', '-')}={option_value(self.url.query[key])}"
            for key in SSL_OPTIONS
            if key in self.url.query
        ]
        remember(self.url.password)
        options = os.memfd_create("online-copy-options")
        try:
            os.write(options, option_file(self.url, ONLINE_COPY, ssl).encode())
            process = subprocess.Popen(
                self.argv(options),
                pass_fds=(options,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,  # a Ctrl-C at the terminal is ours to pass on, after our clean-up
                preexec_fn=ended_with_us,
            )
        finally:
            os.close(options)  # the child has its own copy
        reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        reader.start()
        try:
            while process.poll() is None:
                try:
                    process.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
        except BaseException as exc:  # an abort (KeyboardInterrupt), or the process's own end
            self._stop(process, reader)
            self.remove_leftovers(dbapi_connection)
            stopped = f"online copy of {self.table} stopped: its triggers and shadow table were removed"
            print(f"{stopped}, {self.table} is as it was", file=sys.stderr)
            if isinstance(exc, KeyboardInterrupt):
                raise CopyStopped(f"{stopped}, nothing of it is in {self.table} (aborted)") from None
            raise
        reader.join()
        if process.returncode != 0:
            self.remove_leftovers(dbapi_connection)
            raise DeployError(
                own(
                    f"pt-online-schema-change did not change {self.table}: {relayed(self.reason())}; "
                    "its triggers and shadow table were removed"
                )
            )

    def _read(self, stream) -> None:
        for line in stream:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith(("Copying ", "Pausing ", "Successfully altered")):
                print(f"  online copy: {mask(line)}", file=sys.stderr, flush=True)

    def _stop(self, process, reader) -> None:
        if process.poll() is None:
            process.terminate()  # pt-online-schema-change ends after its chunk, naming what it leaves
            try:
                process.wait(timeout=ONLINE_COPY_STOPPED)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=ONLINE_COPY_STOPPED)

    def reason(self) -> str:
        said_ = [line for line in self.lines if line.strip() and not line.startswith(("#", "DROP ", "Not dropping"))]
        for line in said_:
            if line.startswith(("Error", "You ", "Cannot", "The ")) or " failed" in line:
                return line
        return said_[-1] if said_ else "it ended without a word"

    def made(self) -> list[str]:
        """The statements that remove what it made and left: its triggers, and its shadow table unless swapped in."""
        triggers = [f"pt_osc_{self.database}_{self.table}_{event}" for event in ("del", "upd", "ins")]
        statements = [f"DROP TRIGGER IF EXISTS {quoted_name(self.database, name)}" for name in triggers]
        swapped = any(line.startswith("Swapped original and new tables OK") for line in self.lines)
        for line in self.lines:
            found = re.match(r"Created new table (\S+?)\.(\S+) OK\.", line)
            if found and not swapped:
                statements.append(f"DROP TABLE IF EXISTS {quoted_name(found[1], found[2])}")
        return statements

    def remove_leftovers(self, dbapi_connection) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for statement in self.made():
                cursor.execute(statement)
        finally:
            cursor.close()


@contextmanager
def server_online(dialect: MariaDB, connection: Connection, guards) -> Iterator[None]:
    """Each ALTER TABLE and CREATE INDEX the block runs takes the first form the server accepts: INSTANT,
    then INPLACE with LOCK=NONE; one the server can only copy is copied in place when the table is small
    or --allow-copy says so, else by pt-online-schema-change. The statement runs through the listeners
    after this one (the guarded session's retries), as SQLAlchemy would have run it."""
    server = server_of(connection)
    driver = connection.dialect
    inside: list[bool] = []

    def handler(name: str):
        def execute(cursor, statement, *rest):
            if inside:
                return False  # one of our own forms, on its way through the other listeners
            found = altering(server, statement)
            if found is None:
                return False

            def run(form: str) -> None:
                inside.append(True)
                try:
                    for listener in getattr(driver.dispatch, name):
                        if listener(cursor, form, *rest):
                            return
                    getattr(driver, name)(cursor, form, *rest)
                finally:
                    inside.pop()

            for form in found.forms:
                try:
                    return run(form) or True
                except driver.loaded_dbapi.Error as exc:
                    if server_code(exc) not in NOT_ONLINE:
                        raise
            if found.copy_spec is None:
                return run(statement) or True
            rows = (dialect.table_size(connection, found.table, found.database) or (None, None))[0]
            if copied_in_place(rows, guards):
                why = "--allow-copy" if guards.allow_copy else f"about {rows:,} rows"
                said_ = f"{found.table}: MariaDB can only copy it: copying in place ({why}), writes wait"
                print(said_, file=sys.stderr)
                return run(statement) or True
            database = found.database or connection.engine.url.database or ""
            dropping = bool(DROPS_PRIMARY_KEY.search(found.copy_spec))
            obstacle = copy_obstacle(cursor.connection, database, found.table, dropping, renames(found.copy_spec))
            if obstacle is not None:
                raise DeployError(f"MariaDB can only copy {found.table}, and not online: {obstacle}; pass --allow-copy")
            cursor.connection.commit()  # as the ALTER would have: our transaction must not block the swap
            print(f"{found.table}: MariaDB can only copy it: copying online (pt-online-schema-change)", file=sys.stderr)
            OnlineCopy(connection.engine.url, database, found.table, found.copy_spec, guards).run(cursor.connection)
            return True

        return execute

    engine, listeners = connection.engine, {name: handler(name) for name in ONLINE_EVENTS}
    for name, listener in listeners.items():
        # Ours first, the guard's after it (it runs our forms): the dialect events take no insert=True, so
        # the connection's own listeners are put back behind ours.
        before = list(getattr(getattr(driver.dispatch, name), "listeners", ()))
        for other in before:
            event.remove(engine, name, other)
        event.listen(engine, name, listener)
        for other in before:
            event.listen(engine, name, other)
    try:
        yield
    finally:
        for name, listener in listeners.items():
            event.remove(connection.engine, name, listener)


ONLINE_EVENTS = ("do_execute", "do_execute_no_params")


# -- Backups: mariadb-dump and mariadb, the URL's password on a pipe ---------------------------------


def client_program(*names: str) -> str:
    for name in names:
        # Then the system's default path: an SSH command's PATH may hold little more than a venv.
        if found := shutil.which(name) or shutil.which(name, path=os.defpath):
            return found
    raise DeployError(f"neither {' nor '.join(names)} is installed: install the MariaDB client (mariadb-client)")


def option_value(value: str) -> str:
    # Option files read "..." with these escapes; unquoted, `#` would start a comment and spaces be cut.
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(escapes.get(char, char) for char in value) + '"'


def connection_args(url: URL) -> list[str]:
    """Where and as whom, as the driver would connect: all from the URL, none of it secret."""
    for option in ("read_default_file", "read_default_group"):
        if option in url.query:
            raise DeployError(f"backups take the connection from the URL alone: remove its {option} option")
    socket = url.query.get("unix_socket")
    where = [f"--socket={socket}"] if socket else [f"--host={url.host or 'localhost'}", f"--port={url.port or 3306}"]
    ssl = [f"--{key.replace('_', '-')}={url.query[key]}" for key in SSL_OPTIONS if key in url.query]
    protocol = "SOCKET" if socket else "TCP"  # PyMySQL reaches "localhost" by TCP, the tools by socket
    user = [f"--user={url.username}"] if url.username else []
    return [f"--protocol={protocol}", *where, *ssl, *user, "--default-character-set=utf8mb4"]


def option_file(url: URL, program: str, more: Iterable[str] = ()) -> str:
    """A client's only option file: the global ones included, then [client] with the URL's password (and
    `more` lines). A line too long for the client is refused rather than sent in part."""
    lines = [f"password={option_value(url.password or '')}", *more]
    if any(len(line.encode()) > OPTION_LINE_BYTES for line in lines):
        # The tool would read the rest of the line as options of its own, and name them in its error.
        raise DeployError(
            own(
                f"the password is too long for {Path(program).name} (its option files hold lines of at most "
                f"{OPTION_LINE_BYTES} bytes, `password=`, quotes and escapes included): nothing was sent; give "
                f"{url.username or 'the user'} a shorter password"
            )
        )
    includes = "".join(f"!include {name}\n" for name in GLOBAL_OPTION_FILES if os.access(name, os.R_OK))
    return includes + "[client]\n" + "".join(f"{line}\n" for line in lines)


def run_tool(programs: tuple[str, ...], url: URL, args: list[str], tool: Tool, feed=None, sink=None) -> None:
    """Run a client tool as the URL's user, feeding its stdin from `feed` or its stdout to `sink`.

    The password reaches it in an option file on a pipe: never argv, environment or disk. It is the
    tool's only option file (--defaults-extra-file would let a [client] password in ~/.my.cnf win);
    the global ones are included first, so their settings still apply."""
    program = client_program(*programs)
    read, write = os.pipe()
    with os.fdopen(write, "w", encoding="utf-8") as options:  # a few kB at most: the pipe's buffer holds them
        options.write(option_file(url, program))
    argv = [program, f"--defaults-file=/dev/fd/{read}", *connection_args(url), *args]
    still_open = [read]

    def close_read() -> None:  # once: a second close could hit a descriptor reused meanwhile
        while still_open:
            os.close(still_open.pop())

    try:
        tool.run(argv, feed, sink, pass_fds=(read,), opened=close_read)
    finally:
        close_read()  # the tool could not start


# -- Connections: one TLS context per process, and the server's free connections -----------------------

# PyMySQL builds an SSLContext for every connection, also in its default "preferred" mode (TLS when the
# server offers it), and loading the system's CA certificates takes tens of milliseconds: a fleet's
# hundreds of connections spent a third of the server's CPU on it. Connections with the same TLS options
# share one context instead, built by PyMySQL's own code (so verified exactly as PyMySQL would), once per
# process; a fleet's children inherit it from the parent that warmed it up before forking. A certificate
# file changed while the process runs is read again only by the next process.
_TLS_CONTEXTS: dict[tuple, ssl.SSLContext] = {}
_TLS_BUILDING = threading.Lock()


def tls_context(options: dict | ssl.SSLContext, build: Callable[[dict], ssl.SSLContext]) -> ssl.SSLContext:
    """The process's context for PyMySQL's TLS `options` (its ssl dict), built by `build` the first time."""
    if isinstance(options, ssl.SSLContext):
        return options  # the application's own context, used as given
    try:
        key = tuple(sorted(options.items()))
        hash(key)
    except TypeError:  # an option PyMySQL would take but that cannot be a key: built as PyMySQL does
        return build(options)
    with _TLS_BUILDING:
        if key not in _TLS_CONTEXTS:
            _TLS_CONTEXTS[key] = build(options)
        return _TLS_CONTEXTS[key]


@cache
def shared_tls_driver() -> ModuleType:
    """PyMySQL, as SQLAlchemy's `module=`, whose connections take their TLS context from tls_context()."""
    import pymysql

    class SharedTLSConnection(pymysql.connections.Connection):
        def _create_ssl_ctx(self, sslp):
            return tls_context(sslp, super()._create_ssl_ctx)

    driver = ModuleType(pymysql.__name__, pymysql.__doc__)
    vars(driver).update(vars(pymysql))  # the same errors, constants and version SQLAlchemy asks for
    driver.connect = driver.Connect = driver.Connection = SharedTLSConnection
    return driver


def warm_tls_context(engine: Engine, connect_args: dict) -> None:
    """Build the TLS context the engine's connections will take, without connecting (PyMySQL chooses it
    while constructing a connection, before it connects)."""
    driver = engine.dialect.loaded_dbapi
    if driver is not shared_tls_driver():
        return
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    driver.connect(*cargs, **{**cparams, **connect_args, "defer_connect": True})


MAX_CONNECTIONS = "SELECT @@max_connections"
CONNECTED = "SHOW GLOBAL STATUS LIKE 'Threads_connected'"
RUNNING = "SHOW GLOBAL STATUS LIKE 'Threads_running'"


def server_spare_connections(connection: Connection) -> int | None:
    # Neither needs a privilege on MariaDB or MySQL; a server configured to refuse them gets None.
    opened_here = not connection.in_transaction()
    try:
        limit = connection.exec_driver_sql(MAX_CONNECTIONS).scalar_one()
        connected = connection.exec_driver_sql(CONNECTED).one()[1]
    except DBAPIError as exc:
        if server_code(exc.orig) not in PRIVILEGE_MISSING:
            raise
        return None
    finally:
        if opened_here:
            connection.rollback()  # no snapshot left open by these reads
    return max(0, int(limit) - int(connected))


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MariaDB(Dialect):
    names = ("mysql", "mariadb")
    backup_suffix = ".sql.gz"  # a mariadb-dump dump, gzipped (deploy/safety/backups.py)
    backup_incomplete = "the dump lacks its completion marker (-- Dump completed): it was cut short"
    transactional_ddl = False  # each DDL statement commits: a failed revision may leave part of its work
    server_programs = frozenset({"mariadbd", "mysqld"})

    def explain(self, orig: BaseException, url: URL, where: str) -> str:
        code = orig.args[0] if orig.args and isinstance(orig.args[0], int) else None
        if code in ACCESS_DENIED:
            return f"access denied for {where}: wrong user or password"
        if code in CANNOT_CONNECT:
            return f"cannot reach the database server for {where}: is it running?"
        if code == DATABASE_DENIED:
            return f"{url.username} may not use database {url.database!r} ({where}): does it exist, and is it granted?"
        if code == UNKNOWN_DATABASE:
            return f"database {url.database!r} does not exist on the server ({where})"
        if code in PRIVILEGE_MISSING:
            return f"{url.username} lacks a privilege on {where}: {relayed(str(orig.args[1]))}"
        detail = str(orig.args[1] if code is not None and len(orig.args) > 1 else orig).splitlines()
        return f"database error on {where}: {relayed(detail[0]) if detail else type(orig).__name__}"

    def engine_options(self, url: URL) -> dict:
        """PyMySQL with one TLS context per process and set of TLS options (see tls_context)."""
        return {"module": shared_tls_driver()} if url.get_driver_name() == "pymysql" else {}

    def warm_up(self, engine: Engine, connect_args: dict) -> None:
        """The TLS context its connections will share, built now (see warm_tls_context)."""
        warm_tls_context(engine, connect_args)

    def spare_connections(self, connection: Connection) -> int | None:
        """@@max_connections minus Threads_connected (SHOW GLOBAL STATUS needs no privilege)."""
        return server_spare_connections(connection)

    def busy_sessions(self, connection: Connection) -> int | None:
        """Threads_running less this session's own (SHOW GLOBAL STATUS needs no privilege)."""
        return max(0, int(connection.exec_driver_sql(RUNNING).one()[1]) - 1)

    def migration_lock(self, url: URL, session, wait: float):
        """GET_LOCK, on the session `session` gives it."""
        return server_lock(url, session, wait)

    def guard(self, connection: Connection, lock_wait_timeout: float, retries: int, pause: float):
        """lock_wait_timeout and innodb_lock_wait_timeout for the session; error 1205 is retried."""
        return server_guard(connection, lock_wait_timeout, retries, pause)

    def open_transactions(self, connection: Connection, older_than: float) -> list[Transaction]:
        """INNODB_TRX with PROCESSLIST (needs PROCESS to see other users')."""
        return server_open_transactions(connection, older_than)

    def bounded(self, connection: Connection, seconds: float):
        """The session's max_statement_time (0: no limit); error 1969 is TooSlow."""
        return server_bounded(connection, seconds)

    def character_length(self, expression):
        return func.char_length(expression)  # LENGTH() counts bytes

    def lint_risks(self, operation, found: list[tuple[str, str]], named: str) -> list[tuple[str, str]]:
        return merged(found, lint_risks(operation, named))

    def online(self, connection: Connection, guards):
        """ALGORITHM=INSTANT, else INPLACE with LOCK=NONE; a copy online or, small or allowed, in place."""
        return server_online(self, connection, guards)

    def online_refusal(self, connection: Connection, operation, guards) -> str | None:
        """A copy that is neither cheap, nor allowed (--allow-copy), nor possible online (copy_refusal)."""
        return copy_refusal(self, connection, operation, guards)

    def alteration(self, connection: Connection, operation) -> Alteration | None:
        """INSTANT, NOCOPY, INPLACE (LOCK=NONE) or COPY, by the server's kind and version and, for a column
        altered or dropped, its charset and indexes (see server_alteration)."""
        return live_alteration(connection, operation)

    def dump(self, url: URL, tool: Tool, write: Callable[[bytes], object]) -> None:
        """mariadb-dump (or mysqldump): SQL, ending in its completion marker."""
        remember(url.password)
        try:
            run_tool(("mariadb-dump", "mysqldump"), url, [*DUMP_FLAGS, "--", url.database], tool, sink=write)
        except DeployError as exc:
            raise DeployError(own(f"backup of {describe(url)} failed: {said(exc)}")) from None

    def load(self, url: URL, chunks: Callable[[], Iterable[bytes]], tool: Tool, connected) -> None:
        """The dump through the mariadb client (or mysql), after dropping every table and view."""
        # Tables made after the backup must go too; the drops lead the same session as the dump.
        with connected(url) as connection:
            rows = connection.exec_driver_sql("SHOW FULL TABLES").all()
        drop_as = {"VIEW": "VIEW", "SEQUENCE": "SEQUENCE"}
        drops = "".join(f"DROP {drop_as.get(kind, 'TABLE')} IF EXISTS {quote(name)};\n" for name, kind in rows)

        def feed() -> Iterable[bytes]:
            yield f"SET FOREIGN_KEY_CHECKS=0;\n{drops}".encode()
            yield from chunks()

        run_tool(("mariadb", "mysql"), url, [f"--database={url.database}"], tool, feed=feed())

    def complete(self, head: bytes, tail: bytes, size: int) -> bool:
        return tail.rstrip().rsplit(b"\n", 1)[-1].startswith(b"-- Dump completed")

    def named(self, head: bytes) -> str | None:
        # The dump's header: "-- Host: 127.0.0.1    Database: blog"
        found = re.search(rb"^-- Host: .*?\sDatabase: (.+?)\s*$", head, re.MULTILINE)
        return found[1].decode(errors="replace") if found else None

    def server_process(self, connection: Connection) -> int | None:
        # One process, a thread per connection; its pid file is on its machine.
        pid_file, datadir = connection.exec_driver_sql("SELECT @@pid_file, @@datadir").one()
        connection.rollback()
        path = Path(datadir or "/", pid_file or "")
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            raise LookupError(f"no readable pid file {path} on this machine") from None

    def table_size(self, connection: Connection, table: str, schema: str | None = None) -> tuple[int, int] | None:
        """information_schema.TABLES: InnoDB's estimated rows, and its data and index bytes."""
        found = connection.execute(
            text(
                "SELECT TABLE_ROWS, DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES"
                " WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table"
                " AND TABLE_TYPE = 'BASE TABLE'"
            ),
            {"schema": schema, "table": table},
        ).first()
        return (int(found[0] or 0), int(found[1] or 0)) if found else None

    def create_database(self, connection: Connection, name: str) -> bool:
        charset, collation = connection.exec_driver_sql(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA"
            " WHERE SCHEMA_NAME = DATABASE()"
        ).one()
        try:
            connection.exec_driver_sql(f"CREATE DATABASE {quote(name)} CHARACTER SET {charset} COLLATE {collation}")
        except DBAPIError as exc:
            if server_code(exc.orig) in {DATABASE_DENIED, *PRIVILEGE_MISSING}:
                return False
            raise
        return True

    def drop_database(self, connection: Connection, name: str) -> None:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {quote(name)}")

    def database_bytes(self, connection: Connection) -> int | None:
        found = connection.exec_driver_sql(
            "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
        ).scalar()
        return int(found or 0)

    def data_directory(self, connection: Connection) -> str | None:
        return connection.exec_driver_sql("SELECT @@datadir").scalar() or None

    # -- expand and contract (deploy.expand)

    def sync_columns(self, table: str, old: str, new: str, name: str, quote: Callable[[str], str]) -> list[str]:
        # An insert that sets the new column (only the new release does: it has no default yet) gives it
        # to the old one, else takes the old one's; an update gives the column it changed to the other.
        on, old, new = quote(table), quote(old), quote(new)
        inserted = f"IF NEW.{new} IS NULL THEN SET NEW.{new} = NEW.{old}; ELSE SET NEW.{old} = NEW.{new}; END IF"
        updated = (
            f"IF NOT (NEW.{new} <=> OLD.{new}) THEN SET NEW.{old} = NEW.{new};"
            f" ELSEIF NOT (NEW.{old} <=> OLD.{old}) THEN SET NEW.{new} = NEW.{old}; END IF"
        )
        return [
            f"CREATE TRIGGER {quote(name + '_ins')} BEFORE INSERT ON {on} FOR EACH ROW {inserted}",
            f"CREATE TRIGGER {quote(name + '_upd')} BEFORE UPDATE ON {on} FOR EACH ROW {updated}",
        ]

    def unsync_columns(self, table: str, name: str, quote: Callable[[str], str]) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {quote(name + suffix)}" for suffix in ("_ins", "_upd")]
