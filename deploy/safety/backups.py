"""Verified backups, and restoring one: plain functions for the db.* tasks.

A backup is `<name>-<UTC time>-<revision>.sql.gz` (MariaDB/MySQL: a mariadb-dump dump), `.pgdump.gz`
(PostgreSQL: a pg_dump custom-format archive) or `.sqlite.gz` (SQLite: a copy of the file) beside a
sidecar `<that name>.json` holding the database (never the password), its name, the revision, the time
and the size. A backup is kept only once it is verified (complete gzip stream, the dump's completion
marker; a PostgreSQL archive read through by pg_restore, a SQLite file by quick_check), and only the
newest `keep` of a database stay. A restore is all or nothing: a failed load is undone from a backup
of the database taken just before it, and a backup of another database is refused unless named.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time as clock
import zlib
from collections.abc import Callable, Iterable
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL

from ..credentials import describe
from ..database import connect, sqlite_path, translate_errors
from ..dialects import dialect_for
from ..errors import DeployError, mask, own, relayed, remember

CHUNK = 256 * 1024
PROGRESS_SECONDS = 0.5
HEAD = 1024
TAIL = 4096
DUMP_FLAGS = (
    "--single-transaction",  # a consistent InnoDB snapshot, without locking the application out
    "--routines",
    "--triggers",
    "--events",
    "--no-tablespaces",  # MySQL's mysqldump needs PROCESS for them otherwise
    "--hex-blob",
)
# The client tools' own global option files; the user's ~/.my.cnf is left out on purpose (below).
GLOBAL_OPTION_FILES = ("/etc/my.cnf", "/etc/mysql/my.cnf")
SSL_OPTIONS = ("ssl_ca", "ssl_cert", "ssl_key", "ssl_capath", "ssl_cipher")
# The client tools read an option file in pieces of 4094 bytes: the rest of a longer line is read as a
# line of its own (an option they name in their error).
OPTION_LINE_BYTES = 4094
# What ends a process from outside (a service stopped, a terminal closed): a restore's load is put back first.
STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class Backup:
    path: Path
    database: str  # user@host:port/name as `describe` gives it: never the password
    name: str  # the database's name: what retention and list_backups go by
    revision: str | None
    time: datetime  # UTC, when the dump started
    size: int  # bytes on disk

    def __str__(self) -> str:
        size = f"{self.size / 2**20:.1f} MB" if self.size >= 2**20 else f"{self.size / 1024:.1f} kB"
        return f"{self.time:%Y-%m-%d %H:%M:%S} UTC  {self.revision or '(no revision)'}  {size}  {self.path}"


def default_directory(instance_path: str | os.PathLike) -> Path:
    return Path(instance_path) / "backups"


class _Meter:
    """Calls progress(bytes so far) at most every PROGRESS_SECONDS."""

    def __init__(self, progress: Callable[[int], object] | None):
        self.progress, self.done, self.last = progress, 0, clock.monotonic()

    def add(self, count: int) -> None:
        self.done += count
        if self.progress and clock.monotonic() - self.last >= PROGRESS_SECONDS:
            self.last = clock.monotonic()
            self.progress(self.done)


# -- MariaDB / MySQL ---------------------------------------------------------------------------------


def _program(*names: str) -> str:
    for name in names:
        # Then the system's default path: an SSH command's PATH may hold little more than a venv.
        if found := shutil.which(name) or shutil.which(name, path=os.defpath):
            return found
    raise DeployError(f"neither {' nor '.join(names)} is installed: install the MariaDB client (mariadb-client)")


def _option_value(value: str) -> str:
    # Option files read "..." with these escapes; unquoted, `#` would start a comment and spaces be cut.
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(escapes.get(char, char) for char in value) + '"'


def _connection_args(url: URL) -> list[str]:
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


def _run(programs: tuple[str, ...], url: URL, args: list[str], meter: _Meter, feed=None, sink=None) -> None:
    """Run a client tool as the URL's user, feeding its stdin from `feed` or its stdout to `sink`.

    The password reaches it in an option file on a pipe: never argv, environment or disk. It is the
    tool's only option file (--defaults-extra-file would let a [client] password in ~/.my.cnf win);
    the global ones are included first, so their settings still apply."""
    program = _program(*programs)
    password_line = f"password={_option_value(url.password or '')}"
    if len(password_line.encode()) > OPTION_LINE_BYTES:
        # The tool would read the rest of the line as options of its own, and name them in its error.
        raise DeployError(
            own(
                f"the password is too long for {Path(program).name} (its option files hold lines of at most "
                f"{OPTION_LINE_BYTES} bytes, `password=`, quotes and escapes included): nothing was sent; give "
                f"{url.username or 'the user'} a shorter password"
            )
        )
    includes = "".join(f"!include {name}\n" for name in GLOBAL_OPTION_FILES if os.access(name, os.R_OK))
    read, write = os.pipe()
    with os.fdopen(write, "w", encoding="utf-8") as options:  # a few kB at most: the pipe's buffer holds them
        options.write(f"{includes}[client]\n{password_line}\n")
    argv = [program, f"--defaults-file=/dev/fd/{read}", *_connection_args(url), *args]
    still_open = [read]

    def close_read() -> None:  # once: a second close could hit a descriptor reused meanwhile
        while still_open:
            os.close(still_open.pop())

    try:
        _pump(argv, meter, feed, sink, pass_fds=(read,), opened=close_read)
    finally:
        close_read()  # the tool could not start


def _pump(argv: list[str], meter: _Meter, feed=None, sink=None, pass_fds=(), env=None, opened=None) -> None:
    """Run a client tool, feeding its stdin from `feed` or its stdout to `sink`; its first stderr
    line (masked) as a DeployError when it fails. `opened()` is called once it has started."""
    program = argv[0]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            argv,
            pass_fds=pass_fds,
            env=env,
            stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if sink is not None else subprocess.DEVNULL,
            stderr=errors,
        )
        if opened is not None:
            opened()
        try:
            if sink is not None:
                while chunk := process.stdout.read(CHUNK):
                    sink(chunk)
                    meter.add(len(chunk))
            else:
                for chunk in feed:
                    process.stdin.write(chunk)
                    meter.add(len(chunk))
        except BrokenPipeError:
            pass  # the tool stopped reading: its status and stderr say why
        except BaseException:
            process.kill()
            raise
        finally:
            for stream in (process.stdin, process.stdout):
                with suppress(OSError):  # unflushed bytes for a tool that stopped reading: no matter
                    if stream:
                        stream.close()
            process.wait()
        if process.returncode != 0:
            errors.seek(0)
            detail = _error_line(errors.read().decode(errors="replace"))
            raise DeployError(
                relayed(mask(detail)) if detail else f"{Path(program).name} exited with status {process.returncode}"
            )


def _said(exc: DeployError) -> str:
    """An error's message with what it relays still marked, for a message that wraps it."""
    return exc.marked or str(exc)


