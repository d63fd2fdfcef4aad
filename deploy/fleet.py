"""`fab ENV db.upgrade` and `db.status` for one target or several: one path, a single target being a
fleet of one.

One SSH connection and one server process per host; the process forks a child per run the laptop
starts (forking.py), so it imports the suite and the app once. An upgrade goes in three steps:
1. every target's plan, computed by its server: where the database is, what would run, and the
   server's own refusal if any (commands.plan); the laptop shows it, it does not judge it again;
2. one [y/N] for the whole plan and one password per distinct migration user, asked here, before
   anything runs; with --rehearse, the passwords first, then the first target's (the canary's) rehearsal
   on a copy of its database, its times shown as its server reports them, and only then the [y/N]: a
   rehearsal that fails ends the upgrade before any target is touched;
3. the runs that apply, `concurrency` at a time and no more than each database server has
   connections for, each told the revisions it was approved from. A target that fails does not
   stop the others; Ctrl-C stops the running ones between revisions and starts no more."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import TypeVar

from invoke import Exit

from . import console, credentials
from .console import forwarding_interrupts
from .environments import Target
from .errors import DeployError
from .ssh import Fleet, Server, Session
from .status import Status

Item = TypeVar("Item")
UP_TO_DATE = "up to date"


@dataclass
class Outcome:
    """What happened to one target; `ok` False makes the fab command fail."""

    target: Target
    database: str = ""
    current: str = ""
    result: str = ""
    ok: bool = True
    # The failure as raised, for a fleet of one to end with it as a single target's command would.
    error: BaseException | None = None

    def fail(self, reason: str, error: BaseException | None = None) -> None:
        self.result, self.ok = f"failed: {reason}", False
        self.error = error or DeployError(reason)


@dataclass
class Run:
    """One target's upgrade: its host's server process, its plan, the password typed for it."""

    outcome: Outcome
    fleet: Fleet | None = None
    plan: Status | None = None
    password: str | None = None


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
    """The targets one server process serves: those on one host."""
    groups: dict[str, list[Target]] = {}
    for target in targets:
        groups.setdefault(target.host, []).append(target)
    return list(groups.values())


def open_hosts(c, targets: list[Target], concurrency: int, task_args: list[str], stack: ExitStack, outcomes):
    """A connection and a server process serving `task_args` per host, opened in parallel; a host that
    cannot be reached fails its targets. Returns each reached target's Fleet."""
    fleets: dict[Target, Fleet] = {}
    lock = threading.Lock()

    def open_host(item: tuple[Server, list[Target]]) -> None:
        server, group = item
        try:
            server.__enter__()
        except DeployError as exc:
            for target in group:
                outcomes[target].fail(str(exc), exc)
            return
        with lock:
            stack.push(server.__exit__)
            fleet = server.fleet(task_args, group)
            stack.push(fleet.done)  # the server process ends once its runs have
            fleets.update((target, fleet) for target in group)

    # Built here, in one thread: a Server reads ssh_config into Fabric's config, which merges it anew,
    # and a thread reading the config meanwhile could find it half-built. Only connecting is parallel.
    each(open_host, [(Server(c, group[0]), group) for group in by_host(targets)], concurrency)
    return fleets


def statuses(c, targets: list[Target], concurrency: int) -> list[Outcome]:
    """Each target's status, read in parallel with the application's user (no password)."""
    outcomes = {target: Outcome(target) for target in targets}

    def read(target: Target) -> None:
        outcome = outcomes[target]
        try:
            with fleets[target].session(target, hide=True) as talk:
                lines = talk.finish().strip().splitlines()
                described(outcome, Status.from_json(lines[-1] if lines else "", talk.server.name))
        except DeployError as exc:
            outcome.fail(str(exc), exc)

    with ExitStack() as stack:
        fleets = open_hosts(c, targets, concurrency, ["db.status", "--json"], stack, outcomes)
        each(read, [target for target in targets if target in fleets], concurrency)
    return list(outcomes.values())


