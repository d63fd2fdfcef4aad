"""Several targets at once: the status of each, and upgrades in parallel, a bounded number at a time.

Each target is its own SSH session and server process (ssh.py), under its own migration lock on the
server. The laptop asks once: one [y/N] for the whole plan, one password per distinct migration user."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TypeVar

from invoke import Exit

from . import console, credentials
from .console import forwarding_interrupts
from .environments import Target
from .errors import DeployError
from .ssh import Server, Session
from .status import Status

Item = TypeVar("Item")


@dataclass
class Outcome:
    """What happened to one target; `ok` False makes the fab command fail."""

    target: Target
    database: str = ""
    current: str = ""
    result: str = ""
    ok: bool = True

    def fail(self, reason: str) -> None:
        self.result, self.ok = f"failed: {reason}", False


@dataclass
class Run:
    """One target's conversation, open from its status until it is answered and finished."""

    outcome: Outcome
    stack: ExitStack = field(default_factory=ExitStack)
    talk: Session | None = None
    password: str | None = None

    @property
    def status(self) -> Status:
        return self.talk.status

    def close(self) -> None:
        self.stack.close()
        self.talk = None


def table(outcomes: list[Outcome]) -> str:
    """One row per target: name, database, revision, result."""
    rows = [("target", "database", "revision", "result")]
    rows += [(o.target.name, o.database or "-", o.current or "-", o.result) for o in outcomes]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    padded = ([*(row[column].ljust(widths[column]) for column in range(3)), row[3]] for row in rows)
    return "\n".join("  ".join(cells) for cells in padded)


def each(work: Callable[[Item], None], items: Iterable[Item], concurrency: int) -> None:
    """`work(item)` for every item, `concurrency` at a time. The threads are daemons and this wait is
    one Ctrl-C ends: a server that never answers cannot hold the laptop (its connection, and the
    server's command with it, end with this process)."""
    todo: queue.SimpleQueue[Item] = queue.SimpleQueue()
    for item in items:
        todo.put(item)
    failures: list[BaseException] = []
    finished = threading.Semaphore(0)

    def worker() -> None:
        try:
            while True:
                try:
                    item = todo.get_nowait()
                except queue.Empty:
                    return
                work(item)
        except BaseException as exc:  # a bug: raised again here, as the work's own error
            failures.append(exc)
        finally:
            finished.release()

    workers = min(concurrency, todo.qsize())
    for _ in range(workers):
        threading.Thread(target=worker, daemon=True).start()
    for _ in range(workers):
        finished.acquire()
    if failures:
        raise failures[0]


def by_host(targets: list[Target]) -> list[list[Target]]:
    """The targets one server process serves: those on one host (forking.py forks it per target)."""
    groups: dict[str, list[Target]] = {}
    for target in targets:
        groups.setdefault(target.host, []).append(target)
    return list(groups.values())


def statuses(c, targets: list[Target], concurrency: int) -> list[Outcome]:
    """Each target's status, read in parallel with the application's user (no password)."""
    outcomes = {target: Outcome(target) for target in targets}

    def read(group: list[Target]) -> None:
        try:
            with Server(c, group[0]) as server:
                for talk in server.fleet_sessions(["db.status", "--json"], group, hide=True):
                    outcome = outcomes[talk.server.target]
                    try:
                        lines = talk.finish().strip().splitlines()
                        described(outcome, Status.from_json(lines[-1] if lines else "", talk.server.name))
                    except DeployError as exc:
                        outcome.fail(str(exc))
        except DeployError as exc:
            for target in group:
                outcomes[target].fail(str(exc))

    each(read, by_host(targets), concurrency)
    return list(outcomes.values())


def described(outcome: Outcome, state: Status) -> None:
    outcome.database, outcome.current = state.database, ", ".join(state.current) or "not stamped"
    if state.pending is None:
        outcome.result = "pending unknown: several heads, or tables without alembic_version"
    else:
        outcome.result = f"{len(state.pending)} pending" if state.pending else "up to date"


