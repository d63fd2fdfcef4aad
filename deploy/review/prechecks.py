"""Data prechecks: before an upgrade, what its operations would fail on among the rows there now.

For each pending operation that can fail on existing rows (a unique index or constraint, NOT NULL, a foreign
key, a CHECK, a primary key, a narrower type), one read-only query counts the rows that break it and shows a
few of their keys. The operations are those the lint records offline (review.lint); the queries are
SQLAlchemy Core, each bounded by the dialect's statement time limit (`Dialect.bounded`): a check past it
says "not checked: too slow" instead of loading the database.

What is not checked, and why:
- tables created earlier in the same range (they are empty) and columns added in it;
- operations on a table whose rows an earlier operation of the range changes (an UPDATE, an INSERT, a
  bulk_insert, raw SQL that cannot be read): the rows the check would read are not those the operation
  meets; they are listed as unchecked, as is raw SQL that is more than an INSERT or an UPDATE;
- constraints the database adds without checking the rows there (`Dialect.checks_existing_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import sqlalchemy as sa
from alembic.operations import ops
from sqlalchemy import and_, column, exists, func, not_, or_, select, table, text
from sqlalchemy.exc import SQLAlchemyError

from .. import dialects
from ..dialects.base import TooSlow, widens_varchar
from . import lint

SAMPLES = 5  # keys shown per operation
FAILS, TOO_SLOW, UNCHECKED, PASSED = "fails", "too slow", "unchecked", "passed"
FIRST = "first, in this revision or one before it"
# The bounds of the integer types a column may be narrowed to, signed and unsigned.
INTEGER_BITS = ((sa.SmallInteger, 16), (sa.BigInteger, 64), (sa.Integer, 32))

Where = tuple[str, str | None]  # (table, schema)


@dataclass(frozen=True)
class Result:
    """One operation's precheck: FAILS (with how many rows and a few keys), TOO_SLOW, UNCHECKED or PASSED."""

    revision: str
    subject: str  # what the operation adds: "posts.status: NOT NULL"
    outcome: str
    count: int = 0
    found: str = ""  # what the rows hold, after the count: "rows hold NULL"
    samples: str = ""  # "id 4, 9, 17"
    detail: str = ""  # the fix (FAILS), the limit (TOO_SLOW), why (UNCHECKED)
    finding: str = ""  # the lint's name for the operation, as reviewed_risks marks it
    reviewed: bool = False

    def __str__(self) -> str:
        if self.outcome == FAILS:
            shown = f" ({self.samples})" if self.samples else ""
            return f"{self.revision}: {self.subject}, but {self.found}{shown}: {self.detail} {FIRST}"
        if self.outcome == TOO_SLOW:
            return f"{self.revision}: {self.subject}: not checked: too slow ({self.detail})"
        if self.outcome == UNCHECKED:
            return f"{self.revision}: {self.subject}: {self.detail}"
        return f"{self.revision}: {self.subject}: no row breaks it"


@dataclass(frozen=True)
class Unchecked:
    """An operation the prechecks cannot judge, and why."""

    revision: str
    subject: str
    why: str

    def result(self) -> Result:
        return Result(self.revision, self.subject, UNCHECKED, detail=self.why)


@dataclass(frozen=True)
class Check:
    """Rows of `where` that break what an operation adds: counted, a few keys shown."""

    revision: str
    finding: str
    reviewed: bool
    subject: str
    where: Where

    def rows(self, t, dialect):
        """The condition a breaking row meets (subclasses)."""
        raise NotImplementedError

    found = "break it"
    fix = "fix them"

    def columns(self) -> list[str]:
        return []

    def run(self, connection, dialect) -> Result:
        name, schema = self.where
        keys = sa.inspect(connection).get_pk_constraint(name, schema=schema).get("constrained_columns") or []
        t = table(name, *(column(c) for c in dict.fromkeys([*self.columns(), *keys])), schema=schema)
        condition = self.rows(t, dialect)
        count = connection.execute(select(func.count()).select_from(t).where(condition)).scalar() or 0
        if not count:
            return self.passed()
        samples = ""
        if keys:
            key_columns = [t.c[key] for key in keys]
            shown = connection.execute(select(*key_columns).where(condition).order_by(*key_columns).limit(SAMPLES))
            samples = _samples(keys, shown.all())
        found = f"{count} row{'s' * (count != 1)} {_verb(self.found, count)}"
        return self.failed(count, found, samples)

    def passed(self) -> Result:
        return Result(self.revision, self.subject, PASSED, finding=self.finding, reviewed=self.reviewed)

    def failed(self, count: int, found: str, samples: str) -> Result:
        return Result(self.revision, self.subject, FAILS, count, found, samples, self.fix, self.finding, self.reviewed)