def drifts(c, targets: list[Target], concurrency: int) -> tuple[list[Outcome], dict[Target, dict]]:
    """Each target's drift from its migrations (`db.drift --json` on its server, with the application's
    user), read in parallel: the outcomes, a drifted target's not ok, and each target's report read."""
    import json

    outcomes = {target: Outcome(target) for target in targets}
    reports: dict[Target, dict] = {}

    def read(target: Target) -> None:
        outcome = outcomes[target]
        try:
            # `table`: the run exits 0 whatever the drift; the table says it (local_tasks.drift).
            with fleets[target].session(target, {"table": True}, hide=True) as talk:
                said = talk.finish().strip().splitlines()
            report = json.loads(said[-1]) if said else None
            if not isinstance(report, dict) or "drift" not in report:
                raise DeployError(f"{talk.server.name}: the server's `db.drift --json` gave no report")
        except (DeployError, ValueError) as exc:
            outcome.fail(str(exc), exc if isinstance(exc, DeployError) else None)
            return
        except Exit as exc:
            outcome.fail(talk.reason() or "the server's command failed", exc)
            return
        outcome.database, outcome.current = report["database"], ", ".join(report["revision"])
        compared = "" if report["typed"] else " (compared without types, scratch SQLite)"
        found = report["drift"]
        outcome.result = f"{len(found)} difference{'s' * (len(found) != 1)}" if found else "no drift"
        outcome.result += compared
        outcome.ok = not found
        reports[target] = report

    with ExitStack() as stack:
        fleets = open_hosts(c, targets, concurrency, ["db.drift", "--json"], stack, outcomes)
        each(read, [target for target in targets if target in fleets], concurrency)
    return list(outcomes.values()), reports


def described(outcome: Outcome, state: Status) -> None:
    outcome.database, outcome.current = state.database, ", ".join(state.current) or "not stamped"
    if state.pending is None:
        outcome.result = "pending unknown: several heads, or tables without alembic_version"
    else:
        outcome.result = f"{len(state.pending)} pending" if state.pending else UP_TO_DATE


def upgrade(
    c, targets: list[Target], concurrency: int, args: list[str], expect_head, yes: bool, rehearse: bool = False
) -> list[Outcome]:
    """Upgrade every target (see the module's docstring); `expect_head()` is the head the servers'
    migrations must end at (this checkout's), or None for an explicit target; `rehearse`: on the first
    target's copy first."""
    runs = {target: Run(Outcome(target)) for target in targets}
    outcomes = {target: run.outcome for target, run in runs.items()}
    alone = len(targets) == 1
    with ExitStack() as stack:
        fleets = open_hosts(c, targets, concurrency, args, stack, outcomes)
        head = expect_head()
        for target, fleet in fleets.items():
            runs[target].fleet = fleet
        each(lambda run: _plan(run, head), [run for run in runs.values() if run.fleet], concurrency)
        chosen = _deduplicated([run for run in runs.values() if run.outcome.ok and run.plan and run.plan.pending])
        if chosen:
            (_show_one if alone else _show_all)(chosen)
            if rehearse:
                if not yes and not sys.stdin.isatty():
                    console.confirm("Apply?", yes)  # refused now: no answer could come after the rehearsal
                _ask_passwords(chosen, alone)
                if not _rehearse(chosen, head, alone):
                    return list(outcomes.values())
                console.confirm("Apply?", yes)
            else:
                console.confirm("Apply?", yes)
                _ask_passwords(chosen, alone)
            _apply(chosen, concurrency, head, alone)
    return list(outcomes.values())


def _plan(run: Run, head: str | None) -> None:
    """The target's plan, from its server; a refusal in it fails the target here."""
    outcome, target = run.outcome, run.outcome.target
    try:
        with run.fleet.session(target, {"plan": True, "expect_head": head}, hide=True) as talk:
            state = talk.read_status()
            talk.finish()
    except DeployError as exc:
        outcome.fail(str(exc), exc)
        return
    except Exit as exc:
        outcome.fail(talk.reason() or "the server's command failed", exc)
        return
    run.plan = state
    outcome.database, outcome.current = state.database, ", ".join(state.current) or "base"
    if state.refusal:
        outcome.fail(state.refusal, DeployError(f"{talk.server.name}: {state.refusal}"))
    elif not state.pending:
        outcome.result = UP_TO_DATE


def _deduplicated(runs: list[Run]) -> list[Run]:
    """Where two hosts reach one database, it is upgraded once."""
    first: dict[str, Run] = {}
    for run in runs:
        if run.outcome.database in first:
            run.outcome.result = f"same database as {first[run.outcome.database].outcome.target.name}"
        else:
            first[run.outcome.database] = run
    return list(first.values())


def _show_one(chosen: list[Run]) -> None:
    """A single target's plan, in full: where, from and to, each revision, and its notes."""
    (run,) = chosen
    plan, server = run.plan, run.fleet.server
    print(f"{server.name}: {server.where}, database {plan.migration_user}")
    print(f"{run.outcome.current} -> {plan.pending[-1][0]}, {len(plan.pending)} pending:")
    print("\n".join([*plan.revision_lines(), *notes(plan)]))


def _show_all(chosen: list[Run]) -> None:
    """A fleet's plan: a line per database, and its notes beneath it."""
    print(f"{len(chosen)} database{'s' * (len(chosen) > 1)} to upgrade:")
    for run in chosen:
        outcome, plan = run.outcome, run.plan
        plan_line = f"{outcome.current} -> {plan.pending[-1][0]}, {len(plan.pending)} pending"
        print(f"  {outcome.target.name}: {outcome.database}, {plan_line}")
        for line in notes(plan):
            print(f"    {line}")


