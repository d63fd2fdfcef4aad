"""Batched backfills: a revision's UPDATE of a big table, in primary-key ranges, each committed alone.

    from deploy.backfill import backfill

    def upgrade():
        backfill("posts", "slug = lower(title)", where="slug IS NULL", batch_size=1000, pause=0.05)

Each batch is `UPDATE t SET ... WHERE pk > :last AND pk <= :upto AND (where)` and the row of
`alembic_backfills` that keeps the last key done, in one transaction, committed at once (through
Alembic's `autocommit_block`, which commits what precedes it). A stop asked between revisions (Ctrl-C,
SIGTERM, fab's stop, a lost connection: console.active_cancellation) is taken between batches instead:
`Stopped` ends the revision unrecorded, and the next upgrade runs it again, going on after the key kept.
The finished backfill's row is deleted in the revision's own last transaction, with alembic_version's
update, so a crash between them cannot make the next run start over.

Anything the revision ran before its first backfill is committed with the first batch, so a stop then
would leave the revision half done: such a revision is told so in one line, and runs to its end.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from alembic import op
from alembic.operations import MigrateOperation, Operations
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import inspect as inspect_database
from sqlalchemy.exc import NoSuchTableError

from . import console, dialects
from .errors import DeployError
from .review import lint

TABLE = "alembic_backfills"  # one of database.SUITE_TABLES: no comparison with the models sees it
LOAD_WAIT = 1.0  # seconds between readings of the load while it is above max_busy

progress_table = Table(
    TABLE,
    MetaData(),
    Column("revision", String(64), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("last_key", BigInteger, nullable=False),
    Column("rows_done", BigInteger, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)


class Stopped(DeployError):
    """The run was asked to stop between two batches: the revision ends unrecorded, its progress kept."""


def backfill(
    table: str,
    assignments: str,
    where: str | None = None,
    batch_size: int = 1000,
    pause: float = 0.0,
    name: str | None = None,
    max_busy: int | None = None,
) -> None:
    """UPDATE `table` SET `assignments` [WHERE `where`] in batches of `batch_size` keys, `pause` s
    apart, each committed on its own; `name` (default: the table) tells two backfills of a revision
    apart; `max_busy`: wait while more sessions than that run a statement on the server."""
    if batch_size < 1 or pause < 0:
        raise DeployError(f"backfill {table}: batch_size must be at least 1 and pause not negative")
    op.invoke(Backfill(table, assignments, where, batch_size, pause, name or table, max_busy, _calling_revision()))


def _calling_revision() -> str:
    """The revision whose script calls: the nearest caller's module that names `revision` and
    `down_revision`, as every revision script does."""
    frame = sys._getframe(1)
    while frame is not None:
        names = frame.f_globals
        if isinstance(names.get("revision"), str) and "down_revision" in names:
            return names["revision"]
        frame = frame.f_back
    raise DeployError("backfill() runs inside a revision's upgrade() or downgrade()")


@dataclass
class Backfill(MigrateOperation):
    """The operation a revision's backfill() invokes: the lint and the checksums record it (nothing runs
    offline); a live run runs it (run_backfill)."""

    table_name: str
    assignments: str
    where: str | None
    batch_size: int
    pause: float
    name: str
    max_busy: int | None
    revision: str

    def __hash__(self) -> int:  # MigrateOperation's own, which a dataclass would drop
        return id(self)


@Operations.implementation_for(Backfill)
def run_backfill(operations: Operations, operation: Backfill) -> None:
    context = operations.migration_context
    if context.as_sql:
        # --sql prints what the batches add up to: one UPDATE.
        where = f" WHERE {operation.where}" if operation.where else ""
        operations.execute(f"UPDATE {operation.table_name} SET {operation.assignments}{where}")
        return
    Run(context, operation, stoppable=_first_thing(context, operation)).go()


def _first_thing(context, operation: Backfill) -> bool:
    """Whether nothing but backfills runs before this one in its revision's upgrade(): then a stop
    between batches leaves nothing half done, since the first batch commits what ran before it."""
    try:
        recorded = lint.operations(context.config, operation.revision, context.dialect.name)
    except Exception:  # unreadable offline: what runs before it cannot be told
        recorded = []
    for before in recorded:
        if not isinstance(before, Backfill):
            why = "runs other operations before it, which its first batch commits"
            break
        if before.name == operation.name:
            return True
    else:
        why = "may run other operations before it (its upgrade() cannot be read offline)"
    print(
        f"warning: backfill {operation.name}: revision {operation.revision} {why}: a stop waits for the end "
        "of the revision (give a backfill a revision of its own)",
        file=sys.stderr,
    )
    return False


class Run:
    """One backfill running on the migration's connection."""

    def __init__(self, context, operation: Backfill, stoppable: bool) -> None:
        self.context = context
        self.operation = operation
        self.stoppable = stoppable
        self.dialect = dialects.dialect_for(context.connection, "a backfill")
        self.key = self._primary_key()
        self.shown: console.Progress | None = None

    @property
    def connection(self):
        return self.context.connection  # autocommit_block swaps it for a moment: never keep it

    def _primary_key(self) -> str:
        table = self.operation.table_name
        try:
            found = inspect_database(self.connection)
            keys = found.get_pk_constraint(table)["constrained_columns"]
            types = {column["name"]: column["type"] for column in found.get_columns(table)}
        except NoSuchTableError:
            raise DeployError(f"backfill {self.operation.name}: there is no table {table}") from None
        if len(keys) != 1 or not isinstance(types[keys[0]], Integer):
            described = ", ".join(f"{key} {types[key]}" for key in keys) or "none"
            raise DeployError(
                f"backfill {self.operation.name}: {table} needs a primary key of one integer column "
                f"(it has {described}); update it in batches by hand"
            )
        return keys[0]

    def _commit(self) -> None:
        """Commit what ran since the last commit, in Alembic's own way (see the module's docstring)."""
        if self.connection.in_transaction() and getattr(self.context, "_transaction", None) is None:
            # The connection came in a transaction of its caller's (the first revision of a run, under
            # `invoke db.upgrade`), which Alembic leaves to the caller and its autocommit_block asserts
            # against: commit it here, as the block would have.
            self.connection.commit()
            return
        with self.context.autocommit_block():
            pass

    def go(self) -> None:
        operation, quote = self.operation, self.connection.dialect.identifier_preparer.quote
        table, key = quote(operation.table_name), quote(self.key)
        where = f" AND ({operation.where})" if operation.where else ""
        statement = text(f"UPDATE {table} SET {operation.assignments} WHERE {key} > :last AND {key} <= :upto{where}")
        last, rows = self._start()
        highest = self.connection.execute(text(f"SELECT max({key}) FROM {table}")).scalar()
        first = last
        started = time.monotonic()
        done_here = 0
        self._commit()
        self.shown = console.Progress(f"backfill {operation.name}", "rows", start=rows)
        while highest is not None and last < highest:
            self._stop_if_asked(last, rows)
            self._wait_for_load()
            upto = self._batch_end(table, key, last, highest)
            changed = self.connection.execute(statement, {"last": last, "upto": upto}).rowcount
            rows, last, done_here = rows + changed, upto, done_here + changed
            self._keep(last, rows)
            self._commit()
            self.shown.update(rows, (last - first) / (highest - first))  # the keys this run has gone through
            if operation.pause and last < highest:
                time.sleep(operation.pause)
        # Forgotten with alembic_version's update, in the revision's last transaction.
        self.connection.execute(
            delete(progress_table).where(
                progress_table.c.revision == operation.revision, progress_table.c.name == operation.name
            )
        )
        if highest is None:
            return  # an empty table (a scratch database's, in db.check): nothing to tell
        self.shown.end(f"done, {rows} rows ({done_here} in {time.monotonic() - started:.1f} s)")

    def _start(self) -> tuple[int, int]:
        """The last key done and the rows done so far: where an earlier run stopped, or the start."""
        operation = self.operation
        progress_table.create(self.connection, checkfirst=True)
        kept = self.connection.execute(
            select(progress_table.c.last_key, progress_table.c.rows_done).where(
                progress_table.c.revision == operation.revision, progress_table.c.name == operation.name
            )
        ).first()
        if kept is not None:
            print(
                f"backfill {operation.name}: going on after key {kept[0]} ({kept[1]} rows done before)",
                file=sys.stderr,
            )
            return int(kept[0]), int(kept[1])
        table = self.connection.dialect.identifier_preparer.quote(operation.table_name)
        key = self.connection.dialect.identifier_preparer.quote(self.key)
        lowest = self.connection.execute(text(f"SELECT min({key}) FROM {table}")).scalar()
        last = (lowest - 1) if lowest is not None else 0
        self.connection.execute(
            insert(progress_table).values(
                revision=operation.revision, name=operation.name, last_key=last, rows_done=0, updated_at=_now()
            )
        )
        return last, 0

    def _batch_end(self, table: str, key: str, last: int, highest: int) -> int:
        """The key `batch_size` rows on from `last` (gaps in the keys skipped), or the highest."""
        found = self.connection.execute(
            text(f"SELECT {key} FROM {table} WHERE {key} > :last ORDER BY {key} LIMIT 1 OFFSET :skip"),
            {"last": last, "skip": self.operation.batch_size - 1},
        ).scalar()
        return highest if found is None else min(int(found), highest)

    def _keep(self, last: int, rows: int) -> None:
        operation = self.operation
        self.connection.execute(
            update(progress_table)
            .where(progress_table.c.revision == operation.revision, progress_table.c.name == operation.name)
            .values(last_key=last, rows_done=rows, updated_at=_now())
        )

    def _stop_if_asked(self, last: int, rows: int) -> None:
        cancellation = console.active_cancellation()
        if cancellation is None or not cancellation.requested or not self.stoppable:
            return
        if self.shown is not None:
            self.shown.end()
        stopped = Stopped(
            f"backfill {self.operation.name} stopped ({cancellation.reason}) after key {last}, {rows} rows "
            "done: the next upgrade goes on from there"
        )
        print(stopped, file=sys.stderr)
        raise stopped

    def _wait_for_load(self) -> None:
        """While more than max_busy sessions run a statement: wait, and take a stop asked meanwhile."""
        limit = self.operation.max_busy
        while limit is not None:
            busy = self.dialect.busy_sessions(self.connection)
            if busy is None or busy <= limit:
                return
            cancellation = console.active_cancellation()
            if cancellation is not None and cancellation.requested and self.stoppable:
                return  # the stop is taken before the batch
            print(f"backfill {self.operation.name}: {busy} busy sessions, waiting for {limit}", file=sys.stderr)
            time.sleep(LOAD_WAIT)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
