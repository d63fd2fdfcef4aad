"""A rehearsal's copy of the database: the verified backup loaded into a scratch database on the same
server, under a name nothing else uses, dropped afterwards whatever happens (a failure, Ctrl-C).

Before anything is made, two refusals in one line each: the migration user may not create a database,
or the server's disk would not hold the copy (told only when the server runs on this machine; else the
report says it could not be told). What runs on the copy, and how long each revision takes, is the
caller's (commands.rehearse): the same path as the real upgrade."""

from __future__ import annotations

import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.engine import URL, Connection

from . import backups, console
from .credentials import describe
from .database import connect, peer, translate_errors
from .dialects import dialect_for
from .dialects.base import said
from .errors import DeployError, own

# Between the database's name and the random part of the copy's name.
INFIX = "_rehearsal_"
RANDOM_HEX = 8
NAME_LIMIT = 63  # PostgreSQL's identifiers (MariaDB's are 64)


@dataclass(frozen=True)
class Timing:
    """One revision as it ran on the copy."""

    revision: str  # its label: id and message
    seconds: float

    def __str__(self) -> str:
        return f"  {self.revision}: {seconds(self.seconds)}"


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"


def report(database: str, copy: str, timings: list[Timing]) -> list[str]:
    """What the rehearsal measured, a line per revision under one that sums it up."""
    total = sum(timing.seconds for timing in timings)
    many = "s" * (len(timings) != 1)
    head = f"rehearsal passed on {copy}, a copy of {database} (removed): {len(timings)} revision{many}"
    head += f" in {seconds(total)}"
    return [head, *map(str, timings)]


def scratch_name(database: str) -> str:
    """`<database>_rehearsal_<random>`: a name no other run picks, within the servers' identifier limit."""
    kept = NAME_LIMIT - len(INFIX) - RANDOM_HEX
    return f"{database[:kept]}{INFIX}{secrets.token_hex(RANDOM_HEX // 2)}"


def megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def check_room(needed: int, directory: str, database: str) -> str:
    """The disk line of the report, when `directory` (the server's data, on this machine) has room for
    `needed` bytes; the refusal when it has not."""
    status = os.statvfs(directory)
    free = status.f_bavail * status.f_frsize
    if needed >= free:
        raise DeployError(
            f"a copy of {database} would not fit on the server's disk: it takes about {megabytes(needed)} and "
            f"{directory} has {megabytes(free)} free; nothing was run: free some space, or upgrade without --rehearse"
        )
    return f"disk: the copy takes about {megabytes(needed)}, {directory} has {megabytes(free)} free"


def room(connection: Connection, database: str) -> str:
    """Whether the server's disk holds a copy of the connection's database: a line saying so, or how it
    could not be told; the refusal when it would not."""
    dialect = dialect_for(connection)
    needed, directory = dialect.database_bytes(connection), dialect.data_directory(connection)
    if needed is None or not directory:
        return "disk: not checked: the server does not say where it keeps its files"
    where = peer(connection)
    if not where.local:
        return f"disk: not checked: the server is not on this machine ({where.proof or where.address})"
    try:
        return check_room(needed, directory, database)
    except OSError as exc:
        return f"disk: not checked: {directory}: {exc.strerror}"


@contextmanager
def copy_of(
    url: URL, backed_up: Callable[[], backups.Backup], progress: Callable[[str], object]
) -> Iterator[tuple[URL, Connection]]:
    """The URL of a copy of the URL's database (the migration user's), and a connection to it, made from
    the backup that `backed_up()` takes once the refusals have passed; the copy is dropped when the block
    ends, however it ends."""
    dialect = dialect_for(url, "--rehearse")
    database = describe(url)
    name = scratch_name(url.database or "")
    copy = url.set(database=name)
    with connect(url) as admin, translate_errors(url):
        admin = admin.execution_options(isolation_level="AUTOCOMMIT")
        progress(room(admin, database))
        if not dialect.create_database(admin, name):
            raise DeployError(
                f"{url.username} may not create a database on {database}'s server, where the rehearsal makes its "
                f"copy: nothing was run; grant it (the docs say how), or upgrade without --rehearse"
            )
    try:
        with ended_by_signals():
            backup = backed_up()
            progress(f"rehearsal: loading the backup into {name}")
            loading = console.Progress("rehearsal: loaded", "MB")
            backups.load_copy(copy, backup, loading.update)
            loading.end()
            with connect(copy) as connection:
                yield copy, connection
    except BaseException as exc:
        try:
            drop(url, name)
        except DeployError as left:  # both told: why the rehearsal ended, and the copy to drop by hand
            if isinstance(exc, DeployError):
                raise DeployError(own(f"{said(exc)}; and {said(left)}")) from None
        raise
    drop(url, name)


def check_switches(url: URL, guards) -> None:
    """--rehearse with what cannot go with it, refused before anything is asked."""
    if not guards.rehearse:
        return
    if guards.no_backup:
        raise DeployError("--rehearse loads the backup that --no-backup skips: pass one or the other; nothing was run")
    if not dialect_for(url, "--rehearse").server_programs:
        raise DeployError(
            f"--rehearse makes its copy on the database's server, and a {url.get_backend_name()} database has none: "
            "nothing was run"
        )


def failed(database: str, copy: str, exc: DeployError) -> DeployError:
    """A revision that failed on the copy (commands.migration_failed's words, up to where they speak of
    the copy's state and ways out, which are the copy's and gone with it)."""
    what = said(exc)
    for cut in ("; the database is at", "; its revision cannot be read"):
        what = what.split(cut)[0]
    return DeployError(
        own(
            f"the rehearsal failed on {copy}, a copy of {database}: {what}; nothing was run on {database}: "
            "fix the revision, then upgrade again"
        )
    )


def drop(url: URL, name: str) -> None:
    """The copy dropped, on a connection of its own (the first may have timed out meanwhile); a signal
    does not cut it short."""
    try:
        with uninterrupted(), connect(url) as admin, translate_errors(url):
            dialect_for(url).drop_database(admin.execution_options(isolation_level="AUTOCOMMIT"), name)
    except DeployError as exc:
        raise DeployError(
            own(f"the rehearsal's copy {name} could not be dropped: {said(exc)}; drop it by hand")
        ) from None


@contextmanager
def ended_by_signals():
    """SIGTERM and SIGHUP (a service stopped, a terminal closed) end the block as Ctrl-C does, so that the
    copy is dropped before the process ends; while revisions run, they ask to stop between two instead
    (console.Cancellation, which sets its own handlers meanwhile)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def uninterrupted():
    """SIGINT, SIGTERM and SIGHUP wait until the block is done, then act as they would have."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in received[:1]:
            signal.raise_signal(signum)
