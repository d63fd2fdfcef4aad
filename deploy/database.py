"""Connections to the database, and their failures told in one line."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from . import dialects
from .credentials import describe
from .errors import DeployError, own, relayed, remember

VERSION_TABLE = "alembic_version"
# The tables the migrations keep about themselves, beside the application's: Alembic's, and the
# checksums of the revisions applied (review/checksums.py). No comparison with the models sees them.
CHECKSUMS_TABLE = "alembic_checksums"
# The release (commit) of the code each upgrade, downgrade and stamp ran with (deploy/releases.py).
RELEASES_TABLE = "alembic_releases"
# And deploy.backfill's progress.
SUITE_TABLES = frozenset({VERSION_TABLE, CHECKSUMS_TABLE, RELEASES_TABLE, "alembic_backfills"})


def sqlite_path(url: URL) -> Path | None:
    """The file of a database kept in one (SQLite's), else None."""
    return dialects.database_file(url)


def explain(exc: BaseException, url: URL) -> str:
    """One line for a database failure; built from error codes, never from the URL's password. The
    driver's and the server's words in it are marked relayed: masking touches them alone."""
    return dialects.explain(exc, url)


def engine_options(url: URL, options: dict | None = None) -> dict:
    """The create_engine() options for `url`: its dialect's (a TLS context shared by the process), with
    the application's `options` (SQLALCHEMY_ENGINE_OPTIONS) over them."""
    dialect = dialects.find(url)
    return {**(dialect.engine_options(url) if dialect is not None else {}), **(options or {})}


def warm_up(url: URL, options: dict | None = None) -> None:
    """Before forking workers that connect to `url`: import its driver and build, once, what each of their
    connections would build again (MariaDB's TLS context), for the children to inherit. No connection."""
    chosen = engine_options(url, options)
    dialect = dialects.find(url)
    try:
        engine = create_engine(url, poolclass=NullPool, **chosen)
        try:
            if dialect is not None:
                dialect.warm_up(engine, dict(chosen.get("connect_args") or {}))
        finally:
            engine.dispose()
    except Exception:
        return  # only a saving: what fails here, each connection says in its own one line


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
        engine = create_engine(url, poolclass=NullPool, **engine_options(url, options))
    except (NoSuchModuleError, ImportError):
        raise DeployError(f"no driver for {url.drivername!r} URLs: add it to requirements.txt") from None
    try:
        try:
            connection = engine.connect()
        except DBAPIError as exc:
            raise DeployError(explain(exc, url)) from None
        except Exception as exc:
            # Bad driver options (URL query, engine options): the driver says which, never the password.
            said = relayed(f"{type(exc).__name__}: {exc}")
            raise DeployError(own(f"cannot connect to {describe(url)}: {said}")) from None
        with connection:
            yield connection
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Peer:
    """Where an open connection really goes: the URL, engine options and option files all had their say."""

    address: str
    local: bool
    # Local: the proof that the server runs on this machine; not local: why none could be given.
    proof: str = ""


def peer(connection: Connection) -> Peer:
    """The other end of the connection's socket (a Unix socket, or an IP address and port), and whether
    the database server itself, a process of this machine, holds it."""
    driver_connection = connection.connection.dbapi_connection
    # psycopg and most drivers expose fileno(); PyMySQL keeps its socket in _sock.
    driver_socket = getattr(driver_connection, "_sock", None)
    fileno = getattr(driver_connection, "fileno", None) or getattr(driver_socket, "fileno", None)
    if fileno is None:
        raise DeployError(f"cannot tell where the {connection.dialect.driver} connection goes: refusing")
    with socket.socket(fileno=os.dup(fileno())) as sock:
        if sock.family == socket.AF_UNIX:
            address = f"Unix socket {sock.getpeername() or '(unnamed)'}"
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            holder: _Holder = _UnixHolder(struct.unpack("3i", creds)[0])
        else:
            host, port = sock.getpeername()[:2]
            mine = sock.getsockname()[:2]
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            ip = ipaddress.ip_address(host)
            mapped = getattr(ip, "ipv4_mapped", None)
            if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
                return Peer(address, local=False)
            holder = _TcpHolder((host, port), mine)
    # A port forward (ssh -L, socat) listens on this machine and relays to a server elsewhere: the socket's
    # address proves nothing. The server says which process serves this connection (its dialect asks it),
    # and this machine's kernel must show that very process, one of the dialect's programs, holding the
    # connection's other end.
    dialect = dialects.find(connection)
    try:
        served_by = dialect.server_process(connection) if dialect is not None else None
    except LookupError as exc:
        return Peer(address, False, str(exc))
    except Exception as exc:  # the server would not say (privileges, a server of another kind)
        return Peer(address, False, f"the server would not say which process serves it ({type(exc).__name__})")
    if served_by is None:
        return Peer(address, False, f"a {connection.dialect.name} server cannot say which process it is")
    proven, proof = holder.proof(served_by, set(dialect.server_programs))
    return Peer(address, proven, proof)


class _Holder:
    def proof(self, pid: int, programs: set[str]) -> tuple[bool, str]:
        """Whether the server's process `pid` (one of `programs`) holds the other end, and how that is known."""
        raise NotImplementedError


def _program(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class _UnixHolder(_Holder):
    """A Unix socket's other end: the kernel names the process that listens on it (SO_PEERCRED)."""

    listener: int

    def proof(self, pid: int, programs: set[str]) -> tuple[bool, str]:
        # PostgreSQL's backends are forked by the process that listens (the postmaster).
        candidates = {pid, _parent(pid)}
        if self.listener in candidates and _program(self.listener) in programs:
            return True, f"the server's process {self.listener} ({_program(self.listener)}) listens on this socket"
        return False, f"the socket is held by process {self.listener}, not by the server's own ({pid})"


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class _TcpHolder(_Holder):
    """A loopback TCP connection's other end: this machine's socket table names its inode, and the
    server's process must hold that socket."""

    theirs: tuple[str, int]
    mine: tuple[str, int]

    def proof(self, pid: int, programs: set[str]) -> tuple[bool, str]:
        program = _program(pid)
        if program not in programs:
            return False, (
                f"the server's process ({pid} on its machine) is no {' or '.join(sorted(programs))} process "
                "on this machine"
            )
        inode = _tcp_inode(self.theirs, self.mine)
        if inode is None:
            return False, "this machine's socket table has no other end of the connection"
        try:
            held = any(
                os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]" for fd in os.listdir(f"/proc/{pid}/fd")
            )
        except OSError:
            # Another user's server: its descriptors are hidden, but the socket's owner is not.
            owner, server_user = _tcp_owner(inode), _uid(pid)
            if owner is not None and owner == server_user and owner != os.geteuid():
                return True, (
                    f"the server's process {pid} ({program}) runs as the user (uid {owner}) who holds the other "
                    "end of this connection"
                )
            return False, f"the other end of this connection is not held by the server's process {pid} ({program})"
        if held:
            return True, f"the server's process {pid} ({program}) holds the other end of this connection"
        return False, f"the other end of this connection is held by another process than the server's {pid} ({program})"


def _tcp_table() -> list[list[str]]:
    rows = []
    for name in ("tcp", "tcp6"):
        try:
            rows += [line.split() for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]]
        except OSError:
            continue
    return rows


