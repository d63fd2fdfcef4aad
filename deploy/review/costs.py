"""What each pending operation costs before it runs: how the server does it, what it blocks, and for about
how long, from the table's estimated size and a rate.

The table's rows come from the server's statistics (`Dialect.table_size`, no scan); how the server changes
the table, what that blocks and whether it grows with the rows come from `Dialect.alteration`. An operation
whose time grows with the rows takes its form's fixed seconds and rows / rate more; the others take a moment
(they still take their lock for that moment). Tables created earlier in the pending range are empty and
cost nothing, as the data prechecks know them (review.prechecks).

The rates, in rows per second, are keyed by database kind, the server's form and its online form, and the
operation's verb (DEFAULTS below). The defaults were measured on the suite's own test servers by the
benchmark's `estimates` group (docs/benchmarks.md); runs recorded in the run log improve them: each upgrade
(and rehearsal) records per revision its measured seconds and the rows of its operations (`Measured`), and
`rates()` takes the median of the latest rates each key was seen to run at on this machine's databases.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from alembic.operations import ops

from .. import dialects
from ..dialects import Alteration
from ..guards import runlog
from . import lint, prechecks

# Rows per second of each key (see key()), as `python -m benchmarks --only estimates` measured them on the
# suite's throwaway servers sized for their tables (MariaDB 10.11 with a 512 MB buffer pool, PostgreSQL 15
# with 256 MB of shared buffers, on tmpfs; an idle 2-core machine): each operation timed on tables of
# 100,000 and 1,000,000 rows of about 100 bytes, the rate the slope between the two, so that what an
# ALTER takes whatever the rows drops out (docs/benchmarks.md). Operations that do not grow with rows take
# "a moment" and need none.
DEFAULTS: dict[str, float] = {
    "mysql|NOCOPY|ALGORITHM=INPLACE, LOCK=NONE|create_index": 1_614_000,
    "mysql|INPLACE|ALGORITHM=INPLACE, LOCK=NONE|alter_column": 874_000,
    "mysql|COPY|pt-online-schema-change|alter_column": 204_000,
    "mysql|COPY|pt-online-schema-change|create_foreign_key": 174_000,
    "mysql|COPY|pt-online-schema-change|create_check_constraint": 263_000,
    "postgresql|index build|CONCURRENTLY|create_index": 1_803_000,
    "postgresql|rewrite||alter_column": 832_000,
    "postgresql|validation scan|a CHECK (column IS NOT NULL) NOT VALID, then VALIDATE, then SET NOT NULL"
    "|alter_column": 9_360_000,
    "postgresql|validation scan|NOT VALID, then VALIDATE|create_foreign_key": 7_472_000,
    "postgresql|validation scan|NOT VALID, then VALIDATE|create_check_constraint": 13_603_000,
}
# Seconds an operation takes whatever its table's rows, by key or by "kind|how|online form": the intercept
# of the same measurement (pt-online-schema-change makes a table and its triggers first, and swaps them
# after; on an idle server that is a fraction of a second).
FIXED: dict[str, float] = {
    "mysql|COPY|pt-online-schema-change": 0.05,
    "mysql|NOCOPY|ALGORITHM=INPLACE, LOCK=NONE": 0.02,
    "mysql|INPLACE|ALGORITHM=INPLACE, LOCK=NONE": 0.01,
}
# A form the defaults do not know, for a kind: its slowest measured rate, so that a surprise is not a short one.
FALLBACK = {
    kind: min(rate for key, rate in DEFAULTS.items() if key.startswith(kind + "|")) for kind in ("mysql", "postgresql")
}
# A revision's measured run teaches a rate only when it ran long enough to be more than its fixed costs.
LEARN_FROM_SECONDS = 0.5
LEARN_FROM_ROWS = 10_000
# The latest observations of a key that its learned rate is the median of.
REMEMBERED = 5


@dataclass(frozen=True)
class Cost:
    """One pending operation on a table that exists: what it does, how, to how many rows, for how long."""

    revision: str
    table: str  # as the revision names it, schema-qualified when it names one
    what: str  # "change type of total"
    alteration: Alteration
    key: str  # the calibration's key for its rate (see key())
    rows: int | None  # None: the server keeps no statistics of it
    size: int | None  # bytes, data and indexes
    seconds: float | None  # None: the rows are unknown

    def __str__(self) -> str:
        how = self.alteration.how + (f", {self.alteration.online}" if self.alteration.online else "")
        rows = "size unknown" if self.rows is None else f"{count(self.rows)} rows"
        took = "" if self.seconds is None else f", {duration(self.seconds) if self.alteration.per_row else 'a moment'}"
        return f"{self.revision}: {self.table}: {self.what} ({how}, {rows}{took}, blocks {self.alteration.blocks})"


def key(kind: str, alteration: Alteration, operation) -> str:
    """The calibration's key: "postgresql|index build|CONCURRENTLY|create_index"."""
    verb = lint.VERBS.get(type(operation), type(operation).__name__)
    return "|".join((kind, alteration.how, alteration.online or "", verb))


