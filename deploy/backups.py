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

import glob
import gzip
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time as clock
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL, Connection

from .credentials import describe
from .database import connect, translate_errors
from .dialects import Dialect, dialect_for, registry
from .dialects.base import Tool, said
from .errors import DeployError, mask, own, relayed, remember

CHUNK = 256 * 1024
PROGRESS_SECONDS = 0.5
HEAD = 1024
TAIL = 4096
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
    # Bytes of the dump before compression: how far a restore of it, or the next backup, has got.
    dump_size: int | None = None

    def __str__(self) -> str:
        size = f"{self.size / 2**20:.1f} MB" if self.size >= 2**20 else f"{self.size / 1024:.1f} kB"
        return f"{self.time:%Y-%m-%d %H:%M:%S} UTC  {self.revision or '(no revision)'}  {size}  {self.path}"


def default_directory(instance_path: str | os.PathLike) -> Path:
    return Path(instance_path) / "backups"


class _Meter:
    """Calls progress(bytes so far, the fraction of `expected` bytes that is, or None) at most every
    PROGRESS_SECONDS."""

    def __init__(self, progress: Callable[[int, float | None], object] | None, expected: int | None = None):
        self.progress, self.done, self.last, self.expected = progress, 0, clock.monotonic(), expected

    def add(self, count: int) -> None:
        self.done += count
        if self.progress and clock.monotonic() - self.last >= PROGRESS_SECONDS:
            self.last = clock.monotonic()
            self.progress(self.done, self.done / self.expected if self.expected else None)


# -- Client tools --------------------------------------------------------------------------------------


class _Tool(Tool):
    """What a dialect runs its client programs with: the dump's bytes counted on the meter."""

    def __init__(self, meter: _Meter):
        self.meter = meter

    def run(self, argv: list[str], feed=None, sink=None, pass_fds=(), env=None, opened=None) -> None:
        _pump(argv, self.meter, feed, sink, pass_fds=pass_fds, env=env, opened=opened)

    def count(self, size: int) -> None:
        self.meter.add(size)


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


def _gunzipped(path: Path) -> Callable[[], Iterable[bytes]]:
    """The uncompressed dump, in chunks, each time it is called."""

    def chunks() -> Iterable[bytes]:
        with gzip.open(path) as dump:
            while chunk := dump.read(CHUNK):
                yield chunk

    return chunks


@contextmanager
def _connected(url: URL) -> Iterator[Connection]:
    """A connection for a dialect's load, its errors one line each."""
    with connect(url) as connection, translate_errors(url):
        yield connection


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
        dump_size = record.get("dump_size")
        return Backup(path, record["database"], record["name"], record["revision"], time, record["size"], dump_size)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _damage(path: Path, dialect: Dialect) -> str | None:
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
    if not dialect.complete(head, tail, size):
        return dialect.backup_incomplete
    return dialect.readable(_gunzipped(path), _Tool(_Meter(None)))


def _dialect_of(path: Path) -> Dialect:
    """The dialect whose backups are named like the file (its backup_suffix)."""
    known = list(dict.fromkeys(registry().values()))
    for dialect in known:
        if path.name.endswith(dialect.backup_suffix):
            return dialect
    suffixes = [dialect.backup_suffix for dialect in known]
    raise DeployError(f"{path} is not a backup (its name should end in {', '.join(suffixes[:-1])} or {suffixes[-1]})")


def verify(path: str | os.PathLike) -> Backup:
    """The backup at `path` if it is whole; else a one-line DeployError naming the file."""
    path = Path(path)
    dialect = _dialect_of(path)
    try:
        status = path.stat()
    except OSError:
        raise DeployError(f"no backup at {path}") from None
    size = status.st_size
    backup = _read_sidecar(path)
    problem = f"it is {size} bytes, not the {backup.size} recorded" if backup and size != backup.size else None
    if problem := problem or _damage(path, dialect):
        raise DeployError(own(f"{path} is not a usable backup: {problem}"))
    if backup is None:  # a file without its note: what the file itself can tell
        with gzip.open(path) as stream:
            name = dialect.named(stream.read(HEAD)) or ""
        backup = Backup(path, "", name, None, datetime.fromtimestamp(status.st_mtime, UTC), size)
    return backup


def check_source(backup: Backup, url: URL, from_database: str | None = None) -> str | None:
    """Refuse a backup of another database than the URL's (by its note, or the file's own header),
    unless `from_database` is the operator's word that it is one of that database. The other
    database's name when it is one (the confirmation names it), else None."""
    dialect = dialect_for(url, "restore")
    here, source = dialect.backup_name(url), backup.name or from_database
    recorded_server = _dialect_of(backup.path).server_of(backup.database, backup.name)
    elsewhere = recorded_server is not None and recorded_server != dialect.server_of(describe(url), here)
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