def upgrade(c, targets: list[Target], concurrency: int, args: list[str], check, yes: bool) -> list[Outcome]:
    """Upgrade every target: statuses read in parallel, `check(server, status)` refusing a target
    (a DeployError), one [y/N], one password per migration user, then the runs, `concurrency` at a
    time. A target that fails does not stop the others."""
    runs = {target: Run(Outcome(target)) for target in targets}
    with ExitStack() as connections:
        lock = threading.Lock()

        def open_host(group: list[Target]) -> None:
            try:
                server = Server(c, group[0])
                server.__enter__()
                with lock:
                    connections.push(server.__exit__)
                talks = server.fleet_sessions([*args, "--conversation"], group)
            except DeployError as exc:
                for target in group:
                    runs[target].outcome.fail(str(exc))
                return
            for talk in talks:
                _begin(runs[talk.server.target], talk, check)

        try:
            each(open_host, by_host(targets), concurrency)
            chosen = _deduplicated([run for run in runs.values() if run.talk is not None])
            for run in runs.values():
                if run not in chosen:
                    run.close()  # its server process ends quietly: nothing to do there
            if chosen:
                _confirm_and_apply(chosen, concurrency, yes)
        finally:
            for run in runs.values():
                run.close()
    return [run.outcome for run in runs.values()]


def _confirm_and_apply(chosen: list[Run], concurrency: int, yes: bool) -> None:
    print(f"{len(chosen)} database{'s' * (len(chosen) > 1)} to upgrade:")
    for run in chosen:
        outcome, pending = run.outcome, run.status.pending
        plan = f"{outcome.current} -> {pending[-1][0]}, {len(pending)} pending"
        print(f"  {outcome.target.name}: {outcome.database}, {plan}")
    console.confirm("Apply?", yes)
    _ask_passwords(chosen)
    _apply(chosen, concurrency)


def _begin(run: Run, talk: Session, check) -> None:
    """The target's status, and the laptop's checks of it; a refused target's process ends here."""
    outcome = run.outcome
    try:
        run.talk = run.stack.enter_context(talk)
        state = talk.read_status()
        outcome.database, outcome.current = state.database, ", ".join(state.current) or "base"
        check(talk.server, state)
        if not state.pending:
            outcome.result = "up to date"
            run.close()
    except (DeployError, Exit) as exc:
        outcome.fail(str(exc) if isinstance(exc, DeployError) else talk.reason() or "the server's command failed")
        run.close()


def _deduplicated(runs: list[Run]) -> list[Run]:
    """Where two hosts reach one database, it is upgraded once."""
    first: dict[str, Run] = {}
    for run in runs:
        if run.outcome.database in first:
            run.outcome.result = f"same database as {first[run.outcome.database].outcome.target.name}"
        else:
            first[run.outcome.database] = run
    return list(first.values())


def _ask_passwords(runs: list[Run]) -> None:
    """One prompt per migration user (user@host:port), whatever the number of its databases."""
    users: dict[str, list[Run]] = {}
    for run in runs:
        if run.status.needs_password:
            user = run.status.migration_user.rsplit("/", 1)[0]
            users.setdefault(user, []).append(run)
    for user, sharing in users.items():
        password = credentials.read_password(f"Password for {user} ({len(sharing)} of the databases): ")
        for run in sharing:
            run.password = password


def _apply(runs: list[Run], concurrency: int) -> None:
    """Say go to each, `concurrency` at a time; Ctrl-C asks the running ones to stop between
    revisions and starts no more."""
    stopping = threading.Event()
    running: set[Session] = set()
    lock = threading.Lock()

    def send_all(line: str) -> None:
        stopping.set()
        with lock:
            for talk in running:
                talk.send(line)

    def run_one(run: Run) -> None:
        outcome = run.outcome
        with lock:
            if stopping.is_set():
                outcome.fail("not started: stopped by Ctrl-C")
                return
            running.add(run.talk)
        try:
            run.talk.go(run.password)
            run.talk.finish()
            outcome.result = f"upgraded to {run.status.pending[-1][0]}"
        except DeployError as exc:
            outcome.fail(str(exc))
        except Exit:
            outcome.fail(run.talk.reason() or "the server's command failed")
        finally:
            with lock:
                running.discard(run.talk)

    with forwarding_interrupts(send_all):
        each(run_one, runs, concurrency)
