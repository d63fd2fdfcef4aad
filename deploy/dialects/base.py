"""What a database must provide, and the registry that finds its dialect by SQLAlchemy's dialect name.

Every piece of knowledge that differs by database lives in one subclass of `Dialect` (one module each);
the rest of the suite asks the dialect of a URL, connection or engine (`dialect_for`), never its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..errors import DeployError, own, relayed

if TYPE_CHECKING:  # fab's laptop side names databases (credentials.describe) without importing SQLAlchemy
    from sqlalchemy.engine import URL, Connection, Engine

# The modules of deploy/dialects that hold a dialect, imported on the first lookup.
MODULES = ("mariadb", "postgresql", "sqlite")
REGISTRY: dict[str, Dialect] = {}
# The class attributes every dialect must set (declared on Dialect, with what each means).
ANSWERS = ("transactional_ddl", "backup_suffix", "backup_incomplete", "server_programs")
# Every dialect's migration lock is named after the database, with this prefix (a key is hashed from it).
LOCK_NAME_PREFIX = "migration-lock:"
POLL = 0.1  # seconds between tries, for a lock that cannot be waited for


class TooSlow(Exception):
    """A statement ran past the time limit bounded() set; it was stopped, the connection is still usable."""


@dataclass(frozen=True)
class Alteration:
    """What one Alembic operation does to a table that already exists, on this server, in the form the
    suite runs it: how the server does it (its own word: "INSTANT", "INPLACE", "COPY", "catalog only",
    "index build", "validation scan", "rewrite"), what it blocks while it works ("nothing", "writes",
    "reads and writes"), and whether its time grows with the table's rows (a copy, a scan, a build)."""

    how: str
    blocks: str
    per_row: bool
    # The safer form the suite runs instead of what the revision wrote, when it does
    # ("ALGORITHM=INPLACE, LOCK=NONE", "CONCURRENTLY", "NOT VALID, then VALIDATE", "pt-online-schema-change").
    online: str | None = None


