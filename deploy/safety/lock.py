"""One migration at a time per database: a lock that a second run waits for, then names the holder of.

MariaDB/MySQL: GET_LOCK on a connection of its own; SQLite: flock on a file beside the database.
Either way, a process that dies loses its lock: the server ends its session, the kernel drops its flock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

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
def server_lock(url: URL, engine_options: dict | None, wait: float) -> Iterator[None]:
    if not url.database:
        raise DeployError(f"the migration lock needs a database name in the URL ({describe(url)})")
    name = lock_name(url.database)
    with connect(url, engine_options) as connection:
        # No transaction may stay open on this connection while it sits idle, holding the lock.
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        try:
            connection.exec_driver_sql(IDLE_FOR_A_YEAR)
            acquired = connection.scalar(text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": wait})
            if acquired != 1:
                raise busy(url, wait, server_holder(connection, name))
        except SQLAlchemyError as exc:
            raise DeployError(explain(exc, url)) from None
        try:
            yield
        finally:
            try:
                connection.scalar(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
            except SQLAlchemyError:
                pass  # a lost connection has released the lock already: the server ended its session


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
    path = database.with_name(database.name + LOCK_FILE_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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


LOCKS = {"mysql": server_lock, "mariadb": server_lock, "sqlite": file_lock}
