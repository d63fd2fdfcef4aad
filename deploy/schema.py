"""The live schema: one snapshot, read once through SQLAlchemy's reflection (its Inspector), and one
comparison, Alembic's autogenerate, against a MetaData (the models', or a snapshot's).

Every reader of a live schema goes through `snapshot`: what a database lists twice (MariaDB shows a
unique constraint as an index too, PostgreSQL the other way round) is settled here, once."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import alembic_ops
from .database import SUITE_TABLES


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' * (count != 1)}"


# --- the snapshot

FK_OPTIONS = {"ondelete": "ON DELETE", "onupdate": "ON UPDATE"}


@dataclass(frozen=True)
class Table:
    """One reflected table; columns keep the database's order, comparisons ignore it."""

    name: str
    columns: tuple[tuple[str, str, bool, str | None], ...]  # name, type, nullable, server default
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, tuple[str, ...], bool], ...]  # name, columns, unique
    unique: tuple[tuple[str, tuple[str, ...]], ...]
    foreign_keys: tuple[tuple[str, tuple[str, ...], str, tuple[str, ...], str], ...]

    @classmethod
    def of(cls, table: sa.Table) -> Table:
        """A table as SQLAlchemy reflected it. Reflection already keeps one of an index and the
        constraint it duplicates (the unique index on MariaDB, the unique constraint on PostgreSQL)."""
        columns = tuple(
            (column.name, str(column.type), bool(column.nullable), server_default(column)) for column in table.columns
        )
        indexes = sorted(
            (str(index.name), tuple(str(getattr(part, "name", part)) for part in index.expressions), bool(index.unique))
            for index in table.indexes
        )
        unique = sorted(
            (str(constraint.name), tuple(column.name for column in constraint.columns))
            for constraint in table.constraints
            if isinstance(constraint, sa.UniqueConstraint)
        )
        foreign_keys = sorted(
            (
                str(key.name),
                tuple(key.column_keys),
                key.referred_table.name,
                tuple(element.column.name for element in key.elements),
                "".join(
                    f" {FK_OPTIONS.get(option, option)} {value}"
                    for option in sorted(("deferrable", "initially", "match", "ondelete", "onupdate"))
                    if (value := getattr(key, option)) is not None
                ),
            )
            for key in table.foreign_key_constraints
        )
        primary_key = tuple(column.name for column in table.primary_key.columns)
        return cls(table.name, columns, primary_key, tuple(indexes), tuple(unique), tuple(foreign_keys))

    def aspects(self) -> dict[str, object]:
        """What two snapshots compare: a batch migration may rebuild a table with its columns reordered."""
        return {
            "columns": sorted(self.columns),
            "primary key": self.primary_key,
            "indexes": self.indexes,
            "unique constraints": self.unique,
            "foreign keys": self.foreign_keys,
        }

    def differs_in(self, other: Table) -> list[str]:
        mine, theirs = self.aspects(), other.aspects()
        return [aspect for aspect in mine if mine[aspect] != theirs[aspect]]

    def __str__(self) -> str:
        lines = [f"table {self.name}"]
        for name, type_, nullable, default in self.columns:
            key = " PRIMARY KEY" if (name,) == self.primary_key else ""
            null = "NULL" if nullable else "NOT NULL"
            lines.append(f"  {name} {type_} {null}{key}{f' DEFAULT {default}' if default is not None else ''}")
        if len(self.primary_key) > 1:
            lines.append(f"  primary key ({', '.join(self.primary_key)})")
        for name, columns, unique in self.indexes:
            lines.append(f"  {'unique ' * unique}index {name} ({', '.join(columns)})")
        for name, columns in self.unique:
            lines.append(f"  unique {name} ({', '.join(columns)})")
        for name, columns, referred, referred_columns, options in self.foreign_keys:
            target = f"{referred}({', '.join(referred_columns)})"
            lines.append(f"  foreign key {name} ({', '.join(columns)}) -> {target}{options}")
        return "\n".join(lines)


