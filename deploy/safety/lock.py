"""One migration at a time per database: a lock that a second run waits for, then names the holder of.

MariaDB/MySQL: GET_LOCK on a connection of its own; PostgreSQL: a session-level advisory lock
(pg_try_advisory_lock, polled) on a connection of its own; SQLite: flock on a lock file named after the
database's absolute path, in a folder of the user's own under /tmp, out of the project's working tree.
Either way, a process that dies loses its lock: the server ends its session, the kernel drops its flock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from .. import safety
from ..credentials import describe
from ..database import connect, explain, sqlite_path
from ..errors import DeployError

DEFAULT_WAIT = 10.0
LOCK_NAME_PREFIX = "migration-lock:"
GET_LOCK_NAME_MAX = 64  # bytes; MySQL refuses longer names (MariaDB does not, but the server may be MySQL)
LOCK_FILE_SUFFIX = ".migration-lock"
# A fixed folder, not $TMPDIR: two shells (or cron) with different TMPDIRs must find the same lock.
LOCK_FOLDER_ROOT = Path("/tmp")
POLL = 0.1
# An idle lock connection must outlive the longest migration: the server's default wait_timeout (8 h)
# would end the session, and with it the lock, in the middle of one.
IDLE_FOR_A_YEAR = "SET SESSION wait_timeout = 31536000"


@contextmanager
def migration_lock(url: URL, engine_options: dict | None = None, wait: float = DEFAULT_WAIT) -> Iterator[None]:
    """Hold the database's migration lock for the block, waiting up to `wait` s for it, else DeployError."""
    wait = max(0.0, wait)  # GET_LOCK would read a negative wait as "forever"
    with safety.for_dialect(LOCKS, url, "the migration lock")(url, engine_options, wait):
        yield


def lock_name(database: str) -> str:
    """GET_LOCK names are server-wide: one per database name, hashed when too long to be a name."""
    name = LOCK_NAME_PREFIX + database
    if len(name.encode()) <= GET_LOCK_NAME_MAX:
        return name
    digest = hashlib.sha256(database.encode()).hexdigest()
    return LOCK_NAME_PREFIX + digest[: GET_LOCK_NAME_MAX - len(LOCK_NAME_PREFIX)]


def busy(url: URL, wait: float, holder: str) -> DeployError:
    return DeployError(
        f"another migration holds the lock on {describe(url)} (waited {wait:g} s): {holder}; try again when it is done"
    )


@contextmanager
def session_lock(url: URL, engine_options: dict | None, acquire, release) -> Iterator[None]:
    """A lock held by a session of its own, as the database servers keep them: `acquire(connection)`
    takes it (or raises), `release(connection)` gives it back; the session's end frees it anyway."""
    if not url.database:
        raise DeployError(f"the migration lock needs a database name in the URL ({describe(url)})")
    with connect(url, engine_options) as connection:
        # No transaction may stay open on this connection while it sits idle, holding the lock.
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        try:
            acquire(connection)
        except SQLAlchemyError as exc:
            raise DeployError(explain(exc, url)) from None
        try:
            yield
        finally:
            try:
                release(connection)
            except SQLAlchemyError:
                pass  # a lost connection has released the lock already: the server ended its session


def server_lock(url: URL, engine_options: dict | None, wait: float):
    name = lock_name(url.database or "")

    def acquire(connection) -> None:
        connection.exec_driver_sql(IDLE_FOR_A_YEAR)
        acquired = connection.scalar(text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": wait})
        if acquired != 1:
            raise busy(url, wait, server_holder(connection, name))

    def release(connection) -> None:
        connection.scalar(text("SELECT RELEASE_LOCK(:name)"), {"name": name})

    return session_lock(url, engine_options, acquire, release)


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


@contextmanager
def file_lock(url: URL, engine_options: dict | None, wait: float) -> Iterator[None]:
    database = sqlite_path(url)
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


def advisory_lock(url: URL, engine_options: dict | None, wait: float):
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

    return session_lock(url, engine_options, acquire, release)


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


LOCKS = {"mysql": server_lock, "mariadb": server_lock, "postgresql": advisory_lock, "sqlite": file_lock}
