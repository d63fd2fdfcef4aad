"""`fab ENV db.*`: the laptop's half. It shows what the server reports, asks and confirms here; the
server's checkout checks and does the work with its own `db.*` tasks (deploy.server), so both paths
share one implementation; the upgrade, for one target or a fleet, goes through fleet.py. Only what a
command uses is imported: Alembic, for this checkout's head, in the background while the server works."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from fabric import Config, Task
from invoke import Collection

from . import console, credentials, switches
from .console import confirm_restore_from, forwarding_interrupts
from .environments import ONLY, SELECTED, Target, selected_targets
from .errors import DeployError, one_line_errors
from .options import FROM_DATABASE, RUNNING, Command, command
from .ssh import Server, Session

# A `fab ENV db.*` task: Fabric's, with fab's help for the guard switches, built when fab_tasks runs.
task = partial(command, task_class=Task, fab=True)


def one_target(c) -> Target:
    """The selected environment's target, for the commands that work on one database at a time."""
    found, _ = selected_targets(c.config)
    if len(found) > 1:
        environment = found[0].environment
        names = ", ".join(target.name for target in found)
        example = f"fab {environment} --only {found[0].name} ..."
        raise DeployError(f"{environment} has {len(found)} targets ({names}): name one, e.g. `{example}`")
    return found[0]


def fleet_done(outcomes) -> None:
    """The final table; a target that failed makes the command fail."""
    from . import fleet

    print(fleet.table(outcomes))
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        raise DeployError(
            f"{len(failed)} of {len(outcomes)} targets failed: {', '.join(o.target.name for o in failed)}"
        )


def local_config(c):
    """The alembic.ini of the checkout `fab` runs in."""
    from . import alembic_ops

    return alembic_ops.load_config(Path(c.config.db.alembic_ini))


def local_head(c) -> str:
    """This checkout's single head: the code reviewed, which the server's must equal."""
    return head_at(Path(c.config.db.alembic_ini))


def head_at(alembic_ini: Path) -> str:
    """The single head of the checkout whose alembic.ini is `alembic_ini`."""
    from . import alembic_ops

    return alembic_ops.single_head(alembic_ops.load_config(alembic_ini))


def one_done(outcome) -> None:
    """A fleet of one ends as a single target's command: its failure is the command's."""
    from . import fleet

    if not outcome.ok:
        raise outcome.error
    if outcome.result == fleet.UP_TO_DATE:
        print(f"{outcome.target.label}: {outcome.database} is already at {outcome.current}: nothing to do")


def go_ahead(server: Server, talk: Session, controlled: bool = False) -> None:
    """Answer the server's status with go and, when it needs one, the password typed here; then
    follow the run to its end. `controlled` (migrations): Ctrl-C here stops it between revisions."""
    state = talk.status
    password = None
    if state.needs_password:
        password = credentials.read_password(f"Password for {state.migration_user} ({server.name}): ")
    talk.go(password)
    if not controlled:
        talk.finish()
        return
    with forwarding_interrupts(talk.send):
        talk.finish()


@task(help={"running": RUNNING})
@one_line_errors
def status(c, running=None):
    """Show the server's head, the database's revision and the pending revisions (a row per target of a fleet)."""
    found, concurrency = selected_targets(c.config)
    if len(found) > 1:
        from . import fleet

        fleet_done(fleet.statuses(c, found, concurrency))
        return
    with Server(c, found[0]) as server:
        print(f"{server.name}: {server.where}")
        server.invoke(["db.status", *([f"--running={running}"] if running else [])])


@task(
    help={
        "to": "an explicit target revision; without it the server's head must equal yours",
        "sql": "print the SQL the upgrade would run on the server's database; change nothing, ask nothing",
        "yes": "apply without asking [y/N] (needed without a terminal)",
        "running": RUNNING,
    }
)
@one_line_errors
def upgrade(c, to=None, sql=False, yes=False, running=None, **guards):
    """Upgrade the environment's database to head, after checks, a [y/N] and a password prompt."""
    from . import fleet

    # Only an explicit revision skips the same-head check: `--to=head` is the default spelled out.
    explicit = to not in (None, "", "head")
    args = ["db.upgrade", f"--to={to if explicit else 'head'}", *switches.forwarded("upgrade", guards)]
    args += [f"--running={running}"] if running else []
    if sql:
        expected = [] if explicit else [f"--expect-head={local_head(c)}"]
        with Server(c, one_target(c)) as server:
            server.invoke([*args, "--sql", *expected])
        return
    found, concurrency = selected_targets(c.config)
    # Read here, not in the background: opening the connections merges ssh_config into c.config anew.
    alembic_ini = None if explicit else Path(c.config.db.alembic_ini)
    with ThreadPoolExecutor(1) as background:
        # Alembic loads this checkout's scripts while the connections open and the servers import.
        expected = background.submit(lambda: None if alembic_ini is None else head_at(alembic_ini))
        outcomes = fleet.upgrade(c, found, concurrency, args, expected.result, yes, bool(guards.get("rehearse")))
    (one_done if len(found) == 1 else fleet_done)(outcomes[0] if len(found) == 1 else outcomes)


