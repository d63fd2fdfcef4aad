"""Half-applied revisions: what a revision that failed part way left in the database.

MariaDB cannot roll back DDL, so a revision that failed part way (or was aborted) leaves its first
operations behind. What it left is told from the run itself, not guessed from the schema: `watching`
follows each operation the revision's script invokes and the statements the database completes for
it. The operations before the one that raised ran; the one that raised did not apply (its first
statement failed), or cannot be told (some of its statements had run, or it was aborted while it ran);
the ones after it never ran. A column that exists afterwards proves nothing: it may have existed before.

`diagnose` reads the other way, from the live schema alone (tables, columns, indexes and constraints
by name, nullability and type where they changed): what is there now, not who put it there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from alembic.operations import ops
from alembic.operations.base import AbstractOperations, BatchOperations
from alembic.operations.batch import BatchOperationsImpl
from sqlalchemy import event
from sqlalchemy.engine import Connection

from ..errors import relayed
from . import lint


@dataclass
class Diagnosis:
    revision: str
    applied: list[str] = field(default_factory=list)
    not_applied: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.applied and self.not_applied:
            return "is half applied"
        if not self.unknown and bool(self.applied) != bool(self.not_applied):
            return "is fully applied" if self.applied else "is not applied"
        return "may be half applied"

    @property
    def half_applied(self) -> bool:
        return "half" in self.state

    def _headline(self) -> str:
        total = len(self.applied) + len(self.not_applied) + len(self.unknown)
        return f"revision {self.revision} {self.state}: {len(self.applied)} of {total} operations in the live schema"

    def summary(self) -> str:
        """One line for an error message."""
        parts = [self._headline(), f" ({', '.join(self.applied)})" if self.applied else ""]
        parts += [f"; not applied: {', '.join(self.not_applied)}" if self.not_applied else ""]
        parts += [f"; cannot tell: {', '.join(self.unknown)}" if self.unknown else ""]
        return "".join(parts)

    def report(self, prefix: str = "") -> str:
        """A few lines ending with the ways out; `prefix` goes before commands ("invoke ", "fab prod ")."""
        lines = [self._headline() + "."]
        lists = {"applied": self.applied, "not applied": self.not_applied, "cannot tell": self.unknown}
        lines += [f"  {title}: {item}" for title, names in lists.items() for item in names]
        stamp = f"`{prefix}db.stamp {self.revision}`"
        if self.state == "is not applied":
            lines.append("Nothing to undo: fix the revision, then upgrade again.")
        elif self.state == "is fully applied":
            lines.append(f"Record it: {stamp}.")
        else:
            lines += [
                "Ways out:",
                f"  - restore the backup taken before the upgrade: `{prefix}db.restore`;",
                f"  - or finish the rest by hand, then record the revision: {stamp}.",
            ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


# Statements that change the schema: MariaDB commits each at once, with whatever ran before it.
SCHEMA_VERBS = {"CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE"}
DATA_VERBS = {"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "COPY"}
VERSION_TABLE = "alembic_version"


@dataclass
class Group:
    """Operations that run together: one, or those a batch_alter_table block queued (they run when
    the block ends); how many statements the database completed for them, and whether they ended."""

    names: list[str]
    schema_statements: int = 0
    data_statements: int = 0
    done: bool = False

    @property
    def started(self) -> bool:
        return bool(self.schema_statements or self.data_statements)


class Trail:
    """A revision's operations as they ran (see `watching`)."""

    def __init__(self) -> None:
        self.groups: list[Group] = []
        self.queued: list[str] = []  # batch operations waiting for their block's end
        self.running: Group | None = None
        self.loose = 0  # changes the script made on the connection itself, outside any operation

    @contextmanager
    def run(self, group: Group) -> Iterator[None]:
        if self.running is not None:  # an operation inside another is part of it
            yield
            return
        self.running = group
        self.groups.append(group)
        try:
            yield
            group.done = True
        finally:
            self.running = None

    def executed(self, statement: str) -> None:
        words = statement.split(None, 1)
        verb = words[0].upper() if words else ""
        if verb not in SCHEMA_VERBS | DATA_VERBS:
            return  # reads, SET, SAVEPOINT: nothing changed
        if VERSION_TABLE in statement.lower() and self.running is None:
            if verb in DATA_VERBS:
                # Alembic recorded a revision as done (below a merge several run in one call): what
                # follows belongs to the next one.
                self.groups, self.loose = [], 0
            return
        if self.running is None:
            self.loose += 1
        elif verb in SCHEMA_VERBS:
            self.running.schema_statements += 1
        else:
            self.running.data_statements += 1


