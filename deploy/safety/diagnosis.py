"""Half-applied revisions: which of a revision's operations are in the live schema.

MariaDB cannot roll back DDL, so a revision that failed part way (or a run cut off) leaves its first
operations behind. Each operation `lint.operations` records is checked with SQLAlchemy's Inspector:
tables, columns, indexes and constraints by name, nullability and type where they changed. Raw SQL,
bulk inserts and anything else the schema cannot show are "unknown".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from alembic.operations import ops
from sqlalchemy.engine import Connection

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