@task(help={"revision": "the revision the database's schema already matches"})
@one_line_errors
def stamp(c, revision):
    """Record REVISION as the environment database's revision, running no migration."""
    # A typo fails here, before any question; the server checks again against its own scripts.
    from . import alembic_ops

    alembic_ops.resolve(local_config(c), revision)
    with Server(c, one_target(c)) as server, server.conversation(["db.stamp", revision]) as talk:
        state = talk.status
        print(f"{server.name}: stamping {state.migration_user} at {revision}")
        if state.current:
            # Restamping skips or repeats migrations: make sure it is meant.
            print(f"it is stamped at {', '.join(state.current)} already")
            console.confirm_database(state.database_name)
        go_ahead(server, talk)


@task(help={"revision": "the applied revision, edited after it ran, whose file you reviewed and keep as it is now"})
@one_line_errors
def accept(c, revision):
    """Accept an applied revision's file as it is now on the environment's database, after review."""
    from . import alembic_ops

    alembic_ops.resolve(local_config(c), revision)  # a typo fails here, before any question
    with Server(c, one_target(c)) as server, server.conversation(["db.accept", revision]) as talk:
        print(f"{server.name}: accepting {revision} as its file is now, on {talk.status.migration_user}")
        go_ahead(server, talk)


@task(help={"yes": "stamp the match without asking [y/N] (needed without a terminal)"})
@one_line_errors
def detect(c, yes=False):
    """Find the revision an unstamped environment database's schema matches; stamp it after a [y/N]."""
    from . import alembic_ops, checks

    # The server reports with the application's user; the password comes only with go.
    with Server(c, one_target(c)) as server, server.conversation(["db.detect"]) as talk:
        report, match = checks.read_report(talk.before_status)
        print(f"{server.name}: {server.where}")
        print(report)
        if match is None:
            raise DeployError("no single revision matches: nothing stamped")
        # The server's revision must be one this checkout has: the code reviewed is the code deployed.
        alembic_ops.resolve(local_config(c), match)
        print(f"{server.name}: stamping {talk.status.migration_user} at {match}")
        console.confirm("Stamp it?", yes)
        go_ahead(server, talk)


@task(
    help={
        "to": "the revision to go back to (e.g. --to=-1 or a revision id)",
        "sql": "print the SQL the downgrade would run on the server's database; change nothing, ask nothing",
    }
)
@one_line_errors
def downgrade(c, to, sql=False, **guards):
    """Downgrade the environment's database to --to REV, after typing its name to confirm."""
    # Confirmed here, so the server does not ask again (its stdin carries the password).
    args = ["db.downgrade", f"--to={to}", *(["--sql"] if sql else ["--confirmed"])]
    args += switches.forwarded("downgrade", guards)
    with Server(c, one_target(c)) as server, server.conversation(args) as talk:
        # The plan comes first: an unknown target fails before any question is asked.
        state = talk.status
        if state.refusal:
            raise DeployError(f"{server.name}: {state.refusal}")
        if not state.pending:
            print(f"{server.name}: {state.database} is already at {to}: nothing to do")
            return
        if sql:
            talk.go()
            talk.finish()
            return
        print(f"{server.name}: downgrade {state.migration_user}, undoing {len(state.pending)}:")
        print("\n".join(state.revision_lines()))
        console.confirm_database(state.database_name)
        go_ahead(server, talk, controlled=True)