@contextmanager
def watching(connection: Connection) -> Iterator[Trail]:
    """Follow the operations a migration script invokes on `connection`, and the statements the
    database completes for each: what a failure left is then known, not guessed."""
    trail = Trail()
    invoke, flush = AbstractOperations.invoke, BatchOperationsImpl.flush

    def invoking(operations, operation):
        if isinstance(operations, BatchOperations):
            trail.queued.append(_name(operation))
            return invoke(operations, operation)
        with trail.run(Group([_name(operation)])):
            return invoke(operations, operation)

    def flushing(batch):
        queued, trail.queued = trail.queued, []
        with trail.run(Group(queued)):
            return flush(batch)

    def executed(conn, cursor, statement, *rest) -> None:
        trail.executed(statement)

    AbstractOperations.invoke, BatchOperationsImpl.flush = invoking, flushing
    event.listen(connection, "after_cursor_execute", executed)
    try:
        yield trail
    finally:
        AbstractOperations.invoke, BatchOperationsImpl.flush = invoke, flush
        event.remove(connection, "after_cursor_execute", executed)


def _name(operation) -> str:
    """lint's name for it; the watch must never be what breaks a migration."""
    try:
        return lint.name(operation)
    except Exception:
        return type(operation).__name__


@dataclass
class Left:
    """What a revision that failed or was aborted left in a database without transactional DDL."""

    revision: str
    applied: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # raised before any of its statements completed
    not_run: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # each with why it cannot be told

    @property
    def state(self) -> str:
        if not self.applied and not self.unknown:
            return "is not applied"
        if not (self.failed or self.not_run or self.unknown):
            return "ran whole but is not recorded"
        return "is half applied" if not self.unknown else "may be half applied"

    @property
    def half_applied(self) -> bool:
        """Anything of it may be in the database: stamping or downgrading blindly would be wrong."""
        return self.state != "is not applied"

    def summary(self) -> str:
        """One line: which operations applied, which failed, which never ran, which cannot be told.
        The operations' names come from the script: they are marked relayed, for masking."""

        def names(items: list[str]) -> str:
            return ", ".join(map(relayed, items))

        count = len(self.applied)
        parts = [f"revision {self.revision} {self.state}: {count} operation{'s' * (count != 1)} applied"]
        parts += [f" ({names(self.applied)})" if self.applied else ""]
        parts += [f"; failed, so not applied: {names(self.failed)}" if self.failed else ""]
        parts += [f"; never ran: {names(self.not_run)}" if self.not_run else ""]
        parts += [f"; cannot tell: {names(self.unknown)}" if self.unknown else ""]
        return "".join(parts)


def left_by(trail: Trail, revision: str, planned: list[str] | None, aborted: bool = False) -> Left:
    """What the run `trail` followed left of `revision`. `planned`: the names of all its operations
    in order, when the script can be read offline (lint.operations); `aborted`: stopped by Ctrl-C
    (the statement in flight may have completed on the server) rather than by an error."""
    left = Left(revision)
    groups = trail.groups
    # Data changes are committed by the next schema statement (MariaDB commits implicitly before DDL);
    # after the last one, the failure's rollback undid them, unless the failing statement committed first.
    last_schema = max((i for i, group in enumerate(groups) if group.schema_statements), default=-1)
    for i, group in enumerate(groups):
        if group.done:
            if group.schema_statements or not group.data_statements or i < last_schema:
                left.applied += group.names
            else:
                left.unknown += [f"{name} (its data changes may have been rolled back)" for name in group.names]
        elif aborted:
            left.unknown += [f"{name} (running when aborted)" for name in group.names]
        elif group.started:
            why = "some of the batch had run when it failed" if len(group.names) > 1 else "part of it had run"
            left.unknown += [f"{name} ({why})" for name in group.names]
        else:
            left.failed += group.names[:1]
            left.not_run += group.names[1:]
    left.not_run += trail.queued  # a batch block that never reached its end
    invoked = [name for group in groups for name in group.names] + trail.queued
    if planned is not None and planned[: len(invoked)] == invoked:
        left.not_run += planned[len(invoked) :]
    else:  # unreadable offline, or it took another path live: only the run itself is known
        left.not_run.append("the rest of the script, if any")
    if trail.loose:
        left.unknown.append(f"{trail.loose} change{'s' * (trail.loose > 1)} the script made on the connection itself")
    return left


def ways_out(command, finished: str, before: str, backup: str | None) -> str:
    """The three ways out of a half-applied revision; `command(task)` spells a command as the user
    runs it here ("invoke db.stamp"). `finished`: the revision to record once it is finished by hand,
    `before`: the one to record once what it applied is undone by hand."""
    if backup:
        restore = f"restore the backup taken before it (`{command('restore')} {backup}`)"
    else:
        restore = f"restore a backup from before it (`{command('backups')}` lists them)"
    stamp = command("stamp")
    return (
        f"ways out: {restore}; or finish it by hand, then record it: `{stamp} {finished}`; "
        f"or undo what it applied by hand, then record that: `{stamp} {before}`"
    )


