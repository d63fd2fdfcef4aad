"""A small log of every run that changes a database, in the instance folder of the checkout it ran
in, so an operator who lost the connection can see what happened (`db.status` shows the last run).

A run that left a revision half applied is kept as unresolved until a restore, a stamp or (in
development) a reset of that database completes after it: until then upgrades and downgrades
refuse (commands.check_resolved)."""

from __future__ import annotations

import getpass
import json
import os
import socket
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import DeployError, mask_message

FILE = "migration-runs.jsonl"
KEEP = 200  # runs kept; older ones are dropped when a run starts
# The commands whose success resolves a half-applied revision: each says what the schema is.
RESOLVING = ("db.restore", "db.stamp", "db.reset")


class HalfApplied(DeployError):
    """A run's failure that left a revision half applied; `left` is what the run log keeps of it:
    revision, summary (diagnosis.Left.summary), finished and before (what to stamp after finishing
    it or undoing it by hand), backup (the file taken before the run, or None)."""

    def __init__(self, message: str, left: dict):
        super().__init__(message)
        self.left = left


@dataclass
class Run:
    """One run: who, what, from where to where, and how it ended (None while in progress)."""

    id: str
    started: str
    user: str
    host: str
    pid: int
    command: str
    database: str
    start: str
    target: str
    outcome: str | None = None
    ended: str | None = None
    left: dict | None = None  # HalfApplied.left, when the run left a revision half applied
    # Per revision that ran an operation growing with its table's rows: its seconds and those operations'
    # rows (review.costs.Measured), what later estimates learn their rates from.
    timings: list | None = None

    def in_progress(self) -> bool:
        """No outcome yet, and its process still alive on this host."""
        if self.outcome is not None or self.host != socket.gethostname():
            return self.outcome is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def __str__(self) -> str:
        if self.outcome is None:
            how = "in progress" if self.in_progress() else "cut off, no outcome recorded: check the schema"
        else:
            how = f"{self.outcome} at {self.ended}"
        return f"{self.command} {self.start} -> {self.target} by {self.user}@{self.host}, started {self.started}: {how}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@contextmanager
def recorded(instance_path: Path, command: str, database: str, start: str, target: str):
    """Log the run's start now and its outcome at the end; the block sets `run.outcome`, or it is
    taken from the exception that ends the block."""
    run = Run(
        id=f"{os.getpid()}-{datetime.now(UTC).timestamp():.6f}",
        started=_now(),
        user=getpass.getuser(),
        host=socket.gethostname(),
        pid=os.getpid(),
        command=command,
        database=database,
        start=start,
        target=target,
    )
    path = instance_path / FILE
    _append(path, run)
    try:
        yield run
    except KeyboardInterrupt:
        run.outcome = run.outcome or "aborted"
        raise
    except Exception as exc:
        # The file must never hold a password; the suite's own words stay whole (errors.relayed).
        run.outcome = run.outcome or f"failed: {mask_message(getattr(exc, 'marked', None) or str(exc))}"
        if isinstance(exc, HalfApplied):
            run.left = {key: mask_message(v) if isinstance(v, str) else v for key, v in exc.left.items()}
        raise
    finally:
        run.outcome = run.outcome or "done"
        run.ended = _now()
        _append(path, run)


def last_run(instance_path: Path, database: str | None = None) -> Run | None:
    """The newest run (on `database`, as described in the log: tenants of a fleet share a checkout),
    with its outcome when it has one."""
    runs = _runs(instance_path, database)
    return runs[-1] if runs else None


def unresolved(instance_path: Path, database: str) -> Run | None:
    """The newest run on `database` that left a revision half applied, unless a restore, a stamp or
    a reset of it has completed since."""
    found = None
    for run in _runs(instance_path, database):
        if run.left:
            found = run
        elif run.command in RESOLVING and run.outcome == "done":
            found = None
    return found


def runs(instance_path: Path) -> list[Run]:
    """Every run kept, in the order they started."""
    return _runs(instance_path, None)


def _runs(instance_path: Path, database: str | None) -> list[Run]:
    """The runs, in the order they started, each as its last line has it."""
    runs: dict[str, Run] = {}
    try:
        lines = (instance_path / FILE).read_text().splitlines()
    except OSError:
        return []
    # Tenants of a fleet share one log: another database's lines are passed over before they are parsed.
    quoted = None if database is None else json.dumps(database)
    for line in lines:
        if quoted is not None and quoted not in line:
            continue
        try:
            run = Run(**json.loads(line))
        except (ValueError, TypeError):
            continue  # a line cut short by a crash
        if database is None or run.database == database:
            runs[run.id] = run  # the end line replaces the start line
    return list(runs.values())


def _append(path: Path, run: Run) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if run.outcome is None and path.exists():
        lines = path.read_text().splitlines()
        if len(lines) > 2 * KEEP:  # two lines a run
            path.write_text("".join(line + "\n" for line in lines[-2 * KEEP :]))
    with path.open("a") as log:
        log.write(json.dumps(asdict(run)) + "\n")
