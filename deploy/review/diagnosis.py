"""Half-applied revisions: what a revision that failed part way left in the database.

MariaDB cannot roll back DDL, so a revision that failed part way (or was aborted) leaves its first
operations behind. What it left is told from the run itself, not guessed from the schema: `watching`
follows each operation the revision's script invokes and the statements the database completes for
it. The operations before the one that raised ran; the one that raised did not apply (its first
statement failed), or cannot be told (some of its statements had run, or it was aborted while it ran);
the ones after it never ran. A column that exists afterwards proves nothing: it may have existed before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from alembic.operations.base import AbstractOperations, BatchOperations
from alembic.operations.batch import BatchOperationsImpl
from sqlalchemy import event
from sqlalchemy.engine import Connection

from ..errors import relayed
from . import lint

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
