"""One migration at a time per database: a lock that a second run waits for, then names the holder of.

Each dialect keeps its own lock (deploy/dialects: GET_LOCK, an advisory lock, a lock file); a server's
is held by a session of its own, opened here. Either way, a process that dies loses its lock: the
server ends its session, the kernel drops its flock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import SQLAlchemyError

from ..credentials import describe
from ..database import connect, explain
from ..dialects import dialect_for
from ..errors import DeployError
from ..switches import setting

DEFAULT_WAIT = setting("lock_wait").default


@contextmanager
def migration_lock(
    url: URL, engine_options: dict | None = None, wait: float = DEFAULT_WAIT, connection: Connection | None = None
) -> Iterator[None]:
    """Hold the database's migration lock for the block, waiting up to `wait` s for it, else DeployError;
    held by `connection` when given (a connection to `url`'s database), else by a session of its own."""
    wait = max(0.0, wait)  # GET_LOCK would read a negative wait as "forever"
    dialect = dialect_for(url, "the migration lock")
    if connection is None:
        session = partial(session_lock, url, engine_options)
    else:
        session = partial(held_by, url, connection)
    with dialect.migration_lock(url, session, wait):
        yield


@contextmanager
def session_lock(url: URL, engine_options: dict | None, acquire, release) -> Iterator[None]:
    """A lock held by a session of its own, as the database servers keep them: `acquire(connection)`
    takes it (or raises), `release(connection)` gives it back; the session's end frees it anyway."""
    if not url.database:
        raise DeployError(f"the migration lock needs a database name in the URL ({describe(url)})")
    with connect(url, engine_options) as connection:
        # No transaction may stay open on this connection while it sits idle, holding the lock.
        with held_by(url, connection.execution_options(isolation_level="AUTOCOMMIT"), acquire, release):
            yield


@contextmanager
def held_by(url: URL, connection: Connection, acquire, release) -> Iterator[None]:
    """The lock taken by `connection` for the block: one connection fewer for a short read under it."""
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