def _error_line(text: str) -> str | None:
    """The line of a tool's stderr that says what went wrong.

    The mariadb client first echoes the failing statement between lines of dashes (a piece of the
    dump: data, not the reason): those blocks are skipped, and a line naming an error is preferred."""
    lines, echoed = [], False
    for line in map(str.strip, text.splitlines()):
        if line and set(line) == {"-"}:
            echoed = not echoed
        elif line and not echoed:
            lines.append(line)
    errors = [line for line in lines if re.search(r"\berror\b", line, re.IGNORECASE)]
    return (errors or lines or [None])[0]


def _mysql_dump(url: URL, write: Callable[[bytes], object], meter: _Meter) -> None:
    remember(url.password)
    try:
        _run(("mariadb-dump", "mysqldump"), url, [*DUMP_FLAGS, "--", url.database], meter, sink=write)
    except DeployError as exc:
        raise DeployError(own(f"backup of {describe(url)} failed: {_said(exc)}")) from None


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _mysql_load(url: URL, path: Path, meter: _Meter) -> None:
    # Tables made after the backup must go too; the drops lead the same session as the dump.
    with connect(url) as connection, translate_errors(url):
        rows = connection.exec_driver_sql("SHOW FULL TABLES").all()
    drop_as = {"VIEW": "VIEW", "SEQUENCE": "SEQUENCE"}
    drops = "".join(f"DROP {drop_as.get(kind, 'TABLE')} IF EXISTS {_quote(name)};\n" for name, kind in rows)

    def feed() -> Iterable[bytes]:
        yield f"SET FOREIGN_KEY_CHECKS=0;\n{drops}".encode()
        with gzip.open(path) as dump:
            while chunk := dump.read(CHUNK):
                yield chunk

    _run(("mariadb", "mysql"), url, [f"--database={url.database}"], meter, feed=feed())


