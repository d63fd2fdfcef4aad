"""Connections to the database, and their failures told in one line."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from .credentials import describe, remember
from .errors import DeployError

VERSION_TABLE = "alembic_version"

# MySQL/MariaDB client error numbers that have a clear meaning for the user.
ACCESS_DENIED = {1045, 1698}
DATABASE_DENIED = 1044
CANNOT_CONNECT = {2002, 2003, 2005, 2006, 2013}
UNKNOWN_DATABASE = 1049
PRIVILEGE_MISSING = {1142, 1143, 1227}

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
    """A PostgreSQL failure's SQLSTATE, from the error or, for one while connecting, its message."""
    if getattr(orig, "sqlstate", None):
        return orig.sqlstate
    message = str(orig).lower()
    return next((code for fragment, code in PG_CONNECT_MESSAGES if fragment in message), None)


def _pg_detail(orig: BaseException) -> str:
    """The server's own words, on one line: after libpq's "connection to server ... failed: FATAL:"."""
    line = (str(orig).splitlines() or [type(orig).__name__])[0]
    return line.rpartition("FATAL:")[2].strip() if "FATAL:" in line else line


def sqlite_path(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def explain(exc: BaseException, url: URL) -> str:
    """One line for a database failure; built from error codes, never from the URL's password."""
    orig = getattr(exc, "orig", None) or exc
    where = describe(url)
    if url.get_backend_name() == "postgresql":
        return _explain_postgresql(orig, url, where)
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
        return f"{url.username} lacks a privilege on {where}: {orig.args[1]}"
    detail = str(orig.args[1] if code is not None and len(orig.args) > 1 else orig).splitlines()
    return f"database error on {where}: {detail[0] if detail else type(orig).__name__}"


def _explain_postgresql(orig: BaseException, url: URL, where: str) -> str:
    """explain() for psycopg's errors: by SQLSTATE (PostgreSQL's codes, not MySQL's numbers)."""
    state = _sqlstate(orig)
    if state in PG_ACCESS_DENIED:
        return f"access denied for {where}: wrong user or password"
    if state in PG_CANNOT_CONNECT:
        return f"cannot reach the database server for {where}: is it running? ({_pg_detail(orig)})"
    if state == PG_UNKNOWN_DATABASE:
        return f"database {url.database!r} does not exist on the server ({where})"
    if state == PG_PRIVILEGE_MISSING and "permission denied for database" in str(orig):
        # Refused while connecting: no CONNECT privilege on the database.
        return f"{url.username} may not use database {url.database!r} ({where}): is it granted?"
    if state == PG_PRIVILEGE_MISSING:
        return f"{url.username} lacks a privilege on {where}: {_pg_detail(orig)}"
    return f"database error on {where}: {_pg_detail(orig)}"


@contextmanager
def connect(url: URL, options: dict | None = None, create: bool = False, hint: str = "") -> Iterator[Connection]:
    """A connection with no transaction open; `create` allows a new SQLite file, else `hint` says how."""
    remember(url.password)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        if not create:
            raise DeployError(f"no database at {path}{hint}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeployError(f"cannot create {path.parent}: {exc.strerror}") from None
    try:
        engine = create_engine(url, poolclass=NullPool, **(options or {}))
    except (NoSuchModuleError, ImportError):
        raise DeployError(f"no driver for {url.drivername!r} URLs: add it to requirements.txt") from None
    try:
        try:
            connection = engine.connect()
        except DBAPIError as exc:
            raise DeployError(explain(exc, url)) from None
        except Exception as exc:
            # Bad driver options (URL query, engine options): the driver says which, never the password.
            raise DeployError(f"cannot connect to {describe(url)}: {type(exc).__name__}: {exc}") from None
        with connection:
            yield connection
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Peer:
    """Where an open connection really goes: the URL, engine options and option files all had their say."""

    address: str
    local: bool


def peer(connection: Connection) -> Peer:
    """The other end of the connection's socket: a Unix socket, or an IP address and port."""
    driver_connection = connection.connection.dbapi_connection
    # psycopg and most drivers expose fileno(); PyMySQL keeps its socket in _sock.
    driver_socket = getattr(driver_connection, "_sock", None)
    fileno = getattr(driver_connection, "fileno", None) or getattr(driver_socket, "fileno", None)
    if fileno is None:
        raise DeployError(f"cannot tell where the {connection.dialect.driver} connection goes: refusing")
    with socket.socket(fileno=os.dup(fileno())) as sock:
        if sock.family == socket.AF_UNIX:
            return Peer(f"Unix socket {sock.getpeername() or '(unnamed)'}", local=True)
        host, port = sock.getpeername()[:2]
    address = ipaddress.ip_address(host)
    loopback = address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)
    return Peer(f"[{host}]:{port}" if address.version == 6 else f"{host}:{port}", local=loopback)


def application_tables(connection: Connection) -> list[str]:
    """Every table but Alembic's own."""
    names = inspect(connection).get_table_names()
    connection.rollback()
    return sorted(name for name in names if name != VERSION_TABLE)


@contextmanager
def translate_errors(url: URL) -> Iterator[None]:
    """Turn any SQLAlchemy error inside the block into a one-line DeployError."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise DeployError(explain(exc, url)) from None
