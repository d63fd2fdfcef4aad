"""Revision checksums: each applied revision's file, and the operations its upgrade records, as they
were when it ran, kept in the database beside alembic_version, so that every checkout and every
operator sees the same truth. A revision edited after it ran is told (operations changed, or only
its text) until someone reviews it and accepts the new file (`db.accept REV`), as Flyway's `repair`.

Revisions applied before checksums were kept (a history taken over from Flask-Migrate, a database
stamped at a later revision) have none, and are counted as such, not judged."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic.autogenerate import render_python_code
from alembic.operations import ops
from sqlalchemy import Column, DateTime, MetaData, String, Table, delete, insert, inspect, select
from sqlalchemy.engine import Connection

from .. import alembic_ops
from ..database import CHECKSUMS_TABLE
from ..errors import DeployError
from . import lint

TABLE = CHECKSUMS_TABLE  # one of database.SUITE_TABLES: no comparison with the models sees it
checksums = Table(
    TABLE,
    MetaData(),
    Column("revision", String(32), primary_key=True),
    Column("file_sha256", String(64), nullable=False),
    # Empty when the upgrade cannot be read without a database (it queries op.get_bind(), say).
    Column("operations_sha256", String(64), nullable=False),
    Column("recorded_at", DateTime, nullable=False),
)


@dataclass(frozen=True)
class Checksum:
    revision: str
    file: str
    operations: str  # "" when the upgrade's operations cannot be read offline


@dataclass(frozen=True)
class Edited:
    """An applied revision whose file is no longer the one that ran."""

    revision: str
    path: str
    operations_changed: bool | None  # None: its operations cannot be read offline, so nobody can tell

    def __str__(self) -> str:
        what = {
            True: "its upgrade's operations changed",
            False: "only its text changed (the upgrade's operations are the same)",
            None: "its file changed (its operations cannot be read without a database)",
        }[self.operations_changed]
        return f"{self.revision} ({self.path}) was edited after it ran here: {what}"


@dataclass(frozen=True)
class Verdict:
    edited: list[Edited]
    without: list[str]  # applied revisions with no checksum (applied before they were kept)

    def pairs(self) -> list[list[str]]:
        """The edited revisions as the status carries them: [revision, what changed]."""
        return [[edited.revision, str(edited)] for edited in self.edited]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rendered(operation: ops.MigrateOperation) -> str:
    """One operation as Alembic's autogenerate would write it: the same call, the same text."""
    try:
        return render_python_code(ops.UpgradeOps(ops=[operation]))
    except Exception:  # an operation autogenerate has no renderer for: its kind and its fields
        return f"{type(operation).__name__} {sorted(vars(operation).items(), key=str)!r}"


def _path(config, revision: str) -> Path:
    with alembic_ops.alembic_errors():
        script = alembic_ops.scripts(config).get_revision(revision)
    if script is None:
        raise DeployError(f"no revision {revision!r} in the migration scripts")
    return Path(script.path)


def of(config, revision: str, dialect_name: str) -> Checksum:
    """`revision`'s checksums as its file is now (computed once per command, as the operations are recorded)."""
    kept = config.attributes.setdefault("checksums", {})
    if (revision, dialect_name) not in kept:
        file = _sha256(_path(config, revision).read_bytes())
        try:
            recorded = lint.operations(config, revision, dialect_name)
        except lint.Unreadable:
            kept[revision, dialect_name] = Checksum(revision, file, "")
        else:
            operations = _sha256("\n".join(map(_rendered, recorded)).encode())
            kept[revision, dialect_name] = Checksum(revision, file, operations)
    return kept[revision, dialect_name]


def kept(connection: Connection) -> dict[str, Checksum]:
    """The checksums the database holds, by revision; none before the first was recorded."""
    if not inspect(connection).has_table(TABLE):
        return {}
    rows = connection.execute(select(checksums.c.revision, checksums.c.file_sha256, checksums.c.operations_sha256))
    return {row[0]: Checksum(*row) for row in rows}


def record(connection: Connection, checksum: Checksum) -> None:
    """Keep `checksum` as the truth for its revision (the caller commits)."""
    checksums.create(connection, checkfirst=True)
    connection.execute(delete(checksums).where(checksums.c.revision == checksum.revision))
    now = datetime.now(UTC).replace(tzinfo=None)
    connection.execute(
        insert(checksums).values(
            revision=checksum.revision,
            file_sha256=checksum.file,
            operations_sha256=checksum.operations,
            recorded_at=now,
        )
    )


def forget(connection: Connection, revision: str) -> None:
    """A revision undone by a downgrade: its next run records it afresh (the caller commits)."""
    if inspect(connection).has_table(TABLE):
        connection.execute(delete(checksums).where(checksums.c.revision == revision))


def applied(config, current: tuple[str, ...]) -> list[str]:
    """Every revision the database's current heads stand on, theirs included."""
    if not current:
        return []
    with alembic_ops.alembic_errors():
        return [script.revision for script in alembic_ops.scripts(config).iterate_revisions(current, "base")]


def verify(connection: Connection, config, current: tuple[str, ...], dialect_name: str) -> Verdict:
    """Each applied revision's file against the checksum kept when it ran. Only a file whose bytes
    differ has its operations read again, to say what changed."""
    held = kept(connection)
    edited, without = [], []
    for revision in applied(config, current):
        then = held.get(revision)
        if then is None:
            without.append(revision)
            continue
        path = _path(config, revision)
        if _sha256(path.read_bytes()) == then.file:
            continue
        now = of(config, revision, dialect_name)
        known = bool(now.operations and then.operations)
        edited.append(Edited(revision, str(path), now.operations != then.operations if known else None))
    return Verdict(edited, without)


def refusal(edited: list[list[str]], ways_out: str) -> DeployError:
    """Why nothing is migrated over edited revisions ([revision, what] pairs), and the ways out."""
    more = f" (and {len(edited) - 1} more: {', '.join(e[0] for e in edited[1:])})" if len(edited) > 1 else ""
    return DeployError(f"{edited[0][1]}{more}; nothing is migrated until it is resolved: {ways_out}")