def _mysql_complete(head: bytes, tail: bytes, size: int) -> bool:
    return tail.rstrip().rsplit(b"\n", 1)[-1].startswith(b"-- Dump completed")


def _mysql_named(path: Path, head: bytes) -> str | None:
    # The dump's header: "-- Host: 127.0.0.1    Database: blog"
    found = re.search(rb"^-- Host: .*?\sDatabase: (.+?)\s*$", head, re.MULTILINE)
    return found[1].decode(errors="replace") if found else None


# -- PostgreSQL --------------------------------------------------------------------------------------

# pg_dump's own compression is off: the archive is gzip'd here like every backup, so the same stream
# check applies, and the whole of it is read back by pg_restore before it counts.
PG_DUMP_FLAGS = ("--format=custom", "--compress=0", "--no-password")
PG_RESTORE_FLAGS = ("--clean", "--if-exists", "--single-transaction", "--exit-on-error", "--no-password")
# Libpq reads these from the environment too; ours must not be overridden (or a stray one used).
PG_PASSWORD_VARIABLES = ("PGPASSWORD", "PGPASSFILE")
PG_NOT_IN_QUERY = ("password", "passfile", "service")


def _pg_program(name: str) -> str:
    # Debian's /usr/bin/pg_dump picks the newest installed version for a --host; else the newest itself.
    found = shutil.which(name) or shutil.which(name, path=os.defpath)
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]), reverse=True)
    if found or versions:
        return found or str(versions[0])
    raise DeployError(f"{name} is not installed: install the PostgreSQL client (postgresql-client)")


def _pg_conninfo(url: URL) -> str:
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


def _pgpass_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _pg_run(program: str, url: URL | None, args: list[str], meter: _Meter, feed=None, sink=None) -> None:
    """Run a PostgreSQL client tool (as the URL's user, when given), feeding its stdin or its stdout.

    The password reaches it in a password file (libpq reads no pipe: it wants a plain file with mode
    0600), written in a private directory made for this one run and removed when the tool ends; the
    environment carries only that file's path. Never argv, never PGPASSWORD."""
    argv = [_pg_program(program), *([f"--dbname={_pg_conninfo(url)}"] if url is not None else []), *args]
    env = {key: value for key, value in os.environ.items() if key not in PG_PASSWORD_VARIABLES}
    with tempfile.TemporaryDirectory(prefix="deploy-pgpass-") as private:  # mode 0700
        if url is not None and url.password:
            if "\n" in url.password or "\r" in url.password:
                raise DeployError("a password with a line break cannot be handed to the PostgreSQL tools")
            passfile = os.path.join(private, "pgpass")
            with open(passfile, "x", opener=_private) as out:
                out.write(f"*:*:*:*:{_pgpass_value(url.password)}\n")
            env["PGPASSFILE"] = passfile
        _pump(argv, meter, feed, sink, env=env)


