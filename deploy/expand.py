"""Expand and contract: a column renamed while two releases serve the database, in two revisions.

The *expand* revision adds the new column beside the old one, has the database keep the two equal
under the writes of either release (`op.sync_columns`: triggers, from the dialect), and copies the
existing rows in batches (deploy.backfill). The old release writes the old name, the new release the
new one, and each sees the other's writes. The *contract* revision (`op.unsync_columns`, then the drop
of the old column, and the new column made as the models want it: NOT NULL, its server default) runs
once no running release maps the old column, which the compatibility check holds it to.

    op.sync_columns("posts", "title", "headline")
    backfill("posts", "headline = title", where="headline IS NULL", name="posts.headline")

`expanded` builds both revisions' operations from a rename autogenerate found (deploy.renames)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sqlalchemy as sa
from alembic.autogenerate import renderers
from alembic.operations import MigrateOperation, Operations, ops

from . import dialects

MAX_NAME = 60  # a trigger's or function's name, under MariaDB's 64 and PostgreSQL's 63 with a suffix
BACKFILL_IMPORT = "from deploy.backfill import backfill"


def sync_name(table: str, old: str, new: str) -> str:
    """The name of the triggers (and PostgreSQL's function) that keep `old` and `new` equal."""
    name = f"{table}_{old}_{new}_sync"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9]}_{digest}"


@Operations.register_operation("sync_columns")
@dataclass
class SyncColumns(MigrateOperation):
    """`op.sync_columns(table, old, new)`: keep `old` and `new` equal under any release's writes."""

    table_name: str
    old: str
    new: str

    @classmethod
    def sync_columns(cls, operations: Operations, table_name: str, old: str, new: str) -> None:
        operations.invoke(cls(table_name, old, new))

    def reverse(self) -> UnsyncColumns:
        return UnsyncColumns(self.table_name, self.old, self.new)

    def __hash__(self) -> int:  # MigrateOperation's own, which a dataclass would drop
        return id(self)


@Operations.register_operation("unsync_columns")
@dataclass
class UnsyncColumns(MigrateOperation):
    """`op.unsync_columns(table, old, new)`: remove what sync_columns made."""

    table_name: str
    old: str
    new: str

    @classmethod
    def unsync_columns(cls, operations: Operations, table_name: str, old: str, new: str) -> None:
        operations.invoke(cls(table_name, old, new))

    def reverse(self) -> SyncColumns:
        return SyncColumns(self.table_name, self.old, self.new)

    def __hash__(self) -> int:
        return id(self)


@Operations.implementation_for(SyncColumns)
def run_sync(operations: Operations, operation: SyncColumns) -> None:
    _execute(operations, _dialect(operations).sync_columns, operation, operation.old, operation.new)


@Operations.implementation_for(UnsyncColumns)
def run_unsync(operations: Operations, operation: UnsyncColumns) -> None:
    _execute(operations, _dialect(operations).unsync_columns, operation)


def _dialect(operations: Operations):
    return dialects.dialect_for(operations.migration_context.dialect.name, "keeping two columns in sync")


def _execute(operations: Operations, statements, operation, *columns: str) -> None:
    quote = operations.migration_context.dialect.identifier_preparer.quote
    name = sync_name(operation.table_name, operation.old, operation.new)
    for statement in statements(operation.table_name, *columns, name, quote):
        operations.execute(statement)


@dataclass
class CopyColumn(MigrateOperation):
    """What the revision writes as a backfill() call: `target` = `source` where `target` IS NULL, in
    batches. Only rendered (backfill() invokes deploy.backfill's own operation when it runs)."""

    table_name: str
    target: str
    source: str

    def __hash__(self) -> int:
        return id(self)


@renderers.dispatch_for(SyncColumns)
def _render_sync(autogen_context, op: SyncColumns) -> str:
    return f"op.sync_columns({op.table_name!r}, {op.old!r}, {op.new!r})"


@renderers.dispatch_for(UnsyncColumns)
def _render_unsync(autogen_context, op: UnsyncColumns) -> str:
    return f"op.unsync_columns({op.table_name!r}, {op.old!r}, {op.new!r})"