class Dialect(ABC):
    """One database's answers. A subclass names the SQLAlchemy dialects it serves in `names`, and is
    registered (one instance) when its module is imported."""

    names: ClassVar[tuple[str, ...]] = ()
    # The suffix of its backups' files, which says how they are dumped, loaded and verified.
    backup_suffix: ClassVar[str]
    # Why a dump that is not complete() cannot be used, as verify() says it.
    backup_incomplete: ClassVar[str]
    # Its load is one transaction: a failed one leaves the database as it was, with no backup to put back.
    atomic_load: ClassVar[bool] = False
    # Whether a failed revision's DDL is rolled back with its transaction (else it may be left half done).
    transactional_ddl: ClassVar[bool]
    # The programs its server runs as, for the proof that a server is on this machine (none: no server).
    server_programs: ClassVar[frozenset[str]]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # ABCMeta finds a class abstract only after this hook has run: what it lacks is told here, at import.
        missing = sorted(
            name for name in Dialect.__abstractmethods__ if getattr(getattr(cls, name), "__isabstractmethod__", False)
        )
        missing += [name for name in ANSWERS if not hasattr(cls, name)]
        if missing:
            raise TypeError(f"the {cls.__name__} dialect does not provide {', '.join(missing)}")
        dialect = cls()
        for name in cls.names:
            REGISTRY[name] = dialect

    def describe(self, url: URL) -> str:
        """How messages name the database; never with the password."""
        return server_address(url)

    def database_file(self, url: URL) -> Path | None:
        """The file that holds the database, for a database kept in a file; None for a server's."""
        return None

    @abstractmethod
    def explain(self, orig: BaseException, url: URL, where: str) -> str:
        """One line for the driver's error `orig` on the database `where`; the driver's and server's
        words in it marked relayed, the password never in it."""

    @abstractmethod
    def migration_lock(self, url: URL, session, wait: float) -> AbstractContextManager[None]:
        """One migration at a time: the database's lock, held for the block, waited for up to `wait` s,
        else busy(). `session(acquire, release)` holds one taken by a session (see guards.lock)."""

    @abstractmethod
    def guard(
        self, connection: Connection, lock_wait_timeout: float, retries: int, pause: float
    ) -> AbstractContextManager[None]:
        """The guarded session: within the block each statement waits at most `lock_wait_timeout` s for a
        lock, then is tried again after `pause` s, `retries` times, before GaveWay names what blocked it."""

    @abstractmethod
    def open_transactions(self, connection: Connection, older_than: float) -> list:
        """Other connections' transactions (guarded.Transaction) open longer than `older_than` s, oldest first."""

    @abstractmethod
    def lint_risks(self, operation, found: list[tuple[str, str]], named: str) -> list[tuple[str, str]]:
        """The lint's findings (name, reason) for one Alembic operation on a table that holds rows: `found`,
        the general ones, with this database's own added (see merged()) or let go; `named` is the
        operation's name, to build its findings' names from."""

    def lint_in_revision(self, operations: list) -> dict[int, str]:
        """Reasons, by position in one revision's `operations`, that an operation blocks the application
        where it stands among the others (its least-locking form cannot run there). None by default."""
        return {}

    @abstractmethod
    def bounded(self, connection: Connection, seconds: float) -> AbstractContextManager[None]:
        """Within the block a statement runs at most `seconds` (0: no limit), else it is stopped and TooSlow
        raised; the block reads only (what it leaves open is rolled back)."""

    @abstractmethod
    def character_length(self, expression):
        """SQL for the length of a string `expression` in characters (not bytes), as VARCHAR(n) counts them."""

    def checks_existing_rows(self, operation) -> bool:
        """Whether adding this constraint (a foreign key, a CHECK) makes the database check the rows already
        there, so that the upgrade fails on one that breaks it. Yes by default."""
        return True

    @abstractmethod
    def server_process(self, connection: Connection) -> int | None:
        """The pid, in the server's own machine, of the process that serves `connection`; None when the
        database has no server. LookupError says why it cannot be told."""

    @abstractmethod
    def spare_connections(self, connection: Connection) -> int | None:
        """How many more connections the server accepts now (ordinary users'; 0 when full); None when it
        cannot be told, or there is no limit (a database without a server)."""

    @abstractmethod
    def busy_sessions(self, connection: Connection) -> int | None:
        """How many other sessions run a statement on the server now, the load a backfill waits out
        (deploy.backfill); None when the database has no server."""

    def alteration(self, connection: Connection, operation) -> Alteration | None:
        """What `operation` (an alembic.operations.ops object) does to its existing table on the server of
        `connection`, as the suite runs it; None when it changes no existing table, or cannot be told."""
        return None

    def unfinished_indexes(self, connection: Connection) -> frozenset[str]:
        """The indexes the server keeps but does not use: left by a build that failed or was stopped, which
        the next upgrade drops before building them again. No one's schema, so no drift. None by default."""
        return frozenset()

    def table_size(self, connection: Connection, table: str, schema: str | None = None) -> tuple[int, int] | None:
        """(rows, bytes) of a table as the server's statistics estimate them, without scanning it; None when
        the database keeps no such statistics or the table does not exist."""
        return None

    def online(self, connection: Connection, guards) -> AbstractContextManager[None]:
        """Around each revision as it runs on `connection`: its DDL takes the least-locking form this
        database offers, within what `guards` (the run's switches) allow. As written by default."""
        return nullcontext()

    def online_refusal(self, connection: Connection, operation, guards) -> str | None:
        """Why `operation` will not run on the server of `connection` within what `guards` allow: it would
        block the application for as long as its table takes to copy, and no online form can make it
        (the way out said too). None: it may run."""
        return None

    def engine_options(self, url: URL) -> dict:
        """create_engine() options for `url`'s connections (an application's own options override them)."""
        return {}

    def warm_up(self, engine: Engine, connect_args: dict) -> None:
        """Before a process forks its workers: build once what each of `engine`'s connections (with these
        `connect_args`) would build again, so that the children inherit it. Nothing by default."""
        return None

    def backup_name(self, url: URL) -> str:
        """The database's name, which its backups' files and retention go by."""
        return url.database or ""

    @abstractmethod
    def dump(self, url: URL, tool: Tool, write: Callable[[bytes], object]) -> None:
        """The whole database, uncompressed, to `write` (a client program run by `tool`)."""

    @abstractmethod
    def load(self, url: URL, chunks: Callable[[], Iterable[bytes]], tool: Tool, connected) -> None:
        """Make the database exactly the dump that `chunks()` yields, objects made since dropped too;
        `connected(url)` is a connection whose errors are one line each."""

    @abstractmethod
    def complete(self, head: bytes, tail: bytes, size: int) -> bool:
        """Whether the uncompressed dump, by its first and last bytes and its size, is whole."""

    def readable(self, chunks: Callable[[], Iterable[bytes]], tool: Tool) -> str | None:
        """What the database's own tool finds wrong reading the whole dump, or None."""
        return None

    def named(self, head: bytes) -> str | None:
        """The name of the database dumped, as the dump's first bytes say (for a file without its note)."""
        return None

    def server_of(self, description: str, name: str) -> str | None:
        """host:port of a describe() text of the database `name`; None when not recorded (or no server)."""
        if not description.endswith(f"/{name}"):
            return None
        return description[: -len(name) - 1].rpartition("@")[2]

    def error_line(self, exc: BaseException, url: URL) -> str:
        """explain() for any error SQLAlchemy wraps, marked as the suite's own words."""
        orig = getattr(exc, "orig", None) or exc
        return own(self.explain(orig, url, self.describe(url)))

    # -- a rehearsal's copy (deploy.rehearsal): a scratch database beside the live one, on its server

    def create_database(self, connection: Connection, name: str) -> bool:
        """Create the empty database `name` on the server of `connection` (in autocommit), with the character
        set and collation of the connection's own; False when its user may not create one."""
        raise DeployError(f"a rehearsal needs a database server: {connection.dialect.name} has none to copy on")

    def drop_database(self, connection: Connection, name: str) -> None:
        """Drop the database `name` (made by create_database), if it is there, though sessions remain on it."""
        raise DeployError(f"a rehearsal needs a database server: {connection.dialect.name} has none to copy on")

    def database_bytes(self, connection: Connection) -> int | None:
        """How much disk the connection's database takes, as the server's statistics say; None if they don't."""
        return None

    def data_directory(self, connection: Connection) -> str | None:
        """Where the server keeps its databases' files, on its own machine; None when it will not say."""
        return None

    # -- expand and contract (deploy.expand): a renamed column's old and new names kept equal by triggers

    def sync_columns(self, table: str, old: str, new: str, name: str, quote: Callable[[str], str]) -> list[str]:
        """The statements that keep `table`.`old` and `table`.`new` equal under the writes of a release
        that knows one name only (the triggers called `name`...); `quote` quotes a name. None by default:
        a database without a server (SQLite) is never served by two releases at once."""
        return []

    def unsync_columns(self, table: str, name: str, quote: Callable[[str], str]) -> list[str]:
        """The statements that remove what sync_columns(..., `name`, ...) made, where it is."""
        return []