def _endpoint(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """/proc/net/tcp's `HEX:PORT`: the address in the kernel's byte order, 32 bits at a time."""
    hexaddr, hexport = text.split(":")
    words = bytes.fromhex(hexaddr)
    raw = b"".join(words[i : i + 4][::-1] for i in range(0, len(words), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, int(hexport, 16)


def _normal(endpoint: tuple[str, int]) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    address = ipaddress.ip_address(endpoint[0].split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, int(endpoint[1])


def _tcp_row(theirs: tuple[str, int], mine: tuple[str, int]) -> list[str] | None:
    """The socket table's row of the other end: its local address is our peer, its remote one is us."""
    local, remote = _normal(theirs), _normal(mine)
    for row in _tcp_table():
        try:
            if _endpoint(row[1]) == local and _endpoint(row[2]) == remote:
                return row
        except (ValueError, IndexError):
            continue
    return None


def _tcp_inode(theirs: tuple[str, int], mine: tuple[str, int]) -> int | None:
    row = _tcp_row(theirs, mine)
    return int(row[9]) if row is not None and row[9] != "0" else None


def _tcp_owner(inode: int) -> int | None:
    for row in _tcp_table():
        if len(row) > 9 and row[9] == str(inode):
            return int(row[7])
    return None


def _uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def application_tables(connection: Connection) -> list[str]:
    """Every table but the migrations' own."""
    names = inspect(connection).get_table_names()
    connection.rollback()
    return sorted(name for name in names if name not in SUITE_TABLES)


@contextmanager
def translate_errors(url: URL) -> Iterator[None]:
    """Turn any SQLAlchemy error inside the block into a one-line DeployError."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise DeployError(explain(exc, url)) from None
