"""SQLite (SQLAlchemy's "sqlite" dialect): a database in a file, no server."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import pwd
import socket
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from alembic.operations import ops
from sqlalchemy import func
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..errors import DeployError, own, relayed
from .base import POLL, Dialect, Tool, TooSlow, busy, database_error, describe, said
from .guarded import Transaction, retrying

SQLITE_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
LOCK_FILE_SUFFIX = ".migration-lock"
# A fixed folder, not $TMPDIR: two shells (or cron) with different TMPDIRs must find the same lock.
LOCK_FOLDER_ROOT = Path("/tmp")


def database_file(url: URL) -> Path | None:
    if not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


@contextmanager
def file_lock(url: URL, wait: float) -> Iterator[None]:
    database = database_file(url)
    if database is None:  # in memory: no other process can see it
        yield
        return
    path = lock_file(database)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise DeployError(f"cannot open the migration lock file {path}: {exc.strerror}") from None
    try:
        if not flock_within(descriptor, wait):
            raise busy(url, wait, file_holder(descriptor))
        try:
            write_holder(descriptor)
            yield
        finally:
            # Emptied before it is unlocked, so that no one reads a finished run as the holder.
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def lock_file(database: Path) -> Path:
    """The lock file of a SQLite database: never beside it (a database in the checkout would leave an
    untracked file in `git status`), but in this user's lock folder, named after the database's
    absolute path, so that every process of the user that opens this database, by any path, finds it."""
    absolute = database.resolve()  # as SQLite opens it: relative to the working directory
    digest = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:16]
    return lock_folder() / f"{absolute.name}-{digest}{LOCK_FILE_SUFFIX}"


def lock_folder() -> Path:
    """/tmp/flask-schema-deploy-<uid>, this user's alone: made 0700, and refused if anyone else could
    have made or changed it (a folder of another user's would let them hold or fake our locks)."""
    folder = LOCK_FOLDER_ROOT / f"flask-schema-deploy-{os.geteuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        found = os.lstat(folder)
    except OSError as exc:
        raise DeployError(f"cannot make the migration lock folder {folder}: {exc.strerror}") from None
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid() or found.st_mode & 0o022:
        raise DeployError(
            f"the migration lock folder {folder} is not a folder of this user's alone: remove it, then try again"
        )
    return folder


def flock_within(descriptor: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(POLL, remaining))


def write_holder(descriptor: int) -> None:
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "user": user, "since": time.time()}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(holder).encode() + b"\n", 0)


def file_holder(descriptor: int) -> str:
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0))
        seconds = max(0, round(time.time() - holder["since"]))
        return f"pid {holder['pid']} on {holder['host']}, user {holder['user']}, for {seconds} s"
    except (ValueError, TypeError, KeyError):
        # The holder has not written its name yet (it has just taken the lock), or the file is foreign.
        return "a process that has not said who it is"


# SQLite calls the progress handler every this many virtual machine instructions.
PROGRESS_STEPS = 1000


@contextmanager
def file_bounded(connection: Connection, seconds: float) -> Iterator[None]:
    """A progress handler that interrupts the block's statements once `seconds` have passed since it began
    (SQLite has no per-statement limit of its own); SQLITE_INTERRUPT is TooSlow."""
    raw = connection.connection.driver_connection
    deadline = time.monotonic() + seconds
    if seconds > 0:
        raw.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
    try:
        yield
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlite_errorcode", None) == sqlite3.SQLITE_INTERRUPT:
            raise TooSlow(f"over {seconds:g} s") from None
        raise
    finally:
        raw.set_progress_handler(None, 0)
        if connection.in_transaction():
            connection.rollback()


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


def backed_up_file(url: URL) -> Path:
    path = database_file(url)
    if path is None:
        raise DeployError("an in-memory SQLite database cannot be backed up or restored")
    return path