@renderers.dispatch_for(CopyColumn)
def _render_copy(autogen_context, op: CopyColumn) -> str:
    autogen_context.imports.add(BACKFILL_IMPORT)
    return (
        f"backfill({op.table_name!r}, {f'{op.target} = {op.source}'!r}, where={f'{op.target} IS NULL'!r}, "
        f"name={f'{op.table_name}.{op.target}'!r})"
    )


@dataclass
class Expanded:
    """A rename's operations in two revisions, each list in the order it runs."""

    expand_upgrade: list
    expand_downgrade: list
    contract_upgrade: list
    contract_downgrade: list


def expanded(
    table: str,
    schema: str | None,
    old: sa.Column,
    new: sa.Column,
    new_indexes: list = (),
    old_indexes: list = (),
) -> Expanded:
    """`table`.`old` (as the database has it) renamed to `new` (as the models want it) in two steps;
    `new_indexes`, the indexes and constraints autogenerate makes on the new column, made once the rows
    are copied; `old_indexes`, those it drops on the old one, which the old release keeps until the
    contract.
    Both columns are nullable and without a server default while both exist: each release leaves the
    other's name out of its inserts, and an insert that sets the new column is how the triggers know
    the new release wrote it."""
    sync = SyncColumns(table, old.name, new.name)
    loose_new = sa.Column(new.name, new.type, nullable=True, comment=new.comment)
    loose_old = sa.Column(old.name, old.type, nullable=True, comment=old.comment)
    tighten_new = _tighten(table, schema, new)
    tighten_old = _tighten(table, schema, old)
    return Expanded(
        expand_upgrade=[
            _on(table, schema, ops.AddColumnOp(table, loose_new, schema=schema)),
            sync,
            CopyColumn(table, new.name, old.name),
            *_on_any(table, schema, *new_indexes),
        ],
        expand_downgrade=[
            sync.reverse(),
            _on(
                table,
                schema,
                *(index.reverse() for index in new_indexes),
                ops.DropColumnOp(table, new.name, schema=schema),
            ),
        ],
        contract_upgrade=[
            sync.reverse(),
            _on(
                table,
                schema,
                *old_indexes,
                ops.DropColumnOp.from_column_and_tablename(schema, table, old),
                *([tighten_new] if tighten_new else []),
            ),
        ],
        contract_downgrade=[
            _on(
                table,
                schema,
                *([_loosen(table, schema, new)] if tighten_new else []),
                ops.AddColumnOp(table, loose_old, schema=schema),
            ),
            sync,
            CopyColumn(table, old.name, new.name),
            *_on_any(
                table, schema, *([tighten_old] if tighten_old else []), *(index.reverse() for index in old_indexes)
            ),
        ],
    )


def _on_any(table: str, schema: str | None, *operations) -> list[ops.ModifyTableOps]:
    """_on's block, or none for no operations."""
    return [_on(table, schema, *operations)] if operations else []


def _on(table: str, schema: str | None, *operations) -> ops.ModifyTableOps:
    """Operations on one table, written in a batch_alter_table block as autogenerate writes them."""
    return ops.ModifyTableOps(table, list(operations), schema=schema)


def _tighten(table: str, schema: str | None, column: sa.Column) -> ops.AlterColumnOp | None:
    """The alteration from the loose column both releases share to `column` as it is meant to be."""
    if column.nullable and column.server_default is None:
        return None
    return ops.AlterColumnOp(
        table,
        column.name,
        schema=schema,
        existing_type=column.type,
        existing_nullable=True,
        existing_server_default=False,
        existing_comment=column.comment,
        modify_nullable=False if not column.nullable else None,
        modify_server_default=column.server_default if column.server_default is not None else False,
    )


def _loosen(table: str, schema: str | None, column: sa.Column) -> ops.AlterColumnOp:
    """The reverse of _tighten: `column` nullable again, without its server default."""
    defaulted = column.server_default is not None
    return ops.AlterColumnOp(
        table,
        column.name,
        schema=schema,
        existing_type=column.type,
        existing_nullable=column.nullable,
        existing_server_default=column.server_default if defaulted else False,
        existing_comment=column.comment,
        modify_nullable=True if not column.nullable else None,
        modify_server_default=None if defaulted else False,
    )
