"""Lint of pending revisions: the risky operations each would perform, read from Alembic's operation
objects, not from the script's text.

A revision's `upgrade()` runs against a recorder (an `Operations` whose `invoke` keeps each
`MigrateOperation` instead of running it) on an offline MigrationContext for the target database's
dialect: no database is touched, and `op.batch_alter_table` blocks are recorded operation by operation.

The reviewed marker: a module-level dict in the revision script, operation name -> why it is safe,

    reviewed_risks = {"drop_column posts.body": "backfilled into post_bodies by 1a2b; unread since v3"}

A finding whose name is a key there is reviewed: `lint` leaves it out (or, asked, reports it as reviewed).
The names are those `lint` prints, e.g. "alter_column users.email type".

MariaDB and MySQL: what the server does to a table for each operation (INSTANT, NOCOPY, INPLACE with
LOCK=NONE, or a COPY that blocks writes) is the dialect's table, as measured on 10.11.19
(deploy/dialects/mariadb.py, server_alteration); the lint names the copies and the rebuilds for a current
MariaDB, erring toward a copy where it cannot know (a longer VARCHAR is in place only when that holds for
any charset). An upgrade runs a copy online with pt-online-schema-change, or refuses it (docs/online.md).

PostgreSQL (see "ALTER TABLE" and "CREATE INDEX" in its manual, "Notes"):
- CREATE INDEX blocks writes while it builds; CONCURRENTLY does not (`postgresql_concurrently=True`,
  inside `op.get_context().autocommit_block()`: it cannot run in a transaction);
- a foreign key or CHECK added to a table that holds rows scans it under a lock that blocks writes;
  added NOT VALID (`postgresql_not_valid=True`) it checks new rows only, and a later
  `ALTER TABLE ... VALIDATE CONSTRAINT` scans without blocking them;
- a column type change rewrites the table (and its indexes) under an ACCESS EXCLUSIVE lock, blocking
  reads and writes, unless the old type converts without it: a longer VARCHAR, VARCHAR to TEXT;
- SET NOT NULL scans the table under the same lock (no rewrite).
An upgrade runs the index, the constraints and SET NOT NULL in their least-locking forms without the
revision asking (PostgreSQL.online): the PostgreSQL findings are what it cannot do.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

from alembic import op as op_module
from alembic.migration import MigrationContext
from alembic.operations import BatchOperations, Operations, ops
from sqlalchemy.exc import NoSuchModuleError
from sqlalchemy.sql import dml

from .. import alembic_ops, dialects
from ..dialects.base import merged, widens_varchar
from ..errors import DeployError

REVIEWED = "reviewed_risks"
UNREADABLE = "upgrade() needs a database"


@dataclass(frozen=True)
class Finding:
    revision: str
    operation: str
    reason: str
    reviewed: str | None = None  # the marker's text, when the script marks it reviewed

    def __str__(self) -> str:
        if self.reviewed is not None:
            return f"{self.revision}: {self.operation}: reviewed: {self.reviewed}"
        return f"{self.revision}: {self.operation}: {self.reason} (mark it reviewed in {REVIEWED})"


class Unreadable(DeployError):
    """upgrade() failed without a database; `recorded` holds the operations seen before it did."""

    def __init__(self, revision: str, cause: str, recorded: list):
        super().__init__(f"{revision}: upgrade() cannot be read without a database ({cause})")
        self.revision = revision
        self.cause = cause
        self.recorded = recorded


def offline_context(dialect_name: str | None = None) -> MigrationContext:
    """A MigrationContext that writes SQL to nowhere: no database needed."""
    try:
        return MigrationContext.configure(
            dialect_name=dialect_name, opts={"as_sql": True, "output_buffer": io.StringIO()}
        )
    except NoSuchModuleError:
        raise DeployError(f"unknown database kind {dialect_name!r}") from None


class _Recording:
    """Keeps each operation instead of running it."""

    recorded: list

    def invoke(self, operation):
        self.recorded.append(operation)
        # Scripts may hand the Table create_table returns to bulk_insert.
        return operation.to_table(self.migration_context) if isinstance(operation, ops.CreateTableOp) else None


class _Recorder(_Recording, Operations):
    def __init__(self, context: MigrationContext, recorded: list):
        super().__init__(context)
        self.recorded = recorded

    @contextmanager
    def batch_alter_table(self, table_name, schema=None, **options) -> Iterator[BatchOperations]:
        # Batch operations read only the table's name and schema from their impl; nothing is flushed.
        batch = _BatchRecorder(self.migration_context, impl=SimpleNamespace(table_name=table_name, schema=schema))
        batch.recorded = self.recorded
        yield batch


class _BatchRecorder(_Recording, BatchOperations):
    pass


def _script(config, revision: str):
    with alembic_ops.alembic_errors():
        script = alembic_ops.scripts(config).get_revision(revision)
    if script is None:
        raise DeployError(f"no revision {revision!r} in the migration scripts")
    return script


def operations(config, revision: str, dialect_name: str) -> list[ops.MigrateOperation]:
    """What `revision`'s upgrade() would do on a `dialect_name` database, in order (nothing runs).

    Raises Unreadable when upgrade() needs a database (it reads from op.get_bind(), say). Recorded once
    per command (kept with the loaded scripts): the lint, the prechecks, drift and the checksums all ask."""
    kept = config.attributes.setdefault("recorded_operations", {})
    if (revision, dialect_name) not in kept:
        try:
            kept[revision, dialect_name] = _recorded(config, revision, dialect_name)
        except Unreadable as exc:
            kept[revision, dialect_name] = exc
    found = kept[revision, dialect_name]
    if isinstance(found, Unreadable):
        raise Unreadable(found.revision, found.cause, list(found.recorded))
    return list(found)


def _recorded(config, revision: str, dialect_name: str) -> list[ops.MigrateOperation]:
    script = _script(config, revision)
    recorded: list = []
    recorder = _Recorder(offline_context(dialect_name), recorded)
    # alembic.op's functions call whatever its module-level _proxy is: env.py's Operations, or ours.
    previous = getattr(op_module, "_proxy", None)
    op_module._proxy = recorder
    try:
        script.module.upgrade()
    except Exception as exc:
        raise Unreadable(script.revision, f"{type(exc).__name__}: {exc}".splitlines()[0], recorded) from None
    finally:
        op_module._proxy = previous
    return recorded


VERBS = {
    ops.AddColumnOp: "add_column",
    ops.DropColumnOp: "drop_column",
    ops.AlterColumnOp: "alter_column",
    ops.CreateTableOp: "create_table",
    ops.DropTableOp: "drop_table",
    ops.RenameTableOp: "rename_table",
    ops.CreateIndexOp: "create_index",
    ops.DropIndexOp: "drop_index",
    ops.CreateUniqueConstraintOp: "create_unique_constraint",
    ops.CreateForeignKeyOp: "create_foreign_key",
    ops.CreateCheckConstraintOp: "create_check_constraint",
    ops.CreatePrimaryKeyOp: "create_primary_key",
    ops.DropConstraintOp: "drop_constraint",
    ops.ExecuteSQLOp: "execute",
    ops.BulkInsertOp: "bulk_insert",
}


def _table(table: str, schema: str | None) -> str:
    return f"{schema}.{table}" if schema else table


def location(operation: ops.MigrateOperation) -> tuple[str | None, str | None]:
    """(table, schema) of the table an operation changes."""
    if isinstance(operation, ops.CreateForeignKeyOp):
        return operation.source_table, operation.kw.get("source_schema")
    if isinstance(operation, ops.BulkInsertOp):
        return operation.table.name, operation.table.schema
    return getattr(operation, "table_name", None), getattr(operation, "schema", None)


def table_of(operation: ops.MigrateOperation) -> str | None:
    """The table an operation changes, schema-qualified when it names one."""
    table, schema = location(operation)
    return _table(table, schema) if table else None


def _target(operation, table: str | None) -> str:
    match operation:
        case ops.AddColumnOp():
            return f"{table}.{operation.column.name}"
        case ops.DropColumnOp() | ops.AlterColumnOp():
            return f"{table}.{operation.column_name}"
        case ops.RenameTableOp():
            return f"{table} to {operation.new_table_name}"
        case ops.CreateIndexOp() | ops.DropIndexOp() | ops.DropConstraintOp():
            return f"{table}.{getattr(operation, 'index_name', None) or operation.constraint_name}"
        case ops.AddConstraintOp() if operation.constraint_name:
            return f"{table}.{operation.constraint_name}"
        case ops.AddConstraintOp():
            columns = getattr(operation, "local_cols", None) or getattr(operation, "columns", None) or []
            return f"{table}({','.join(str(column) for column in columns)})"
        case ops.ExecuteSQLOp():
            return _sql(operation.sqltext)
    return table or ""


def name(operation: ops.MigrateOperation) -> str:
    """A short, stable name: "add_column posts.slug", "create_index posts.ix_posts_slug"."""
    verb = VERBS.get(type(operation), type(operation).__name__)
    return f"{verb} {_target(operation, table_of(operation))}".rstrip()


def _text(sqltext) -> str:
    try:
        return sqltext if isinstance(sqltext, str) else str(sqltext)
    except Exception:  # a construct that needs a dialect to compile
        return type(sqltext).__name__


def _sql(sqltext) -> str:
    text = " ".join(_text(sqltext).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _changes_data_only(sqltext) -> bool:
    """INSERT and UPDATE, the usual raw SQL in a migration; the rest is left to a human."""
    if isinstance(sqltext, (dml.Insert, dml.Update)):
        return True
    words = _text(sqltext).split()
    return bool(words) and words[0].upper() in ("INSERT", "UPDATE")


def _alter_risks(operation: ops.AlterColumnOp) -> Iterator[tuple[str, str]]:
    base = name(operation)
    if operation.modify_name:
        yield f"{base} rename to {operation.modify_name}", "the running code still uses the old name and fails"
    new, old = operation.modify_type, operation.existing_type
    if new is not None and (old is None or repr(old) != repr(new)):
        change = f"({old if old is not None else '?'} -> {new})"
        if widens_varchar(old, new):
            reason = f"widens the column {change}"
        else:
            reason = f"changes the type {change}: values are converted, maybe cut"
        yield f"{base} type", reason
    if operation.modify_nullable is False and operation.existing_nullable is not False:
        reason = "fails if a row holds NULL, and the running code may still write NULL"
        yield f"{base} NOT NULL", reason


def _risks(operation) -> Iterator[tuple[str, str]]:
    """(name, reason) for each risk of one operation on a table that already holds rows, on any database
    (each dialect adds its own: what blocks the application while it runs)."""
    match operation:
        case ops.DropTableOp():
            yield name(operation), "drops the table and its rows; the running code may still use it"
        case ops.DropColumnOp():
            yield name(operation), "drops the column's data; the running code still reads and writes it"
        case ops.RenameTableOp():
            yield name(operation), "the running code still uses the old name and fails"
        case ops.AlterColumnOp():
            yield from _alter_risks(operation)
        case ops.AddColumnOp():
            column = operation.column
            plain = not (column.primary_key or column.computed is not None or column.identity is not None)
            if plain and not column.nullable and column.server_default is None:
                yield (
                    f"{name(operation)} NOT NULL without server default",
                    "rows already there get no value (SQLite and PostgreSQL refuse it, MariaDB writes 0 or '')"
                    " and the running code's INSERTs fail",
                )
        case ops.CreateIndexOp(unique=True) | ops.CreateUniqueConstraintOp():
            yield name(operation), "fails if existing rows hold duplicates"
        case ops.CreateForeignKeyOp() | ops.CreateCheckConstraintOp():
            yield name(operation), "fails if existing rows break it"
        case ops.CreatePrimaryKeyOp():
            yield name(operation), "fails on duplicates or NULLs"
        case ops.DropConstraintOp(constraint_type="primary"):
            yield name(operation), "the table loses its primary key"
        case ops.ExecuteSQLOp() if not _changes_data_only(operation.sqltext):
            yield name(operation), "raw SQL the lint cannot read: review it by hand"


def risks(
    operations: list[ops.MigrateOperation], dialect_name: str, empty_tables: set[str] | None = None
) -> list[tuple[str, str]]:
    """(name, reason) for each risky operation of one revision, in order.

    Operations on an empty table are not risky: one the revision creates, or one `empty_tables` names
    (created by an earlier revision of the same run, nothing put in since). The set is kept up to date
    for the revisions after this one."""
    dialect = dialects.find(dialect_name)
    empty = set() if empty_tables is None else empty_tables
    found = []
    where_they_stand = dialect.lint_in_revision(operations) if dialect is not None else {}
    for position, operation in enumerate(operations):
        table = table_of(operation)
        if isinstance(operation, ops.CreateTableOp):
            empty.add(_table(operation.table_name, operation.schema))
        elif isinstance(operation, ops.RenameTableOp) and table in empty:
            empty.discard(table)
            empty.add(_table(operation.new_table_name, operation.schema))
        elif table not in empty:
            risky = list(_risks(operation))
            if dialect is not None:
                risky = dialect.lint_risks(operation, risky, name(operation))
            if position in where_they_stand:
                risky = merged(risky, [(name(operation), where_they_stand[position])])
            found.extend(risky)
        _fill(operation, table, empty)
    return found


def _fill(operation: ops.MigrateOperation, table: str | None, empty: set[str]) -> None:
    """Forget the tables `operation` may put rows in (or drop): they are empty no longer."""
    if isinstance(operation, (ops.BulkInsertOp, ops.DropTableOp)):
        empty.discard(table)
    elif isinstance(operation, ops.ExecuteSQLOp):
        inserted = _inserted_into(operation.sqltext)
        if inserted is not None:
            empty.discard(inserted)
        elif not _updates_only(operation.sqltext):
            empty.clear()  # raw SQL that may fill any table


def changes_data_only(sqltext) -> bool:
    """Raw SQL that only INSERTs or UPDATEs, which the lint lets pass."""
    return _changes_data_only(sqltext)


def rows_changed(sqltext) -> str | None:
    """The table raw SQL puts rows in or UPDATEs, if that is all it does; None when it cannot be told."""
    inserted = _inserted_into(sqltext)
    if inserted is not None:
        return inserted
    if isinstance(sqltext, dml.Update):
        return _table(sqltext.table.name, getattr(sqltext.table, "schema", None))
    found = re.match(r"\s*UPDATE\s+[`\"]?([\w.]+?)[`\"]?\s", _text(sqltext), re.IGNORECASE)
    return found.group(1) if found else None


def reviewed_marks(config, revision: str) -> dict[str, str]:
    """The reviewed_risks marker of `revision`'s script."""
    return marker(_script(config, revision))