def server_default(column: sa.Column) -> str | None:
    """The default's SQL as the database gave it; not an identity or a computed column's expression."""
    default = column.server_default
    return default.arg.text if isinstance(default, sa.DefaultClause) else None


@dataclass(frozen=True)
class Snapshot:
    """A database's tables but alembic_version, and the revision it is stamped at; `metadata` is
    the same reading as a MetaData, for Alembic to compare another state against."""

    database: str
    revision: tuple[str, ...]
    tables: tuple[Table, ...]
    metadata: sa.MetaData = field(compare=False, repr=False)

    def table(self, name: str) -> Table | None:
        return next((table for table in self.tables if table.name == name), None)

    def differences(self, other: Snapshot) -> list[str]:
        """How this snapshot differs from `other`, table by table; empty when they are the same.

        Two readings of one database are compared as they are, not with Alembic's comparison:
        autogenerate does not compare primary keys, and guesses whether server defaults differ
        (normalizing their text, per database), where the round trip asks for equality."""
        names = sorted({table.name for table in self.tables} | {table.name for table in other.tables})
        found = []
        for name in names:
            mine, theirs = self.table(name), other.table(name)
            if mine is None or theirs is None:
                found.append(f"table {name} {'missing' if mine is None else 'left over'}")
            elif aspects := mine.differs_in(theirs):
                found.append(f"{name}: {', '.join(aspects)} differ")
        return found

    def __str__(self) -> str:
        where = ", ".join(self.revision) if self.revision else "no alembic_version"
        head = f"{self.database} ({where}): {plural(len(self.tables), 'table')}"
        return "\n".join([head, *map(str, self.tables)])


def snapshot(connection: Connection, database_name: str = "") -> Snapshot:
    """Every table but the migrations' own, reflected once; the transaction the reading opened is ended."""
    metadata = sa.MetaData()
    metadata.reflect(connection, only=lambda name, _: name not in SUITE_TABLES)
    revision = alembic_ops.current_heads(connection)
    connection.rollback()
    # Reflection also brings the tables a foreign key refers to: only this schema's are listed.
    reflected = sorted((table for table in metadata.tables.values() if table.schema is None), key=lambda t: t.name)
    return Snapshot(database_name, revision, tuple(map(Table.of, reflected)), metadata)


# --- the comparison: Alembic's autogenerate


def compare(connection: Connection, target: sa.MetaData, compare_type: bool = True) -> list:
    """What autogenerate would write to bring the database to `target`: Alembic's own comparison
    (compare_metadata's), kept as operation objects so that they render as a revision would."""
    from alembic.autogenerate import produce_migrations
    from alembic.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"compare_type": compare_type})
    found = produce_migrations(context, target).upgrade_ops.ops
    connection.rollback()
    return found


def render(operation) -> str:
    """One operation as the Python a revision would hold (`op.add_column(...)`)."""
    from alembic.autogenerate import render_python_code
    from alembic.operations.ops import UpgradeOps

    with quiet():  # rendering sets up a MigrationContext, which logs its dialect
        code = render_python_code(UpgradeOps(ops=[operation]))
    lines = [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return textwrap.dedent("\n".join(lines))


def dropped_tables(found: list) -> set[str]:
    from alembic.operations.ops import DropTableOp

    return {operation.table_name for operation in found if isinstance(operation, DropTableOp)}


def count(found: list) -> int:
    """How many changes, each column change counted (a table's are grouped in one operation)."""
    return sum(len(operation.as_diffs()) if hasattr(operation, "as_diffs") else 1 for operation in found)


@contextmanager
def quiet() -> Iterator[None]:
    # env.py reapplies alembic.ini's logging on every run: Alembic's per-revision lines, three per
    # revision in a round trip, would bury the report.
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.INFO))
    try:
        yield
    finally:
        logging.disable(previous)