@dataclass(frozen=True)
class NotNull(Check):
    names: tuple[str, ...] = ()
    found = "hold NULL"
    fix = "fill them"

    def columns(self) -> list[str]:
        return list(self.names)

    def rows(self, t, dialect):
        return or_(*(t.c[name].is_(None) for name in self.names))


@dataclass(frozen=True)
class Unique(Check):
    """Duplicates: values held by more than one row (rows with a NULL in the columns never clash)."""

    names: tuple[str, ...] = ()

    def run(self, connection, dialect) -> Result:
        name, schema = self.where
        t = table(name, *(column(c) for c in self.names), schema=schema)
        values = [t.c[c] for c in self.names]
        groups = (
            select(*values, func.count().label("held_by"))
            .where(and_(*(value.is_not(None) for value in values)))
            .group_by(*values)
            .having(func.count() > 1)
        )
        counted = groups.subquery()
        duplicated, rows = connection.execute(select(func.count(), func.sum(counted.c.held_by))).one()
        if not duplicated:
            return self.passed()
        shown = connection.execute(groups.with_only_columns(*values).order_by(*values).limit(SAMPLES))
        one = duplicated == 1
        many = f"{duplicated} value{'s' * (not one)} {'is' if one else 'are'}"
        found = f"{many} held by more than one row, {int(rows)} rows in all"
        return self.failed(duplicated, found, _samples(list(self.names), shown.all()))

    fix = "remove the duplicates"


@dataclass(frozen=True)
class Orphans(Check):
    """Rows whose foreign key refers to no row (all of them, when the referred table is new and empty)."""

    names: tuple[str, ...] = ()
    referent: Where = ("", None)
    referred: tuple[str, ...] = ()
    referent_empty: bool = False
    fix = "delete or correct them"

    @property
    def found(self) -> str:  # type: ignore[override]
        return f"refer to no row of {_qualified(self.referent)}"

    def columns(self) -> list[str]:
        return list(self.names)

    def rows(self, t, dialect):
        filled = and_(*(t.c[name].is_not(None) for name in self.names))
        if self.referent_empty:
            return filled
        name, schema = self.referent
        other = table(name, *(column(c) for c in self.referred), schema=schema).alias("referred")
        match = and_(*(other.c[far] == t.c[near] for near, far in zip(self.names, self.referred, strict=True)))
        return and_(filled, not_(exists(select(1).select_from(other).where(match))))


@dataclass(frozen=True)
class TooLong(Check):
    name: str = ""
    length: int = 0
    found = "hold a value too long"
    fix = "shorten them"

    def columns(self) -> list[str]:
        return [self.name]

    def rows(self, t, dialect):
        return dialect.character_length(t.c[self.name]) > self.length


@dataclass(frozen=True)
class OutOfRange(Check):
    name: str = ""
    low: Decimal | int = 0
    high: Decimal | int = 0
    found = "hold a value out of range"
    fix = "bring them within it"

    def columns(self) -> list[str]:
        return [self.name]

    def rows(self, t, dialect):
        return or_(t.c[self.name] < self.low, t.c[self.name] > self.high)


@dataclass(frozen=True)
class Lost(Check):
    """An enum (or set) whose new values lack some the rows hold."""

    name: str = ""
    values: tuple[str, ...] = ()
    found = "hold a value it lacks"
    fix = "change them"

    def columns(self) -> list[str]:
        return [self.name]

    def rows(self, t, dialect):
        return and_(t.c[self.name].is_not(None), t.c[self.name].not_in(self.values))


@dataclass(frozen=True)
class Violates(Check):
    """A CHECK: rows for which its condition is false (NULL, unknown, passes a CHECK)."""

    condition: object = None
    found = "break it"
    fix = "fix them"

    def rows(self, t, dialect):
        if isinstance(self.condition, str):  # the script's own SQL, as the CHECK will hold it
            return text(f"NOT ({self.condition})")
        return not_(self.condition.self_group())