def _pg_dump(url: URL, write: Callable[[bytes], object], meter: _Meter) -> None:
    remember(url.password)
    try:
        _pg_run("pg_dump", url, list(PG_DUMP_FLAGS), meter, sink=write)
    except DeployError as exc:
        raise DeployError(own(f"backup of {describe(url)} failed: {_said(exc)}")) from None


def _gunzipped(path: Path) -> Iterable[bytes]:
    with gzip.open(path) as dump:
        while chunk := dump.read(CHUNK):
            yield chunk


def _pg_readable(path: Path) -> str | None:
    """What pg_restore finds wrong reading the whole archive (its table of contents and every data
    block, written out as SQL to nowhere), or None. No database is involved."""
    try:
        _pg_run("pg_restore", None, ["--file=/dev/null"], _Meter(None), feed=_gunzipped(path))
    except DeployError as exc:
        return f"pg_restore cannot read it ({_said(exc)})"
    return None


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


def _pg_named(path: Path, head: bytes) -> str | None:
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


def _pg_load(url: URL, path: Path, meter: _Meter) -> None:
    with connect(url) as connection, translate_errors(url):
        quote = connection.dialect.identifier_preparer.quote
        for kind, schema, name in connection.exec_driver_sql(PG_OBJECTS).all():
            # CASCADE: a view or foreign key of another dropped object; IF EXISTS: gone with one.
            connection.exec_driver_sql(f"DROP {kind} IF EXISTS {quote(schema)}.{quote(name)} CASCADE")
        connection.commit()
    # One transaction: should the load fail, what it loaded is rolled back (the drops above are not:
    # restore puts the database back from the backup taken first).
    _pg_run("pg_restore", url, list(PG_RESTORE_FLAGS), meter, feed=_gunzipped(path))


# -- SQLite ------------------------------------------------------------------------------------------


def _sqlite_file(url: URL) -> Path:
    path = sqlite_path(url)
    if path is None:
        raise DeployError("an in-memory SQLite database cannot be backed up or restored")
    return path


def _sqlite_dump(url: URL, write: Callable[[bytes], object], meter: _Meter) -> None:
    path = _sqlite_file(url)
    if not path.is_file():  # sqlite3.connect would create it
        raise DeployError(f"no database at {path}")
    # The backup API copies a consistent snapshot even while the application writes.
    try:
        with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(":memory:")) as copy:
            source.backup(copy)
            data = copy.serialize()
    except sqlite3.Error as exc:
        raise DeployError(own(f"backup of {describe(url)} failed: {_said(exc)}")) from None
    write(data)
    meter.add(len(data))


