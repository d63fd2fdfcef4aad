"""The live schema: one snapshot, read once through SQLAlchemy's reflection (its Inspector), and one
comparison, Alembic's autogenerate, against a MetaData (the models', or a snapshot's); scratch
databases, and the schema the migrations build in one at a revision; drift, what differs between the
two.

Every reader of a live schema goes through `snapshot`: what a database lists twice (MariaDB shows a
unique constraint as an index too, PostgreSQL the other way round) is settled here, once."""

from __future__ import annotations

import logging
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, make_url

from . import alembic_ops, database
from .credentials import describe
from .database import SUITE_TABLES, VERSION_TABLE, application_tables, translate_errors
from .dialects import dialect_for
from .errors import DeployError


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

    unfinished = dialect_for(connection).unfinished_indexes(connection)

    def include_name(name, type_, parent_names) -> bool:
        # The suite's own tables, and indexes a failed build left behind, are no one's schema.
        return not (type_ == "table" and name in SUITE_TABLES or type_ == "index" and name in unfinished)

    opts = {"compare_type": compare_type, "include_name": include_name}
    context = MigrationContext.configure(connection, opts=opts)
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


# --- scratch databases


def scratch_url(text: str) -> URL:
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(text)
    except (ArgumentError, ValueError):
        raise DeployError("--url is not a database URL (dialect+driver://user:password@host/database)") from None


@contextmanager
def scratch_database(url: URL | None = None) -> Iterator[Connection]:
    """A connection to an empty scratch database: a temporary SQLite file, or `url`, which must be
    empty and is emptied again afterwards. Not the app's engine options: they are for its database."""
    with tempfile.TemporaryDirectory(prefix="db-scratch-") as folder:
        url = url or make_url(f"sqlite:///{Path(folder) / 'scratch.db'}")
        with database.connect(url, create=True) as connection, translate_errors(url):
            tables = application_tables(connection)
            if tables or alembic_ops.current_heads(connection):
                raise DeployError(
                    f"the scratch database {describe(url)} is not empty ({', '.join(tables) or VERSION_TABLE}): "
                    "name an empty one, the checks drop what they build"
                )
            try:
                yield connection
            finally:
                empty(connection)


def empty(connection: Connection) -> None:
    connection.rollback()
    found = sa.MetaData()
    found.reflect(connection)
    found.drop_all(connection)
    connection.commit()


def migrate_to(config, connection: Connection, target: str, downgrade: bool = False) -> None:
    alembic_ops.migrate(config, connection, target, downgrade)
    connection.commit()