@dataclass(frozen=True)
class Crowded(Check):
    """A unique column added with a default: every row there gets the same value."""

    found = "would all get its default"
    fix = "add it without a default, fill it, then make it unique"

    def run(self, connection, dialect) -> Result:
        name, schema = self.where
        some = select(sa.literal(1)).select_from(table(name, schema=schema)).limit(2).subquery()
        count = connection.execute(select(func.count()).select_from(some)).scalar() or 0
        if count < 2:
            return self.passed()
        return self.failed(count, f"{_qualified(self.where)} holds rows, which {self.found}", "")


@dataclass
class _Range:
    """What the operations before the one judged did, in the pending range."""

    created: set[Where] = field(default_factory=set)
    added: set[tuple[Where, str]] = field(default_factory=set)
    table_was: dict[Where, Where] = field(default_factory=dict)  # renamed: its name now -> in the database
    column_was: dict[tuple[Where, str], str] = field(default_factory=dict)
    changed: dict[Where, str] = field(default_factory=dict)  # tables whose rows changed, by what
    changed_all: str | None = None

    def table(self, name: str, schema: str | None) -> Where:
        return self.table_was.get((name, schema), (name, schema))

    def column(self, where: Where, name: str) -> str:
        return self.column_was.get((where, name), name)


def planned(config, revisions: list[str], dialect_name: str) -> list[Check | Unchecked]:
    """The prechecks of `revisions` (in order) on a `dialect_name` database: nothing is read yet."""
    dialect = dialects.find(dialect_name)
    state = _Range()
    found: list[Check | Unchecked] = []
    for revision in revisions:
        marks = lint.reviewed_marks(config, revision)
        try:
            recorded = lint.operations(config, revision, dialect_name)
            unreadable = None
        except lint.Unreadable as exc:
            recorded, unreadable = exc.recorded, exc
        for operation in recorded:
            if dialect is None or dialect.checks_existing_rows(operation):
                found.extend(_checks(revision, operation, state, marks))
            _follow(operation, state)
        if unreadable is not None:
            state.changed_all = f"{revision}'s upgrade() cannot be read without a database"
            found.append(Unchecked(revision, lint.UNREADABLE, unreadable.cause))
    return found


def _follow(operation, state: _Range) -> None:
    """Keep `state` up to date past `operation`."""
    match operation:
        case ops.CreateTableOp():
            state.created.add(state.table(operation.table_name, operation.schema))
        case ops.RenameTableOp():
            state.table_was[(operation.new_table_name, operation.schema)] = state.table(
                operation.table_name, operation.schema
            )
            state.table_was.pop((operation.table_name, operation.schema), None)
        case ops.AddColumnOp():
            state.added.add((state.table(operation.table_name, operation.schema), operation.column.name))
        case ops.AlterColumnOp() if operation.modify_name:
            where = state.table(operation.table_name, operation.schema)
            state.column_was[(where, operation.modify_name)] = state.column(where, operation.column_name)
        case ops.BulkInsertOp():
            state.changed[state.table(operation.table.name, operation.table.schema)] = lint.name(operation)
        case ops.ExecuteSQLOp():
            changed = lint.rows_changed(operation.sqltext)
            if changed is None:
                state.changed_all = lint.name(operation)
            else:
                schema, _, name = changed.rpartition(".")
                state.changed[state.table(name, schema or None)] = lint.name(operation)