def diagnose(connection: Connection, config, revision: str, dialect_name: str | None = None) -> Diagnosis:
    """Which of `revision`'s operations the database behind `connection` holds.

    Open a fresh connection after a failure: the failed one may be dead or inside an aborted transaction."""
    result = Diagnosis(revision)
    try:
        recorded = lint.operations(config, revision, dialect_name or connection.dialect.name)
        unreadable = None
    except lint.Unreadable as exc:
        recorded, unreadable = exc.recorded, exc
    schema = _Schema(connection)
    for operation in recorded:
        found = schema.check(operation)
        bucket = result.unknown if found is None else result.applied if found else result.not_applied
        bucket.append(lint.name(operation))
    if unreadable is not None:
        result.unknown.append(f"the rest of upgrade(), unreadable without a database ({unreadable.cause})")
    return result


class _Schema:
    """The live schema, through one Inspector; each check says True, False, or None (cannot tell)."""

    def __init__(self, connection: Connection):
        self.inspector = sa.inspect(connection)
        self.impl = lint.offline_context(dialect=connection.dialect).impl

    def check(self, operation) -> bool | None:
        table, schema = lint.location(operation)
        try:
            return self._check(operation, table, schema) if table else None
        except (sa.exc.NoSuchTableError, NotImplementedError):
            return None

    def _has(self, table: str, schema: str | None) -> bool:
        return self.inspector.has_table(table, schema=schema)

    def _check(self, operation, table: str, schema: str | None) -> bool | None:
        match operation:
            case ops.CreateTableOp() | ops.DropTableOp():
                return self._has(table, schema) == isinstance(operation, ops.CreateTableOp)
            case ops.RenameTableOp():
                return _either(self._has(operation.new_table_name, schema), self._has(table, schema))
        if not self._has(table, schema):
            return None  # a later operation of the revision may have renamed or dropped it
        inspector = self.inspector
        match operation:
            case ops.AddColumnOp():
                return operation.column.name in self._columns(table, schema)
            case ops.DropColumnOp():
                return operation.column_name not in self._columns(table, schema)
            case ops.AlterColumnOp():
                return self._altered(operation, self._columns(table, schema))
            case ops.CreatePrimaryKeyOp():
                key = inspector.get_pk_constraint(table, schema=schema)["constrained_columns"]
                return set(key) == set(operation.columns)
            case ops.DropConstraintOp(constraint_type="primary"):
                return not inspector.get_pk_constraint(table, schema=schema)["constrained_columns"]
            case ops.CreateIndexOp() | ops.CreateUniqueConstraintOp() | ops.DropIndexOp():
                return self._named(operation, table, schema, ("index", "unique"))
            case ops.CreateForeignKeyOp():
                return self._named(operation, table, schema, ("foreignkey",))
            case ops.CreateCheckConstraintOp():
                return self._named(operation, table, schema, ("check",))
            case ops.DropConstraintOp():
                kinds = (operation.constraint_type,) if operation.constraint_type else ("index", "unique", "foreignkey")
                return self._named(operation, table, schema, kinds)
        return None

    def _columns(self, table: str, schema: str | None) -> dict[str, dict]:
        return {column["name"]: column for column in self.inspector.get_columns(table, schema=schema)}

    def _named(self, operation, table: str, schema: str | None, kinds: tuple[str, ...]) -> bool | None:
        """Whether a named index or constraint is there, as the operation wants it (dropped or not).

        MariaDB lists a unique constraint among the indexes too, hence several kinds."""
        wanted = getattr(operation, "index_name", None) or getattr(operation, "constraint_name", None)
        if not wanted:
            return None  # unnamed: the database named it, we cannot know how
        listing = {
            "index": self.inspector.get_indexes,
            "unique": self.inspector.get_unique_constraints,
            "foreignkey": self.inspector.get_foreign_keys,
            "check": self.inspector.get_check_constraints,
        }
        there = any(str(wanted) == found["name"] for kind in kinds for found in listing[kind](table, schema=schema))
        return not there if isinstance(operation, (ops.DropIndexOp, ops.DropConstraintOp)) else there

    def _altered(self, operation: ops.AlterColumnOp, columns: dict[str, dict]) -> bool | None:
        """All of an ALTER's checkable changes are there, or none are: one statement does them all."""
        seen = []
        name = operation.column_name
        if operation.modify_name:
            renamed = _either(operation.modify_name in columns, name in columns)
            seen.append(renamed)
            name = operation.modify_name if renamed else name
        column = columns.get(name)
        if column is None:
            return None
        if operation.modify_nullable is not None:
            seen.append(column["nullable"] == operation.modify_nullable)
        if operation.modify_type is not None:
            seen.append(self._type_is(column, operation.modify_type, operation.existing_type))
        if not seen or None in seen or len(set(seen)) > 1:
            return None
        return seen[0]

    def _type_is(self, column: dict, wanted, existing) -> bool | None:
        """The reflected type compared as autogenerate compares it (alembic's impl.compare_type)."""

        def differs(type_) -> bool:
            return self.impl.compare_type(sa.Column(column["name"], column["type"]), sa.Column(column["name"], type_))

        if not differs(wanted):
            return True
        return False if existing is None or not differs(existing) else None


def _either(new_there: bool, old_there: bool) -> bool | None:
    """A rename is done when only the new name is there, not done when only the old one is."""
    return new_there if new_there != old_there else None