def failure(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


# --- the schema the migrations build at a revision

# Built schemas, by (script locations, revisions, scratch database): a fleet's server process plans
# many targets at one revision, and builds it once (before forking, deploy.local_tasks.warm_up).
_built: dict[tuple, sa.MetaData] = {}


def scratch_name(url: URL | None) -> str:
    return "a scratch SQLite database" if url is None else describe(url)


def built_at(config, revisions: tuple[str, ...], url: URL | None = None) -> sa.MetaData:
    """The schema the migrations build up to `revisions` (a database's current heads) in a scratch
    database (`url`, or a temporary SQLite file), cached for this process."""
    key = (config.get_main_option("script_location"), config.config_file_name, tuple(sorted(revisions)), str(url))
    if key not in _built:
        with quiet(), scratch_database(url) as scratch:
            for revision in sorted(revisions):
                try:
                    migrate_to(config, scratch, revision)
                except Exception as exc:
                    scratch.rollback()
                    label = alembic_ops.label(config, revision)
                    raise DeployError(
                        f"the migrations up to {label} do not build in {scratch_name(url)} ({failure(exc)}): "
                        "`db.drift --url` builds them in an empty database of the live one's kind"
                    ) from None
            _built[key] = snapshot(scratch).metadata
    return _built[key]


# --- drift: the live schema against the one its migrations build


@dataclass(frozen=True)
class Drifted:
    """One difference between the live schema and what its migrations build: its table, the names it
    concerns (columns, indexes, constraints; None: the whole table), one line for the user."""

    table: str
    names: frozenset[str] | None
    line: str


def _columns(item) -> list[str]:
    return [str(getattr(part, "name", part)) for part in getattr(item, "expressions", None) or item.columns]


def _kind(constraint) -> str:
    return "foreign key" if isinstance(constraint, sa.ForeignKeyConstraint) else "unique constraint"


def drifted(found: list) -> list[Drifted]:
    """Alembic's operations that would bring the live schema to the migrations' (compare(live, built)),
    told as what was changed outside them."""
    from alembic.operations.ops import UpgradeOps

    told = []
    diffs = UpgradeOps(ops=found).as_diffs()
    # An altered column is a list of tuples, one per aspect changed.
    for diff in [part for each in diffs for part in (each if isinstance(each, list) else [each])]:
        kind = diff[0]
        if kind in ("add_table", "remove_table"):
            table = diff[1]
            said = "is missing (dropped outside the migrations)" if kind == "add_table" else "is not in the migrations"
            told.append(Drifted(table.name, None, f"table {table.name} {said}"))
        elif kind in ("add_column", "remove_column"):
            table, column = diff[2], diff[3]
            said = "is missing (dropped outside the migrations)" if kind == "add_column" else "is not in the migrations"
            told.append(Drifted(table, frozenset({column.name}), f"column {table}.{column.name} {said}"))
        elif kind in ("add_index", "remove_index"):
            index = diff[1]
            columns = _columns(index)
            said = "is missing (dropped outside the migrations)" if kind == "add_index" else "is not in the migrations"
            what = f"{'unique ' * bool(index.unique)}index {index.name} on {index.table.name} ({', '.join(columns)})"
            told.append(Drifted(index.table.name, _names(index.name, *columns), f"{what} {said}"))
        elif kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
            constraint = diff[1]
            columns = [column.name for column in constraint.columns]
            added = kind.startswith("add")
            said = "is missing (dropped outside the migrations)" if added else "is not in the migrations"
            what = f"{_kind(constraint)} {constraint.name} on {constraint.table.name} ({', '.join(columns)})"
            told.append(Drifted(constraint.table.name, _names(constraint.name, *columns), f"{what} {said}"))
        elif kind.startswith("modify_"):
            table, column, live, built = diff[2], diff[3], diff[5], diff[6]
            aspect = kind.removeprefix("modify_")
            if aspect == "nullable":
                live, built = ("NULL" if live else "NOT NULL"), ("NULL" if built else "NOT NULL")
            line = f"column {table}.{column} {aspect} is {live}, the migrations make {built}"
            told.append(Drifted(table, frozenset({column}), line))
        else:  # comments and the like: told as Alembic names them
            told.append(Drifted("", frozenset(), f"{kind.replace('_', ' ')}: {', '.join(map(str, diff[1:3]))}"))
    return told


def drift(live: Connection, config, revisions: tuple[str, ...], url: URL | None = None) -> tuple[list[Drifted], bool]:
    """How the live schema differs from what its migrations build at `revisions`, and whether types
    were compared: only against a scratch database of the live one's kind (`url`); SQLite's types
    are not the server's."""
    built = built_at(config, revisions, url)
    typed = url is not None
    with quiet():  # autogenerate logs each difference it detects: they are told here, once
        return drifted(compare(live, built, compare_type=typed)), typed


def _names(*parts) -> frozenset[str]:
    return frozenset(str(getattr(part, "name", part)) for part in parts if part is not None)


def touched(operation) -> tuple[str | None, frozenset[str] | None]:
    """The table a pending operation changes and the names in it it touches (None: the whole table)."""
    from alembic.operations import ops

    match operation:
        case ops.CreateTableOp() | ops.DropTableOp() | ops.RenameTableOp():
            return operation.table_name, None
        case ops.AddColumnOp():
            return operation.table_name, _names(operation.column.name)
        case ops.DropColumnOp() | ops.AlterColumnOp():
            return operation.table_name, _names(operation.column_name)
        case ops.CreateIndexOp():
            return operation.table_name, _names(operation.index_name, *operation.columns)
        case ops.DropIndexOp():
            return operation.table_name, _names(operation.index_name)
        case ops.CreateForeignKeyOp():
            return operation.source_table, _names(operation.constraint_name, *operation.local_cols)
        case ops.DropConstraintOp():
            return operation.table_name, _names(operation.constraint_name)
        case ops.AddConstraintOp():
            columns = getattr(operation, "columns", None) or []
            return getattr(operation, "table_name", None), _names(operation.constraint_name, *columns)
    return None, frozenset()


def touches(operation, item: Drifted) -> bool:
    """Whether a pending operation changes a drifted object: the same table, and a name in common
    (or the whole table, on either side)."""
    table, names = touched(operation)
    return table == item.table and (names is None or item.names is None or bool(names & item.names))