def _checks(revision: str, operation, state: _Range, marks: dict[str, str]):
    """The checks of one operation, given what the range did before it."""
    if isinstance(operation, ops.ExecuteSQLOp):
        if not lint.changes_data_only(operation.sqltext):
            yield Unchecked(revision, lint.name(operation), "raw SQL the prechecks cannot read")
        return
    table_name, schema = lint.location(operation)
    if table_name is None or not _may_fail(operation):
        return
    where = state.table(table_name, schema)
    if where in state.created:
        return  # empty: created by this range
    involved = _involved(operation)
    if any((where, name) in state.added for name in involved):
        return  # a column this range adds holds nothing to check yet
    subject = _subject(operation, _qualified((table_name, schema)))
    changed = state.changed.get(where) or state.changed_all
    if changed is not None:
        yield Unchecked(revision, subject, f"its rows are changed first, by {changed}")
        return
    names = tuple(state.column(where, name) for name in involved)

    def reviewed(finding: str) -> dict:
        return {"revision": revision, "finding": finding, "reviewed": finding in marks}

    base = lint.name(operation)
    match operation:
        case ops.AlterColumnOp():
            if operation.modify_nullable is False and operation.existing_nullable is not False:
                yield NotNull(subject=f"{subject}: NOT NULL", where=where, names=names, **reviewed(f"{base} NOT NULL"))
            typed = _type_check(operation, where, names[0], subject, reviewed(f"{base} type"))
            if typed is not None:
                yield typed
        case ops.CreateIndexOp() | ops.CreateUniqueConstraintOp():
            if not all(isinstance(name, str) for name in _raw_columns(operation)):
                yield Unchecked(revision, subject, "an index on expressions")
                return
            if any(key.endswith(("_where", "_length")) for key in getattr(operation, "kw", {})):
                # postgresql_where, sqlite_where, mysql_length: which rows or how much of them it holds differs
                yield Unchecked(revision, subject, "a partial index, or one on the start of its values")
                return
            yield Unique(subject=f"{subject}: unique ({', '.join(names)})", where=where, names=names, **reviewed(base))
        case ops.CreatePrimaryKeyOp():
            yield NotNull(subject=f"{subject}: primary key, NOT NULL", where=where, names=names, **reviewed(base))
            yield Unique(subject=f"{subject}: primary key, unique", where=where, names=names, **reviewed(base))
        case ops.CreateForeignKeyOp():
            referent = state.table(operation.referent_table, operation.kw.get("referent_schema"))
            if referent not in state.created and (state.changed.get(referent) or state.changed_all):
                yield Unchecked(revision, subject, f"the rows of {_qualified(referent)} are changed first")
                return
            referred = tuple(state.column(referent, name) for name in operation.remote_cols)
            yield Orphans(
                subject=f"{subject}: foreign key ({', '.join(names)})",
                where=where,
                names=names,
                referent=referent,
                referred=referred,
                referent_empty=referent in state.created,
                **reviewed(base),
            )
        case ops.CreateCheckConstraintOp():
            condition = operation.condition
            shown = " ".join(str(condition).split())
            yield Violates(subject=f"{subject}: CHECK ({shown})", where=where, condition=condition, **reviewed(base))
        case ops.AddColumnOp():
            yield Crowded(subject=f"{subject}: unique with a default", where=where, **reviewed(base))


def _may_fail(operation) -> bool:
    match operation:
        case ops.AlterColumnOp():
            return operation.modify_nullable is False or operation.modify_type is not None
        case ops.CreateIndexOp():
            return bool(operation.unique)
        case ops.AddColumnOp():
            column_ = operation.column
            return bool(column_.unique) and column_.server_default is not None
        case ops.CreateUniqueConstraintOp() | ops.CreatePrimaryKeyOp() | ops.CreateForeignKeyOp():
            return True
        case ops.CreateCheckConstraintOp():
            return True
    return False


def _raw_columns(operation) -> list:
    """An index's or constraint's columns: names, or expressions (an index on lower(email))."""
    return list(operation.columns)


def _involved(operation) -> list[str]:
    """The columns (by their names in the range) whose values the operation's check reads."""
    match operation:
        case ops.AlterColumnOp():
            return [operation.column_name]
        case ops.CreateForeignKeyOp():
            return list(operation.local_cols)
        case ops.CreateIndexOp() | ops.CreateUniqueConstraintOp() | ops.CreatePrimaryKeyOp():
            return [name for name in _raw_columns(operation) if isinstance(name, str)]
        case ops.AddColumnOp():
            return []
    return []


def _subject(operation, table_name: str) -> str:
    match operation:
        case ops.AlterColumnOp():
            return f"{table_name}.{operation.column_name}"
        case ops.AddColumnOp():
            return f"{table_name}.{operation.column.name}"
        case ops.CreateIndexOp():
            return f"{table_name}.{operation.index_name}" if operation.index_name else table_name
    named = getattr(operation, "constraint_name", None)
    return f"{table_name}.{named}" if named else table_name