def _sqlite_load(url: URL, path: Path, meter: _Meter) -> None:
    with gzip.open(path) as dump:
        data = dump.read()
    target = _sqlite_file(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Page by page into the live file, under SQLite's locks: open connections see the restored database.
    try:
        with closing(sqlite3.connect(":memory:")) as copy, closing(sqlite3.connect(target)) as live:
            copy.deserialize(data)
            copy.backup(live)
    except sqlite3.Error as exc:
        raise DeployError(relayed(str(exc))) from None
    meter.add(len(data))


def _sqlite_readable(path: Path) -> str | None:
    """What SQLite's quick_check finds wrong in the database the file holds (its pages read through)."""
    with gzip.open(path) as dump:
        data = dump.read()
    try:
        with closing(sqlite3.connect(":memory:")) as copy:
            copy.deserialize(data)
            found = [row[0] for row in copy.execute("PRAGMA quick_check(1)")]
    except sqlite3.Error as exc:
        return f"SQLite cannot read the database in it ({exc})"
    return None if found == ["ok"] else f"SQLite finds the database in it damaged ({found[0] if found else '?'})"


def _sqlite_complete(head: bytes, tail: bytes, size: int) -> bool:
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


@dataclass(frozen=True)
class _Kind:
    suffix: str
    name: Callable[[URL], str]
    dump: Callable[[URL, Callable[[bytes], object], _Meter], None]
    load: Callable[[URL, Path, _Meter], None]
    complete: Callable[[bytes, bytes, int], bool]  # (head, tail, size) of the uncompressed dump
    incomplete: str
    readable: Callable[[Path], str | None] = lambda path: None  # a deeper check, by the kind's own tool
    # The name of the database dumped, as the file itself says (for a file without its note).
    named: Callable[[Path, bytes], str | None] = lambda path, head: None
    # The load is one transaction: a failed one leaves the database as it was, with no backup to put back.
    atomic: bool = False


MYSQL = _Kind(
    ".sql.gz",
    lambda url: url.database or "",
    _mysql_dump,
    _mysql_load,
    _mysql_complete,
    "the dump lacks its completion marker (-- Dump completed): it was cut short",
    named=_mysql_named,
)
SQLITE = _Kind(
    ".sqlite.gz",
    lambda url: _sqlite_file(url).stem,
    _sqlite_dump,
    _sqlite_load,
    _sqlite_complete,
    "it holds no whole SQLite database (not the size its header records)",
    _sqlite_readable,
    atomic=True,  # the backup API copies every page in one step, one write transaction
)
POSTGRESQL = _Kind(
    ".pgdump.gz",
    lambda url: url.database or "",
    _pg_dump,
    _pg_load,
    lambda head, tail, size: head.startswith(b"PGDMP"),
    "it holds no pg_dump archive",
    _pg_readable,
    _pg_named,
)
# By the file's suffix, which the database's dialect names (its backup_suffix).
KINDS = {kind.suffix: kind for kind in (MYSQL, POSTGRESQL, SQLITE)}


def _kind_for(url: URL, what: str) -> _Kind:
    """The kind of backup the database of `url` is kept in, by its dialect."""
    return KINDS[dialect_for(url, what).backup_suffix]


# -- Files -------------------------------------------------------------------------------------------


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _read_sidecar(path: Path) -> Backup | None:
    try:
        record = json.loads(_sidecar(path).read_text())
        time = datetime.fromisoformat(record["time"])
        return Backup(path, record["database"], record["name"], record["revision"], time, record["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _damage(path: Path, kind: _Kind) -> str | None:
    """What is wrong with the file, read end to end, or None."""
    head = tail = b""
    size = 0
    try:
        with gzip.open(path) as stream:
            while chunk := stream.read(CHUNK):
                head = head or chunk[:HEAD]
                tail = (tail + chunk[-TAIL:])[-TAIL:]
                size += len(chunk)
    except EOFError:
        return "it is truncated (the compressed data ends early)"
    except (gzip.BadGzipFile, zlib.error) as exc:
        return f"its compressed data is corrupt ({exc})"
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    return kind.readable(path) if kind.complete(head, tail, size) else kind.incomplete


def _kind_of(path: Path) -> _Kind:
    for kind in (MYSQL, POSTGRESQL, SQLITE):
        if path.name.endswith(kind.suffix):
            return kind
    raise DeployError(
        f"{path} is not a backup (its name should end in {MYSQL.suffix}, {POSTGRESQL.suffix} or {SQLITE.suffix})"
    )


def verify(path: str | os.PathLike) -> Backup:
    """The backup at `path` if it is whole; else a one-line DeployError naming the file."""
    path = Path(path)
    kind = _kind_of(path)
    try:
        status = path.stat()
    except OSError:
        raise DeployError(f"no backup at {path}") from None
    size = status.st_size
    backup = _read_sidecar(path)
    problem = f"it is {size} bytes, not the {backup.size} recorded" if backup and size != backup.size else None
    if problem := problem or _damage(path, kind):
        raise DeployError(own(f"{path} is not a usable backup: {problem}"))
    if backup is None:  # a file without its note: what the file itself can tell
        with gzip.open(path) as stream:
            name = kind.named(path, stream.read(HEAD)) or ""
        backup = Backup(path, "", name, None, datetime.fromtimestamp(status.st_mtime, UTC), size)
    return backup


def check_source(backup: Backup, url: URL, from_database: str | None = None) -> str | None:
    """Refuse a backup of another database than the URL's (by its note, or the file's own header),
    unless `from_database` is the operator's word that it is one of that database. The other
    database's name when it is one (the confirmation names it), else None."""
    kind = _kind_for(url, "restore")
    here, source = kind.name(url), backup.name or from_database
    recorded_server = _server(backup.database, backup.name)
    elsewhere = recorded_server is not None and recorded_server != _server(describe(url), here)
    if source in (None, here) and not elsewhere:
        if from_database not in (None, here):
            raise DeployError(
                f"{backup.path.name} is a backup of {here} itself, not of {from_database}: nothing changed"
            )
        return None
    theirs = backup.database or source
    if from_database is None:
        raise DeployError(
            f"{backup.path.name} is a backup of {theirs}, not of {describe(url)}: to replace {here} with "
            f"it all the same, add --from-database {source}; nothing changed"
        )
    if from_database != source:
        raise DeployError(f"{backup.path.name} is a backup of {theirs}, not of {from_database}: nothing changed")
    return source


def _server(description: str, name: str) -> str | None:
    """host:port of a `describe` text of the database `name`; None for SQLite or when not recorded."""
    if not description.endswith(f"/{name}") or description.startswith("SQLite "):
        return None
    return description[: -len(name) - 1].rpartition("@")[2]


def list_backups(directory: str | os.PathLike, database: str | URL | None = None) -> list[Backup]:
    """The backups in `directory` (of one database: its name, or its URL), newest first."""
    if isinstance(database, URL):
        database = _kind_for(database, "backup").name(database)
    found = (_read_sidecar(sidecar.with_suffix("")) for sidecar in Path(directory).glob("*.json"))
    backups = [b for b in found if b is not None and b.path.is_file() and database in (None, b.name)]
    return sorted(backups, key=lambda b: (b.time, b.path.name), reverse=True)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def take(url: URL, directory: str | os.PathLike, revision: str | None, keep: int, progress=None, spare=None) -> Backup:
    """A verified, compressed backup of the URL's database in `directory`; then only the newest `keep`
    stay, and `spare` (the path of a backup about to be restored).

    `progress(bytes)` is called every PROGRESS_SECONDS while the dump runs (bytes of uncompressed dump)."""
    if keep < 1:
        raise DeployError("keep at least one backup")
    backup = _write(url, Path(directory), revision, progress)
    spared = Path(spare).resolve() if spare is not None else None
    for old in list_backups(directory, backup.name)[keep:]:
        if old.path.resolve() != spared:
            _remove(old)
    return backup


def _write(url: URL, directory: Path, revision: str | None, progress=None, label: str = "base") -> Backup:
    """A verified backup in `directory`, its file named after the revision (or `label`); no retention."""
    kind = _kind_for(url, "backup")
    name = kind.name(url)
    if not name:
        raise DeployError(f"{describe(url)} names no database to back up")
    started = datetime.now(UTC)
    path = directory / f"{_safe(name)}-{started:%Y%m%dT%H%M%S.%fZ}-{_safe(revision or label)}{kind.suffix}"
    partial = path.with_name(f".{path.name}.partial")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # backups hold all the data: owner only
        with open(partial, "xb", opener=_private) as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6) as out:
                kind.dump(url, out.write, _Meter(progress))
            raw.flush()
            os.fsync(raw.fileno())
        backup = Backup(path, describe(url), name, revision, started, partial.stat().st_size)
        if problem := _damage(partial, kind):
            raise DeployError(own(f"backup of {describe(url)} failed: {problem}"))
        record = {**backup.__dict__, "path": path.name, "time": started.isoformat()}
        with open(_sidecar(path), "w", opener=_private) as sidecar:
            json.dump(record, sidecar, indent=1)
        partial.rename(path)  # last: a dump under its real name is a whole one
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DeployError(f"cannot write the backup in {directory}: {exc.strerror or exc}") from None
        raise
    with suppress(OSError):  # the file itself is synced; the directory entry is best effort
        _sync_directory(directory)
    return backup


def _remove(backup: Backup) -> None:
    backup.path.unlink(missing_ok=True)
    _sidecar(backup.path).unlink(missing_ok=True)


def restore(url: URL, path: str | os.PathLike, progress=None, before: Backup | None = None) -> Backup:
    """Make the URL's database exactly the backup's, after verifying the file (refused: nothing changes).

    All or nothing: should the load fail (or Ctrl-C stop it), the database is put back as it was from
    `before`, a backup of it just taken; without one, a backup is taken here first and removed after
    (SQLite needs none: its load is one transaction).
    `progress(bytes)` as for `take`. Asking the user to confirm is the caller's job."""
    kind = _kind_for(url, "restore")
    backup = verify(path)
    if _kind_of(backup.path) is not kind:
        raise DeployError(f"{backup.path} is not a backup of a {url.get_backend_name()} database")
    remember(url.password)
    if kind.atomic:
        try:
            kind.load(url, backup.path, _Meter(progress))
        except DeployError as exc:
            raise DeployError(
                own(
                    f"restore of {describe(url)} failed: {_said(exc)}; the database is as it was before the "
                    "restore (it is loaded in one transaction)"
                )
            ) from None
        return backup
    fallback = before or _write(url, backup.path.parent, None, label="before-restore")
    try:
        with _stopped_by_signals():
            kind.load(url, backup.path, _Meter(progress))
    except (DeployError, KeyboardInterrupt) as exc:
        reason = _said(exc) if isinstance(exc, DeployError) else f"stopped by {exc.args[0] if exc.args else 'Ctrl-C'}"
        raise _put_back(url, kind, fallback, reason, kept=before is not None) from None
    if before is None:
        _remove(fallback)
    return backup


@contextmanager
def _stopped_by_signals():
    """SIGTERM and SIGHUP stop a restore's load as Ctrl-C does (KeyboardInterrupt, naming the signal),
    so that the database is put back before the process ends, instead of being left half loaded."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, stop) for signum in STOPPING_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _put_back(url: URL, kind: _Kind, fallback: Backup, reason: str, kept: bool) -> DeployError:
    """After a failed load: the database as it was, loaded from `fallback`; the error to raise.
    SIGTERM and SIGHUP wait until it is done (Ctrl-C does not)."""
    failed = f"restore of {describe(url)} failed: {reason}"
    try:
        with _ignoring(STOPPING_SIGNALS):
            kind.load(url, fallback.path, _Meter(None))
    except (DeployError, KeyboardInterrupt) as exc:
        again = _said(exc) if isinstance(exc, DeployError) else "stopped by Ctrl-C"
        # The backup of how it was stays, whoever took it: it is the way back.
        return DeployError(
            own(
                f"{failed}; putting the database back as it was failed too ({again}): it may be left partly "
                f"restored; restore {fallback.path.name} (in {fallback.path.parent}) once the cause is fixed"
            )
        )
    if not kept:
        _remove(fallback)
    source = fallback.path.name if kept else "a backup taken just before"
    return DeployError(own(f"{failed}; the database is as it was before the restore (put back from {source})"))


@contextmanager
def _ignoring(signals: tuple[int, ...]):
    """This process ignores `signals` meanwhile; the tools it starts do not (a handler, unlike SIG_IGN,
    is not inherited)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, lambda signum, frame: None) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