def notes(plan: Status) -> list[str]:
    """What a plan says beside its revisions: what each operation takes, the risks allowed, what the data
    prechecks could not check, the drift."""
    return [
        *(f"estimate: {line}" for line in plan.estimates),
        *(f"risk: {risk}" for risk in plan.risks),
        *(f"unchecked: {line}" for line in plan.not_checked),
        *(f"drift: {line}" for line in drift_lines(plan)),
        *(f"incompatible: {line}" for line in plan.incompatible),  # allowed: --allow-incompatible
        *([plan.compatibility] if plan.compatibility else []),
    ]


def drift_lines(plan: Status) -> list[str]:
    """A plan's drift, and how it was compared (a plan builds the history in a scratch SQLite)."""
    if not plan.drift:
        return []
    return [*plan.drift, "(compared without types, scratch SQLite: only what a pending operation changes is refused)"]


def _ask_passwords(runs: list[Run], alone: bool) -> None:
    """One prompt per migration user (user@host:port), whatever the number of its databases."""
    users: dict[str, list[Run]] = {}
    for run in runs:
        if run.plan.needs_password:
            user = run.plan.migration_user.rsplit("/", 1)[0]
            users.setdefault(user, []).append(run)
    for user, sharing in users.items():
        if alone:
            prompt = f"Password for {sharing[0].plan.migration_user} ({sharing[0].fleet.server.name}): "
        else:
            prompt = f"Password for {user} ({len(sharing)} of the databases): "
        password = credentials.read_password(prompt)
        for run in sharing:
            run.password = password


def _rehearse(runs: list[Run], head: str | None, alone: bool) -> bool:
    """The first run's rehearsal on a copy of its database, by its server (which shows what it measured);
    whether it passed. When it did not, no target is started."""
    canary = runs[0]
    outcome, plan = canary.outcome, canary.plan
    if not alone:
        print(f"rehearsing on {outcome.target.name} first ({outcome.database}):")
    rehearsal = {"expect_from": ",".join(plan.current), "expect_head": head, "rehearsal": True}
    talk = canary.fleet.session(outcome.target, rehearsal, prefix=not alone)
    try:
        with forwarding_interrupts(talk.send), talk:
            if plan.needs_password:
                talk.send(canary.password)
            talk.finish()
    except DeployError as exc:
        outcome.fail(str(exc), exc)
    except Exit as exc:
        outcome.fail(talk.reason() or "the server's command failed", exc)
    for run in runs[1:] if not outcome.ok else ():
        run.outcome.fail(f"not started: the rehearsal on {outcome.target.name} failed")
    return outcome.ok


def _room(runs: list[Run]) -> dict[str, threading.Semaphore]:
    """Per database server, as many upgrades at once as its free connections allow (its plans say)."""
    rooms: dict[str, int] = {}
    for run in runs:
        if run.plan.room is not None:
            address = run.plan.database.split("@", 1)[-1].rsplit("/", 1)[0]
            rooms[address] = min(rooms.get(address, run.plan.room), run.plan.room)
    return {address: threading.Semaphore(room) for address, room in rooms.items()}


def _apply(runs: list[Run], concurrency: int, head: str | None, alone: bool) -> None:
    """Start each approved run, `concurrency` at a time; Ctrl-C asks the running ones to stop between
    revisions and starts no more."""
    stopping = threading.Event()
    running: set[Session] = set()
    lock = threading.Lock()
    rooms = _room(runs)

    def send_all(line: str) -> None:
        stopping.set()
        with lock:
            for talk in running:
                talk.send(line)

    def run_one(run: Run) -> None:
        outcome, plan = run.outcome, run.plan
        address = plan.database.split("@", 1)[-1].rsplit("/", 1)[0]
        with rooms.get(address) or nullcontext():
            with lock:
                if stopping.is_set():
                    outcome.fail("not started: stopped by Ctrl-C")
                    return
                approved = {"expect_from": ",".join(plan.current), "expect_head": head}
                talk = run.fleet.session(outcome.target, approved, prefix=not alone)
                running.add(talk)
            try:
                with talk:
                    if plan.needs_password:
                        talk.send(run.password)
                    talk.finish()
                outcome.result = f"upgraded to {plan.pending[-1][0]}"
            except DeployError as exc:
                outcome.fail(str(exc), exc)
            except Exit as exc:
                outcome.fail(talk.reason() or "the server's command failed", exc)
            finally:
                with lock:
                    running.discard(talk)

    with forwarding_interrupts(send_all):
        each(run_one, runs, concurrency)