def list_backups(directory: str | os.PathLike, database: str | URL | None = None) -> list[Backup]:
    """The backups in `directory` (of one database: its name, or its URL), newest first."""
    if isinstance(database, URL):
        database = dialect_for(database, "backup").backup_name(database)
    # Files are named after their database: tenants sharing a directory do not read each other's sidecars.
    pattern = "*.json" if database is None else f"{glob.escape(_safe(database))}-*.json"
    found = (_read_sidecar(sidecar.with_suffix("")) for sidecar in Path(directory).glob(pattern))
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

    `progress(bytes, fraction)` is called every PROGRESS_SECONDS while the dump runs: bytes of uncompressed
    dump, and the fraction of the last backup's dump that is (None when there is none), for the time left."""
    if keep < 1:
        raise DeployError("keep at least one backup")
    last = list_backups(directory, dialect_for(url, "backup").backup_name(url))[:1]
    backup = _write(url, Path(directory), revision, progress, expected=last[0].dump_size if last else None)
    spared = Path(spare).resolve() if spare is not None else None
    for old in list_backups(directory, backup.name)[keep:]:
        if old.path.resolve() != spared:
            _remove(old)
    return backup


def _write(
    url: URL, directory: Path, revision: str | None, progress=None, label: str = "base", expected: int | None = None
) -> Backup:
    """A verified backup in `directory`, its file named after the revision (or `label`); no retention."""
    dialect = dialect_for(url, "backup")
    name = dialect.backup_name(url)
    if not name:
        raise DeployError(f"{describe(url)} names no database to back up")
    started = datetime.now(UTC)
    path = directory / f"{_safe(name)}-{started:%Y%m%dT%H%M%S.%fZ}-{_safe(revision or label)}{dialect.backup_suffix}"
    partial = path.with_name(f".{path.name}.partial")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # backups hold all the data: owner only
        with open(partial, "xb", opener=_private) as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6) as out:
                dialect.dump(url, _Tool(meter := _Meter(progress, expected)), out.write)
            raw.flush()
            os.fsync(raw.fileno())
        backup = Backup(path, describe(url), name, revision, started, partial.stat().st_size, meter.done)
        if problem := _damage(partial, dialect):
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
    `progress(bytes, fraction)` as for `take`, the fraction of the backup's dump. Asking the user to confirm
    is the caller's job."""
    dialect = dialect_for(url, "restore")
    backup = verify(path)
    if _dialect_of(backup.path) is not dialect:
        raise DeployError(f"{backup.path} is not a backup of a {url.get_backend_name()} database")
    remember(url.password)
    if dialect.atomic_load:
        try:
            _load(url, dialect, backup, progress)
        except DeployError as exc:
            raise DeployError(
                own(
                    f"restore of {describe(url)} failed: {said(exc)}; the database is as it was before the "
                    "restore (it is loaded in one transaction)"
                )
            ) from None
        return backup
    fallback = before or _write(url, backup.path.parent, None, label="before-restore")
    try:
        with _stopped_by_signals():
            _load(url, dialect, backup, progress)
    except (DeployError, KeyboardInterrupt) as exc:
        reason = said(exc) if isinstance(exc, DeployError) else f"stopped by {exc.args[0] if exc.args else 'Ctrl-C'}"
        raise _put_back(url, dialect, fallback, reason, kept=before is not None) from None
    if before is None:
        _remove(fallback)
    return backup


def load_copy(url: URL, backup: Backup, progress=None) -> None:
    """Load the verified `backup` into the URL's database, an empty one made for it (a rehearsal's copy):
    nothing there to put back should the load fail; whoever made the database drops it."""
    _load(url, dialect_for(url, "restore"), backup, progress)


def _load(url: URL, dialect: Dialect, backup: Backup, progress=None) -> None:
    dialect.load(url, _gunzipped(backup.path), _Tool(_Meter(progress, backup.dump_size)), _connected)


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


def _put_back(url: URL, dialect: Dialect, fallback: Backup, reason: str, kept: bool) -> DeployError:
    """After a failed load: the database as it was, loaded from `fallback`; the error to raise.
    SIGTERM and SIGHUP wait until it is done (Ctrl-C does not)."""
    failed = f"restore of {describe(url)} failed: {reason}"
    try:
        with _ignoring(STOPPING_SIGNALS):
            _load(url, dialect, fallback)
    except (DeployError, KeyboardInterrupt) as exc:
        again = said(exc) if isinstance(exc, DeployError) else "stopped by Ctrl-C"
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