@task(
    help={
        "backup": "the backup's file name, as `fab ENV db.backups` lists it",
        "from_database": FROM_DATABASE,
    }
)
@one_line_errors
def restore(c, backup, from_database=None, **guards):
    """Restore the environment's database from BACKUP (on the server), after typing its name."""
    args = ["db.restore", backup, "--confirmed", *switches.forwarded("restore", guards)]
    args += ["--from-database", from_database] if from_database else []
    with Server(c, one_target(c)) as server, server.conversation(args) as talk:
        state = talk.status
        print(f"{server.name}: restore {state.migration_user} from {backup}, replacing all it holds now")
        if from_database:
            confirm_restore_from(state.database_name, from_database)
        else:
            console.confirm_database(state.database_name)
        go_ahead(server, talk)


@task()
@one_line_errors
def backups(c):
    """List the environment database's backups on the server: time, revision, size, file."""
    with Server(c, one_target(c)) as server:
        server.invoke(["db.backups"])


@task()
@one_line_errors
def lint(c):
    """Show the risky operations in the server's pending revisions."""
    with Server(c, one_target(c)) as server:
        server.invoke(["db.lint"])


@task(help={"diff": "also show what autogenerate would change to bring the database to the models"})
@one_line_errors
def schema(c, diff=False):
    """Show the environment database's tables, columns, indexes and constraints (no password)."""
    with Server(c, one_target(c)) as server:
        print(f"{server.name}: {server.where}")
        server.invoke(["db.schema", *(["--diff"] if diff else [])])


@task(
    help={
        "json": "print machine-readable JSON (for monitoring: the exit status is 1 when there is drift, as without it)"
    }
)
@one_line_errors
def drift(c, json=False):
    """Show what was changed in the environment's database outside its migrations (a row per target of a
    fleet); exit 1 when anything was."""
    found, concurrency = selected_targets(c.config)
    if len(found) > 1:
        fleet_drift(c, found, concurrency, json)
        return
    with Server(c, found[0]) as server:
        if not json:
            print(f"{server.name}: {server.where}")
        server.invoke(["db.drift", *(["--json"] if json else [])])


def fleet_drift(c, targets: list[Target], concurrency: int, as_json: bool) -> None:
    """A fleet's drift: a row per target, then each drifted target's lines (or a JSON list of the
    reports); the command fails when a target drifted or could not be read."""
    import json

    from . import fleet

    outcomes, reports = fleet.drifts(c, targets, concurrency)
    if as_json:
        read = [{"target": o.target.name, **reports[o.target]} for o in outcomes if o.target in reports]
        failed = [
            {"target": o.target.name, "ok": False, "error": o.result} for o in outcomes if o.target not in reports
        ]
        print(json.dumps(read + failed))
    else:
        print(fleet.table(outcomes))
        for outcome in outcomes:
            for line in reports.get(outcome.target, {}).get("drift", []):
                print(f"{outcome.target.name}: drift: {line}")
    unread = [outcome.target.name for outcome in outcomes if outcome.target not in reports]
    drifted = [outcome.target.name for outcome in outcomes if outcome.target in reports and not outcome.ok]
    said = [f"{len(drifted)} of {len(outcomes)} targets drifted: {', '.join(drifted)}"] if drifted else []
    said += [f"{len(unread)} of {len(outcomes)} targets failed: {', '.join(unread)}"] if unread else []
    if said:
        raise DeployError("; ".join(said))


COMMANDS: tuple[Command, ...] = (
    status,
    upgrade,
    stamp,
    accept,
    detect,
    downgrade,
    restore,
    backups,
    lint,
    schema,
    drift,
)


def environment_task(name: str) -> Task:
    def select(c, only=None):
        setattr(c.config, SELECTED, name)
        setattr(c.config, ONLY, only)

    select.__doc__ = f"Select the {name} environment (fabric.yaml) for the tasks that follow."
    return Task(select, name=name, help={"only": "of a fleet, only these targets (comma-separated names)"})


def fab_tasks(fabfile: str) -> Collection:
    """The fabfile's namespace: `db.*` plus one task per environment in fabric.yaml, for the project
    whose fabfile.py is `fabfile` (it passes `__file__`)."""
    project_dir = Path(fabfile).resolve().parent
    config = Config(project_location=str(project_dir))
    config.load_project()
    environments = config.get("environments") or {}
    db = Collection("db", *(each.task() for each in COMMANDS))
    db.configure({"db": {"alembic_ini": str(project_dir / "alembic.ini"), "environment_tasks": sorted(environments)}})
    return Collection(db, *(environment_task(name) for name in environments))