def _type_check(operation: ops.AlterColumnOp, where: Where, name: str, subject: str, reviewed: dict):
    new, old = operation.modify_type, operation.existing_type
    if new is None or (old is not None and repr(old) == repr(new)) or widens_varchar(old, new):
        return None
    shown = f"{subject}: {new}"
    if isinstance(new, sa.Enum):
        shown = f"{subject}: enum ({', '.join(new.enums)})"
        return Lost(subject=shown, where=where, name=name, values=tuple(new.enums), **reviewed)
    if isinstance(new, (sa.String, sa.Text)) and not isinstance(new, sa.Enum):
        if not new.length:
            return None  # unbounded text takes any value
        if isinstance(old, sa.String) and old.length and old.length <= new.length:
            return None
        return TooLong(subject=shown, where=where, name=name, length=new.length, **reviewed)
    numeric_old = old is None or isinstance(old, sa.Numeric | sa.Integer)
    if isinstance(new, sa.Integer) and numeric_old:
        bits = next(bits for kind, bits in INTEGER_BITS if isinstance(new, kind))
        if (
            isinstance(old, sa.Integer)
            and _bits(old) <= bits
            and getattr(old, "unsigned", False) == getattr(new, "unsigned", False)
        ):
            return None
        low, high = (0, 2**bits - 1) if getattr(new, "unsigned", False) else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return OutOfRange(subject=shown, where=where, name=name, low=low, high=high, **reviewed)
    if isinstance(new, sa.Numeric) and not isinstance(new, sa.Float) and new.precision and numeric_old:
        scale = new.scale or 0
        high = Decimal(10) ** (new.precision - scale) - Decimal(10) ** -scale
        return OutOfRange(subject=shown, where=where, name=name, low=-high, high=high, **reviewed)
    return Unchecked(reviewed["revision"], shown, "a conversion the prechecks cannot judge")


def _bits(type_) -> int:
    return next(bits for kind, bits in INTEGER_BITS if isinstance(type_, kind))


def run(connection, checks: list[Check | Unchecked], seconds: float) -> list[Result]:
    """Each check on `connection` (the application's user), each bounded to `seconds`, in order."""
    dialect = dialects.dialect_for(connection, "checking the data before an upgrade")
    results = []
    for check in checks:
        if isinstance(check, Unchecked):
            results.append(check.result())
            continue
        try:
            with dialect.bounded(connection, seconds):
                results.append(check.run(connection, dialect))
        except TooSlow:
            results.append(
                Result(
                    check.revision,
                    check.subject,
                    TOO_SLOW,
                    detail=f"over {seconds:g} s",
                    finding=check.finding,
                    reviewed=check.reviewed,
                )
            )
        except SQLAlchemyError as exc:
            said = " ".join(str(getattr(exc, "orig", None) or exc).split())[:120]
            results.append(Result(check.revision, check.subject, UNCHECKED, detail=f"the check failed: {said}"))
    return results


def precheck(connection, config, revisions: list[str], seconds: float) -> list[Result]:
    """The prechecks of `revisions` (in order), run on `connection`."""
    return run(connection, planned(config, revisions, connection.dialect.name), seconds)


def failures(results: list[Result]) -> list[Result]:
    return [result for result in results if result.outcome == FAILS]


def unreviewed_too_slow(results: list[Result]) -> list[Result]:
    """Checks stopped as too slow on operations no reviewed_risks marks: risks, as the lint's are."""
    return [result for result in results if result.outcome == TOO_SLOW and not result.reviewed]


def unchecked(results: list[Result]) -> list[Result]:
    """What the prechecks could not say: unchecked operations, and too slow ones that are marked reviewed."""
    return [
        result for result in results if result.outcome == UNCHECKED or (result.outcome == TOO_SLOW and result.reviewed)
    ]


def _qualified(where: Where) -> str:
    name, schema = where
    return f"{schema}.{name}" if schema else name


def _verb(phrase: str, count: int) -> str:
    """ "hold NULL" for several rows, "holds NULL" for one."""
    if count != 1:
        return phrase
    verb, _, rest = phrase.partition(" ")
    return f"{verb}s {rest}" if verb in ("hold", "break", "refer") else phrase


def _samples(names: list[str], rows) -> str:
    if not rows:
        return ""
    if len(names) == 1:
        return f"{names[0]} " + ", ".join(_value(row[0]) for row in rows)
    shown = ", ".join("(" + ", ".join(_value(value) for value in row) + ")" for row in rows)
    return f"({', '.join(names)}) {shown}"


def _value(value) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 30 else value[:27] + "...")
    return str(value)