class Tool:
    """Runs a client program for a dialect's dump, load or check (deploy/safety/backups.py gives one)."""

    def run(self, argv: list[str], feed=None, sink=None, pass_fds=(), env=None, opened=None) -> None:
        """Run `argv`, its stdin fed from `feed` or its stdout to `sink`; its first stderr line (masked)
        as a DeployError when it fails. `opened()` is called once it has started."""
        raise NotImplementedError

    def count(self, size: int) -> None:
        """`size` more bytes of the dump have passed (for the progress shown)."""
        raise NotImplementedError


def said(exc: BaseException) -> str:
    """An error's message with what it relays still marked, for a message that wraps it."""
    return getattr(exc, "marked", None) or str(exc)


def server_address(url: URL) -> str:
    """user@host:port/database: a database on a server."""
    user = f"{url.username}@" if url.username else ""
    port = f":{url.port}" if url.port else ""
    return f"{user}{url.host or 'localhost'}{port}/{url.database or ''}"


def database_file(url: URL) -> Path | None:
    """The file that holds the database of `url`, if its dialect keeps it in one."""
    dialect = find(url)
    return dialect.database_file(url) if dialect is not None else None


def describe(url: URL) -> str:
    """How messages name the database of `url`, by its dialect (a server's address if none knows it)."""
    dialect = find(url)
    return dialect.describe(url) if dialect is not None else server_address(url)