def _inserted_into(sqltext) -> str | None:
    """The table an INSERT names, if that is what `sqltext` is."""
    if isinstance(sqltext, dml.Insert):
        return _table(sqltext.table.name, getattr(sqltext.table, "schema", None))
    found = re.match(r"\s*INSERT\s+(?:IGNORE\s+)?INTO\s+[`\"]?([\w.]+?)[`\"]?[\s(]", _text(sqltext), re.IGNORECASE)
    return found.group(1) if found else None


def _updates_only(sqltext) -> bool:
    """An UPDATE: it changes rows, adds none."""
    if isinstance(sqltext, dml.Update):
        return True
    words = _text(sqltext).split()
    return bool(words) and words[0].upper() == "UPDATE"


def marker(script) -> dict[str, str]:
    """The script's reviewed_risks marker: {operation name: why it is safe}."""
    marker = getattr(script.module, REVIEWED, {})
    if not isinstance(marker, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in marker.items()):
        raise DeployError(f"{script.revision}: {REVIEWED} must map operation names to why each is safe (strings)")
    return marker


def lint(config, revisions: list[str], dialect_name: str, include_reviewed: bool = False) -> list[Finding]:
    """The risky operations of `revisions` (in order) on a `dialect_name` database.

    Findings the scripts mark reviewed are left out, unless `include_reviewed` (then `reviewed` is set)."""
    findings = []
    # Tables an earlier revision of this run creates hold no rows when a later one changes them.
    empty_tables: set[str] = set()
    for revision in revisions:
        script = _script(config, revision)
        reviewed = marker(script)
        try:
            found = risks(operations(config, revision, dialect_name), dialect_name, empty_tables)
        except Unreadable as exc:
            found = risks(exc.recorded, dialect_name, empty_tables)
            found.append((UNREADABLE, f"it failed without one ({exc.cause}), so its risks are unknown: review it"))
            empty_tables.clear()  # what it did with a database is unknown, rows included
        for operation, reason in found:
            finding = Finding(script.revision, operation, reason, reviewed.get(operation))
            if include_reviewed or finding.reviewed is None:
                findings.append(finding)
    return findings