def estimate(connection, config, revisions: list[str], instance_path: Path | None = None) -> list[Cost]:
    """The cost of each operation of `revisions` (in order) that changes a table there now, read on
    `connection`; the rates calibrated by the runs of `instance_path`'s run log, when given."""
    dialect = dialects.find(connection)
    if dialect is None:
        return []
    kind = dialect.names[0]  # one name per database kind: MariaDB's connections may say "mysql" or "mariadb"
    known = rates(instance_path, kind) if instance_path is not None else {}
    state = prechecks._Range()
    sizes: dict[prechecks.Where, tuple[int, int] | None] = {}
    found = []
    for revision in revisions:
        try:
            recorded = lint.operations(config, revision, connection.dialect.name)
        except lint.Unreadable as exc:
            recorded = exc.recorded
        for operation in recorded:
            cost = _cost(connection, dialect, kind, revision, operation, state, sizes, known)
            if cost is not None:
                found.append(cost)
            prechecks._follow(operation, state)
    return found


def of_operation(connection, operation, instance_path: Path | None = None) -> Cost | None:
    """The cost of one operation on a table there now, read on `connection` (what the benchmark checks)."""
    dialect = dialects.dialect_for(connection, "estimating an operation's cost")
    kind = dialect.names[0]
    known = rates(instance_path, kind) if instance_path is not None else {}
    return _cost(connection, dialect, kind, "", operation, prechecks._Range(), {}, known)


def _cost(connection, dialect, kind, revision, operation, state, sizes, known) -> Cost | None:
    table, schema = lint.location(operation)
    if table is None or isinstance(operation, (ops.CreateTableOp, ops.ExecuteSQLOp, ops.BulkInsertOp)):
        return None
    where = state.table(table, schema)
    if where in state.created:
        return None  # empty: made by this range
    alteration = dialect.alteration(connection, operation)
    if alteration is None:
        return None
    if where not in sizes:
        sizes[where] = dialect.table_size(connection, *where)
    rows, size = sizes[where] or (None, None)
    named = key(kind, alteration, operation)
    seconds = None if rows is None else (fixed(named) + rows / rate(named, known) if alteration.per_row else 0.0)
    shown = f"{schema}.{table}" if schema else table
    return Cost(revision, shown, what(operation), alteration, named, rows, size, seconds)


def fixed(named: str) -> float:
    """Seconds an operation of a key takes whatever the rows: the key's own, else its form's."""
    return FIXED.get(named, FIXED.get(named.rsplit("|", 1)[0], 0.0))


def rate(named: str, known: dict[str, float]) -> float:
    """Rows per second for a key: as learned, else its default, else the slowest default of the same form
    (any operation), else the kind's slowest."""
    if named in known:
        return known[named]
    if named in DEFAULTS:
        return DEFAULTS[named]
    kind, how, online, _ = named.split("|")
    same_form = [value for key, value in DEFAULTS.items() if key.startswith(f"{kind}|{how}|{online}|")]
    return min(same_form) if same_form else FALLBACK.get(kind, min(FALLBACK.values()))


def rates(instance_path: Path, kind: str) -> dict[str, float]:
    """The rates the run log's recorded runs on `kind` databases were seen at: per key, the median of
    its REMEMBERED latest observations."""
    seen: dict[str, list[float]] = {}
    for run in runlog.runs(instance_path):
        for record in run.timings or ():
            for named, observed in learned(record).items():
                if named.split("|", 1)[0] == kind:
                    seen.setdefault(named, []).append(observed)
    return {named: statistics.median(values[-REMEMBERED:]) for named, values in seen.items()}


