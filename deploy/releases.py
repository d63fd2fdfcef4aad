"""Releases: which code runs against a database. Every upgrade, downgrade and stamp outside development
records the release that ran it (its checkout's git commit, or the installed version of the app's
package where there is no git) in the database beside alembic_version, so that the next upgrade knows
which code is still serving while it runs; and a temporary git worktree of a release, from which
another process loads that release's code (db.revision --base, the compatibility check)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, insert, inspect, select
from sqlalchemy.engine import Connection

from .database import RELEASES_TABLE
from .errors import DeployError

TABLE = RELEASES_TABLE  # one of database.SUITE_TABLES: no comparison with the models sees it
releases = Table(
    TABLE,
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("release", String(100), nullable=False),
    Column("revision", String(255), nullable=False),  # the database's heads after the run, comma-separated
    Column("command", String(20), nullable=False),
    Column("recorded_at", DateTime, nullable=False),
)


# --- git


def git(cwd: Path, *args: str, failure: str | None = None) -> str:
    """`git ARGS` in `cwd`, its output; a DeployError in one line (`failure`, else git's last words)."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise DeployError("git is not installed") from None
    if done.returncode:
        said = done.stderr.strip().splitlines()
        raise DeployError(failure or f"git {args[0]} failed: {said[-1] if said else done.returncode}")
    return done.stdout.strip()


@contextmanager
def worktree(top: Path, commit: str, path: Path) -> Iterator[Path]:
    """A temporary checkout of `commit` beside the user's, removed afterwards whatever happens."""
    git(top, "worktree", "add", "--detach", "--quiet", str(path), commit)
    try:
        yield path
    finally:
        # --force: the settings file written there is untracked. Prune whatever remove could not.
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=top, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=top, capture_output=True)


def is_commit(release: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{40}", release) is not None


def short(release: str) -> str:
    """A release as people name it: a commit's first 7 digits, as `git log --oneline` shows it."""
    return release[:7] if is_commit(release) else release


# A server process's own release, read once before it forks its runs (deploy.forking), which take it here.
_preloaded: dict[tuple[Path, str | None], str | None] = {}


def preload(root: Path, app_module: str | None = None) -> None:
    _preloaded[root, app_module] = of_checkout(root, app_module)


def of_checkout(root: Path, app_module: str | None = None) -> str | None:
    """The release of the code in `root`: its git commit; where there is no git, the installed version
    of the distribution that holds the app's package (`app_module`); None when neither is known."""
    if (root, app_module) in _preloaded:
        return _preloaded[root, app_module]
    try:
        return git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    except DeployError:
        pass
    package = (app_module or "").partition(":")[0].split(".")[0]
    if not package or _checkout_code(package, root):
        return None
    for distribution in importlib.metadata.packages_distributions().get(package, []):
        try:
            return f"{distribution} {importlib.metadata.version(distribution)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _checkout_code(package: str, root: Path) -> bool:
    """Whether the app's package is the checkout's own files, which no installed distribution holds: then
    there is no need to read every installed distribution's list of files (a third of a second)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    found = spec.origin or next(iter(spec.submodule_search_locations or ()), None)
    return found is not None and Path(found).resolve().is_relative_to(root.resolve())


def resolve(root: Path, release: str) -> tuple[Path, str]:
    """The git repository holding `root`, and the full commit `release` names in it."""
    top = git(root, "rev-parse", "--show-toplevel", failure=f"{root} is not in a git repository")
    commit = git(
        root,
        "rev-parse",
        "--verify",
        "--quiet",
        f"{release}^{{commit}}",
        failure=f"{release!r} is not a commit of the git repository at {top}",
    )
    return Path(top).resolve(), commit


# --- the record in the database


@dataclass(frozen=True)
class Recorded:
    release: str
    revision: str
    command: str
    recorded_at: datetime

    def __str__(self) -> str:
        at = self.revision or "base"
        return f"{short(self.release)} (db.{self.command} to {at}, {self.recorded_at:%Y-%m-%d %H:%M} UTC)"


def record(connection: Connection, release: str, revisions: tuple[str, ...], command: str) -> None:
    """Keep `release` as the code that took the database to `revisions` with db.`command` (the caller commits)."""
    releases.create(connection, checkfirst=True)
    connection.execute(
        insert(releases).values(
            release=release[:100],
            revision=",".join(revisions),
            command=command,
            recorded_at=datetime.now(UTC).replace(tzinfo=None),
        )
    )


def recorded(connection: Connection) -> Recorded | None:
    """The release recorded last; None before any was. The transaction the reading opened is ended."""
    if not inspect(connection).has_table(TABLE):
        connection.rollback()
        return None
    columns = releases.c
    row = connection.execute(
        select(columns.release, columns.revision, columns.command, columns.recorded_at).order_by(columns.id.desc())
    ).first()
    connection.rollback()
    return Recorded(*row) if row is not None else None
