"""Where a database stands against the migrations: the one structure the server sends the laptop,
and the conversation it opens.

The laptop and the server run different checkouts by design, so the JSON carries a protocol
number and is read in exactly one place, `Status.from_json`, which says in one line when the two
suites do not speak the same protocol.

One fab command is one server process per host. An upgrade goes in two runs per target (forking.py):
a plan run prints the target's status, with the server's refusal if any, as one line (STATUS_LINE +
JSON); the laptop shows every plan, asks once, collects the passwords, and only then starts the
runs that apply, each told the revision the laptop approved and given its password on stdin. The
other tasks that write, run with `--conversation`, print their status the same way and wait for
the laptop's answer on stdin: GO, then the password when the status says one is needed; anything
else, or the end of stdin, stops them quietly."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass

from .errors import DeployError

# Bump when a field is added, removed or changes meaning, or the conversation changes.
PROTOCOL = 11
STATUS_LINE = "deploy-status: "
GO = "go"


@dataclass(frozen=True)
class Status:
    """Head, current revision, and what an upgrade (or downgrade) to the target would run."""

    database: str  # user@host:port/database, never a password
    database_name: str
    migration_user: str
    needs_password: bool
    heads: list[str]
    current: list[str]
    # [revision, message] in order; None: no plan can be made (several heads, or unstamped tables).
    pending: list[list[str]] | None
    target_behind: bool
    unstamped_tables: list[str]
    base: str | None
    # The last run that changed this checkout's database, as the run log has it (in progress, cut off...).
    last_run: str | None = None
    # Unreviewed risky operations in the pending upgrade (review.lint), one line each.
    risks: list[str] = dataclasses.field(default_factory=list)
    # Applied revisions whose file changed since they ran: [revision, what changed] (review.checksums).
    edited: list[list[str]] = dataclasses.field(default_factory=list)
    # How many applied revisions have no checksum (applied before checksums were kept).
    without_checksum: int = 0
    # Pending operations that would fail on the rows there now (review.prechecks), one line each.
    data_failures: list[str] = dataclasses.field(default_factory=list)
    # What the data prechecks could not say (raw SQL, rows changed first, too slow but reviewed), one line each.
    not_checked: list[str] = dataclasses.field(default_factory=list)
    # What was changed outside the migrations: the live schema against the one they build at its revision
    # (schema.drift), one line each; filled in an upgrade's plan only (db.drift shows it any time).
    drift: list[str] = dataclasses.field(default_factory=list)
    # The pending operations that change a drifted object (same table and column, index or constraint).
    drift_conflicts: list[str] = dataclasses.field(default_factory=list)
    # The release of the code running against the database (deploy/releases.py): the one its last upgrade,
    # downgrade or stamp recorded, or --running's; None: not known.
    release: str | None = None
    # In an upgrade's plan, outside development: what the running release's code fails on in the schema the
    # pending revisions build (deploy/compatibility.py), one line each; and the plan's line about it
    # (compatible with the running release, or why it is unchecked).
    incompatible: list[str] = dataclasses.field(default_factory=list)
    compatibility: str | None = None
    # What each pending operation on a table there now takes (review.costs): how, rows, about how long, what
    # it blocks; one line each, filled in an upgrade's plan only.
    estimates: list[str] = dataclasses.field(default_factory=list)
    # In an upgrade's plan: the pending operations that can only copy their table, blocking the application,
    # where this run's switches do not allow it (commands.online_refusals), one line each.
    not_online: list[str] = dataclasses.field(default_factory=list)
    # Why an upgrade to the target is refused, in the server's words; None: it may go ahead.
    refusal: str | None = None
    # How many upgrades the database server accepts at once now (its free connections); None: no limit known.
    room: int | None = None
    protocol: int = PROTOCOL

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str, where: str) -> Status:
        """The status `where` (the server) sent; one line if it is not one this suite can read."""
        try:
            data = json.loads(text)
        except ValueError:
            raise DeployError(f"{where}: the server's `db.status --json` gave no status") from None
        theirs = data.get("protocol", 0) if isinstance(data, dict) else 0
        if theirs != PROTOCOL:
            older = isinstance(theirs, int) and theirs < PROTOCOL
            raise DeployError(
                f"{where}: the server's suite is {'older' if older else 'newer'} than yours (status protocol "
                f"{theirs}, yours {PROTOCOL}): {'deploy it first' if older else 'update yours first'}"
            )
        names = {field.name for field in dataclasses.fields(cls)}
        if set(data) != names:
            raise DeployError(f"{where}: the server's status has other fields than protocol {PROTOCOL} says")
        return cls(**data)

    def revision_lines(self) -> list[str]:
        """The pending revisions, a line each: `  REVISION  MESSAGE`."""
        return [f"  {revision}  {message}" for revision, message in self.pending or []]

    def __str__(self) -> str:
        lines = [
            f"database:   {self.database}",
            f"migrations: head {', '.join(self.heads) or 'none'}",
            f"current:    {', '.join(self.current) or 'not stamped'}",
        ]
        if self.last_run:
            lines.append(f"last run:   {self.last_run}")
        if self.release:
            lines.append(f"release:    {self.release}")
        lines += [f"edited:     {what}" for _, what in self.edited]
        if self.without_checksum:
            lines.append(f"checksums:  none kept for {self.without_checksum} applied revisions (they did not run here)")
        if self.unstamped_tables:
            lines.append(f"warning:    {len(self.unstamped_tables)} tables but no alembic_version: stamp it first")
        if len(self.heads) > 1:
            lines.append("warning:    several heads: merge them first")
        if self.pending is None:
            lines.append("pending:    unknown until the warning above is dealt with")
            return "\n".join(lines)
        lines.append(f"pending:    {len(self.pending)}" + (" (up to date)" if not self.pending else ""))
        lines += self.revision_lines()
        lines += [f"estimate:   {line}" for line in self.estimates]
        lines += [f"risk:       {risk}" for risk in self.risks]
        lines += [f"data:       {failure}" for failure in self.data_failures]
        lines += [f"unchecked:  {line}" for line in self.not_checked]
        lines += [f"drift:      {line}" for line in self.drift]
        lines += [f"incompatible: {line}" for line in self.incompatible]
        return "\n".join(lines)


def await_go(status: Status) -> bool:
    """The server's half of the conversation: tell the laptop `status`; whether it answers GO."""
    from .credentials import next_line

    print(STATUS_LINE + status.to_json(), flush=True)
    return next_line(sys.stdin) == GO