def learned(record: dict) -> dict[str, float]:
    """The rates one revision's measured run teaches (a record Measured made): its seconds, less its forms'
    fixed seconds, shared among its operations that grow with rows in proportion to what each was estimated
    to spend on them."""
    growing = [op for op in record.get("operations", ()) if op.get("rows") and op.get("estimate")]
    by_rows = {id(op): max(0.0, op["estimate"] - fixed(op["key"])) for op in growing}
    spent = (record.get("seconds") or 0.0) - sum(fixed(op["key"]) for op in growing)
    estimated = sum(by_rows.values())
    if spent < LEARN_FROM_SECONDS or not estimated:
        return {}
    return {
        op["key"]: op["rows"] / (spent * by_rows[id(op)] / estimated)
        for op in growing
        if op["rows"] >= LEARN_FROM_ROWS and by_rows[id(op)]
    }


class Measured:
    """Called after each revision runs, with its seconds: keeps, for the run log, the revisions that ran
    an operation growing with its table's rows (what rates() learns from). `records` is the list the run
    log writes (runlog.Run.timings); a rehearsal's run feeds it the same way."""

    def __init__(self, estimated: Iterable[Cost]):
        self.records: list[dict] = []
        self._by_revision: dict[str, list[Cost]] = {}
        for cost in estimated:
            if cost.alteration.per_row and cost.rows and cost.seconds:
                self._by_revision.setdefault(cost.revision, []).append(cost)

    def __call__(self, revision: str, seconds: float) -> None:
        costs = self._by_revision.get(revision)
        if not costs:
            return
        self.records.append(
            {
                "revision": revision,
                "seconds": round(seconds, 3),
                "operations": [
                    {"key": c.key, "rows": c.rows, "bytes": c.size, "estimate": round(c.seconds, 3)} for c in costs
                ],
            }
        )

    @contextmanager
    def revision(self, revision: str) -> Iterator[None]:
        """Times the block, the run of `revision`: recorded when it ends without an exception."""
        started = time.monotonic()
        yield
        self(revision, time.monotonic() - started)


def timing(measured: Measured | None, revision: str):
    """`measured.revision(revision)`, or nothing when the run is not measured."""
    return nullcontext() if measured is None else measured.revision(revision)


def what(operation) -> str:
    """What an operation does to its table, in a few words: "change type of total"."""
    match operation:
        case ops.AddColumnOp():
            return f"add column {operation.column.name}"
        case ops.DropColumnOp():
            return f"drop column {operation.column_name}"
        case ops.AlterColumnOp():
            column = operation.column_name
            done = []
            if operation.modify_type is not None:
                done.append(f"change type of {column}")
            if operation.modify_nullable is not None:
                done.append(f"{'drop' if operation.modify_nullable else 'set'} NOT NULL on {column}")
            if operation.modify_server_default is not False:
                done.append(f"change default of {column}")
            if operation.modify_name is not None:
                done.append(f"rename {column} to {operation.modify_name}")
            if operation.modify_comment is not False:
                done.append(f"comment on {column}")
            return ", ".join(done) or f"alter column {column}"
        case ops.CreateIndexOp():
            unique = "unique " if operation.unique else ""
            return f"create {unique}index {operation.index_name} on {', '.join(map(str, operation.columns))}"
        case ops.DropIndexOp():
            return f"drop index {operation.index_name}"
        case ops.CreateUniqueConstraintOp():
            return f"add unique on {', '.join(operation.columns)}"
        case ops.CreateForeignKeyOp():
            return f"add foreign key on {', '.join(operation.local_cols)} to {operation.referent_table}"
        case ops.CreateCheckConstraintOp():
            return f"add check {operation.constraint_name or ''}".rstrip()
        case ops.CreatePrimaryKeyOp():
            return f"add primary key on {', '.join(operation.columns)}"
        case ops.DropConstraintOp():
            return f"drop constraint {operation.constraint_name}"
        case ops.RenameTableOp():
            return f"rename to {operation.new_table_name}"
        case ops.DropTableOp():
            return "drop table"
    return lint.name(operation)


def count(rows: int) -> str:
    """2,100,000 as 2.1M, 34,500 as 35k."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if rows >= size:
            value = rows / size
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(rows)


def duration(seconds: float) -> str:
    """About how long, in two significant digits: "~40 s", "~2.5 min"; under a second, "under 1 s"."""
    if seconds < 1:
        return "under 1 s"
    for unit, size in (("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size * (1 if unit == "s" else 2):  # "~95 s", "~90 min": two of a unit before the next
            value = seconds / size
            digits = max(0, 1 - int(math.floor(math.log10(value))))
            return f"~{round(value, digits):g} {unit}"
    return f"~{seconds:.0f} s"