def explain(exc: BaseException, url: URL) -> str:
    """One line for a database failure, by the dialect of `url` (the driver's first line if none knows it)."""
    dialect = find(url)
    if dialect is None:
        return own(database_error(getattr(exc, "orig", None) or exc, describe(url)))
    return dialect.error_line(exc, url)


def database_error(orig: BaseException, where: str) -> str:
    """The line for an error no dialect knows better: the driver's first line, relayed."""
    detail = str(orig).splitlines()
    return f"database error on {where}: {relayed(detail[0]) if detail else type(orig).__name__}"


def busy(url: URL, wait: float, holder: str) -> DeployError:
    return DeployError(
        f"another migration holds the lock on {describe(url)} (waited {wait:g} s): {holder}; try again when it is done"
    )


def name_of(where: URL | Connection | Engine | str) -> str:
    """SQLAlchemy's dialect name of a URL (its backend), a connection, an engine, or the name itself."""
    if isinstance(where, str):
        return where
    backend = getattr(where, "get_backend_name", None)  # a URL
    return backend() if backend is not None else where.dialect.name


def registry() -> dict[str, Dialect]:
    """Every dialect by SQLAlchemy's names for it, in the names' order; importing their modules
    registers them. Sorted, because which module a process imported first must not order a message."""
    for module in MODULES:
        import_module(f"{__package__}.{module}")
    return dict(sorted(REGISTRY.items()))


def find(where: URL | Connection | Engine | str) -> Dialect | None:
    """The dialect of `where`, or None. Imports the module named like the dialect first, then the others
    until one registers the name: a command on SQLite loads neither MariaDB's nor PostgreSQL's module."""
    name = name_of(where)
    for module in sorted(MODULES, key=lambda module: module != name):
        if name in REGISTRY:
            break
        import_module(f"{__package__}.{module}")
    return REGISTRY.get(name)


def dialect_for(where: URL | Connection | Engine | str, what: str = "this") -> Dialect:
    """The dialect of `where`; a DeployError naming `what` is not supported when none serves it."""
    dialect = find(where)
    if dialect is None:
        supported = ", ".join(registry())
        raise DeployError(f"{what} is not supported on {name_of(where)} databases (supported: {supported})")
    return dialect


def merged(found: list[tuple[str, str]], own: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """One finding per operation name: a dialect's reason joins a general one of the same name."""
    found = list(found)
    for op_name, reason in own:
        same = [i for i, (known, _) in enumerate(found) if known == op_name]
        if same:
            found[same[0]] = (op_name, f"{found[same[0]][1]}; {reason}")
        else:
            found.append((op_name, reason))
    return found


def widens_varchar(old, new) -> bool:
    """Whether a type change only makes a VARCHAR longer (same charset and collation)."""
    varchar = {"string", "VARCHAR", "unicode", "NVARCHAR"}
    if old is None or not all(type_.__visit_name__ in varchar and type_.length for type_ in (old, new)):
        return False
    if any(getattr(old, key, None) != getattr(new, key, None) for key in ("collation", "charset")):
        return False
    return new.length >= old.length