class SQLite(Dialect):
    names = ("sqlite",)
    backup_suffix = ".sqlite.gz"  # a copy of the file, gzipped (deploy/safety/backups.py)
    backup_incomplete = "it holds no whole SQLite database (not the size its header records)"
    atomic_load = True  # the backup API copies every page in one step, one write transaction
    transactional_ddl = False  # as Alembic runs it: SQLite's DDL is not run in the revision's transaction
    server_programs: frozenset[str] = frozenset()  # no server: the database is a file

    def describe(self, url: URL) -> str:
        return f"SQLite {url.database or ':memory:'}"

    def database_file(self, url: URL) -> Path | None:
        return database_file(url)

    def explain(self, orig: BaseException, url: URL, where: str) -> str:
        return database_error(orig, where)

    def migration_lock(self, url: URL, session, wait: float):
        """flock on a lock file named after the database's absolute path (see lock_file)."""
        return file_lock(url, wait)

    def guard(self, connection: Connection, lock_wait_timeout: float, retries: int, pause: float):
        """PRAGMA busy_timeout; SQLITE_BUSY and SQLITE_LOCKED are retried."""
        return file_guard(connection, lock_wait_timeout, retries, pause)

    def open_transactions(self, connection: Connection, older_than: float) -> list[Transaction]:
        # One writer at a time, and no way to list the others: nothing to report.
        return []

    def lint_risks(self, operation, found: list[tuple[str, str]], named: str) -> list[tuple[str, str]]:
        return found  # the general risks only: no rules of its own

    def bounded(self, connection: Connection, seconds: float):
        """A progress handler stops the block's statements after `seconds` in all (see file_bounded)."""
        return file_bounded(connection, seconds)

    def character_length(self, expression):
        return func.length(expression)  # characters, for text

    def checks_existing_rows(self, operation) -> bool:
        # A foreign key is not enforced unless the connection turns foreign_keys on, and not when added.
        return not isinstance(operation, ops.CreateForeignKeyOp)

    def server_process(self, connection: Connection) -> int | None:
        return None

    def spare_connections(self, connection: Connection) -> int | None:
        return None  # no server: no limit on connections

    def busy_sessions(self, connection: Connection) -> int | None:
        return None  # no server to be busy: the application's writers wait on the file's lock

    def backup_name(self, url: URL) -> str:
        return backed_up_file(url).stem

    def dump(self, url: URL, tool: Tool, write: Callable[[bytes], object]) -> None:
        """A copy of the file through SQLite's backup API: a consistent snapshot even while the application writes."""
        path = backed_up_file(url)
        if not path.is_file():  # sqlite3.connect would create it
            raise DeployError(f"no database at {path}")
        try:
            with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(":memory:")) as copy:
                source.backup(copy)
                data = copy.serialize()
        except sqlite3.Error as exc:
            raise DeployError(own(f"backup of {describe(url)} failed: {said(exc)}")) from None
        write(data)
        tool.count(len(data))

    def load(self, url: URL, chunks: Callable[[], Iterable[bytes]], tool: Tool, connected) -> None:
        """Page by page into the live file, under SQLite's locks: open connections see the restored database."""
        data = b"".join(chunks())
        target = backed_up_file(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with closing(sqlite3.connect(":memory:")) as copy, closing(sqlite3.connect(target)) as live:
                copy.deserialize(data)
                copy.backup(live)
        except sqlite3.Error as exc:
            raise DeployError(relayed(str(exc))) from None
        tool.count(len(data))

    def complete(self, head: bytes, tail: bytes, size: int) -> bool:
        """A database file, as long as its header says: page size times page count (when the header's
        count is valid: it was written by the version counted at offset 92)."""
        if not head.startswith(b"SQLite format 3\0") or len(head) < 100:
            return False
        page_size = int.from_bytes(head[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages, changed, valid_for = (int.from_bytes(head[at : at + 4], "big") for at in (28, 24, 92))
        if pages and changed == valid_for:
            return size == page_size * pages
        return page_size > 0 and size % page_size == 0

    def readable(self, chunks: Callable[[], Iterable[bytes]], tool: Tool) -> str | None:
        """What SQLite's quick_check finds wrong in the database the file holds (its pages read through)."""
        data = b"".join(chunks())
        try:
            with closing(sqlite3.connect(":memory:")) as copy:
                copy.deserialize(data)
                found = [row[0] for row in copy.execute("PRAGMA quick_check(1)")]
        except sqlite3.Error as exc:
            return f"SQLite cannot read the database in it ({exc})"
        return None if found == ["ok"] else f"SQLite finds the database in it damaged ({found[0] if found else '?'})"

    def server_of(self, description: str, name: str) -> str | None:
        return None  # no server: the database is a file
