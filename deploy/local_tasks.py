"""`invoke db.*`: thin tasks over deploy.commands, for the project whose tasks.py adds them; the same
tasks, with the options only fab passes, are what fab starts on the server (deploy.server)."""

from __future__ import annotations

import re
import sys
from functools import partial
from pathlib import Path

from invoke import Collection

from . import commands, console, forking, task_config
from .console import Cancellation
from .errors import DeployError, one_line_errors
from .options import FROM_DATABASE, RUNNING, Command, command
from .renames import Renames
from .renames import parse as parse_renames
from .status import STATUS_LINE, await_go

# A message that is an option someone meant for the task (`--help`, `-e`), which Invoke took for the message.
OPTION_LIKE = re.compile(r"--?[A-Za-z][A-Za-z-]*")

# The options only fab's server command line passes (options.SERVER_ONLY): the server's entry point
# (deploy.server) takes them, the user's `invoke db.*` does not show them.
TARGETS = (
    "used by fab: serve the runs fab starts for these targets ([settings, caller] pairs, JSON), each in a forked "
    "child (deploy.forking)"
)
PLAN = "used by fab: print the upgrade's plan as the status line, with this server's refusal if any; change nothing"
EXPECT_FROM = (
    "used by fab: the revisions (comma-separated) of the plan you approved: refuse if the database has moved "
    "since; the password comes on stdin, which stays open: 'stop' or its end stops between revisions"
)
REHEARSAL = "used by fab, with --expect-from: only the rehearsal on a copy; the laptop asks before the real run"
CONVERSATION = (
    "used by fab: print the status line first and go on only at the laptop's answer (the password follows "
    "it on stdin, which stays open: 'stop' or its end stops between revisions)"
)


def agreed(opened: commands.Project, conversation: bool, target: str = "head", downgrade: bool = False) -> bool:
    """Under fab (`conversation`): the laptop has seen the status and said go."""
    return not conversation or await_go(commands.status(opened, target, downgrade))


def warm_up(c, settings: str, drift: bool = False) -> None:
    """Before a fleet's children fork: import the app's settings and the database's driver, and read the
    migration scripts and the checkout's release, once; `drift`: and what the first target's plan reads,
    which its siblings share as a rule: the schema the migrations make at its revision, the pending
    revisions' operations and checksums, and the reflection's own set-up."""
    from . import alembic_ops, database, releases

    opened = commands.Project.open(Path(c.config.db.alembic_ini), settings)
    database.warm_up(opened.settings.database_url, opened.settings.engine_options)
    try:
        alembic_ops.preload(opened.alembic)
        releases.preload(alembic_ops.root(opened.alembic), opened.alembic.get_main_option("flask_app"))
        if drift:
            commands.warm_up(opened)
    except Exception:
        return  # only a saving: each run says what fails, for its own target


def project(c, **guards) -> commands.Project:
    """The checkout's project; `guards` (no_backup=..., see deploy.switches) are this run's guard switches."""
    configured = task_config.read(c.config)
    opened = commands.Project.open(Path(c.config.db.alembic_ini), caller=c.config.db.caller)
    production = opened.settings.name not in configured.reset_settings
    switched = frozenset(name for name, on in guards.items() if on)
    opened.guards = commands.Guards(configured.safety, production=production, switched=switched)
    return opened


@command(help={"force": "also drop a MariaDB/MySQL/PostgreSQL database on this machine (SQLite needs no --force)"})
@one_line_errors
def reset(c, force=False):
    """Drop every table, create the models' tables, stamp head (development databases only)."""
    print(commands.reset(project(c), task_config.read(c.config).reset_settings, force))


@command(
    help={
        "message": "the revision's message, e.g. 'add tags'",
        "empty": "write a blank revision to fill in by hand instead of autogenerating",
        "base": "autogenerate against the schema BRANCH's models build (a scratch database), not the development one",
        "renames": (
            "say which dropped-and-added columns or tables are renames, without a terminal: OLD:NEW pairs, "
            "comma-separated (title:headline, posts.title:headline, notes:memos for a table); at a terminal, "
            "the others are asked"
        ),
        "expand": (
            "write each column's rename as two revisions, for a database two releases serve at once: expand "
            "(add the new column, keep both in sync) and contract (drop the old one, once no release maps it)"
        ),
    }
)
@one_line_errors
def revision(c, message, empty=False, base=None, renames=None, expand=False):
    """Autogenerate a revision from the models against the development database (or --base BRANCH's schema);
    a column or table dropped and another added alike is asked about (or named by --renames) as a rename."""
    if OPTION_LIKE.fullmatch(message):
        # Invoke hands `invoke db.revision --help` over as the message: no revision is written for it.
        raise DeployError(
            f"{message!r} is not a revision message: `invoke --help db.revision` shows the task's help; "
            f"a message that starts with '-' goes as -m='{message}'"
        )
    asked = (lambda candidate: console.agrees(candidate.question)) if sys.stdin.isatty() else None
    if expand and empty:
        raise DeployError("--expand writes autogenerate's renames as two revisions: it does not go with --empty")
    answers = Renames(parse_renames(renames) if renames is not None else (), asked, expand=expand)
    if base and not empty:
        from . import branches

        written = branches.revision_against(project(c), message, base, answers)
    else:
        written = commands.revision(project(c), message, empty, answers)
    for renamed in answers.renamed:
        print(f"written as {'expand and contract' if expand else 'a rename'}: {renamed}")
    if note := answers.note():
        print(f"warning: {note}", file=sys.stderr)
    if expand and written and not answers.renamed:
        print("warning: --expand: no column is renamed, so the revision is written as one", file=sys.stderr)
    # The path last, alone on its line: scripts and editors take it from there (--expand: the contract's
    # after the expand's).
    print(written or "no schema changes detected: no revision written (use --empty for a hand-written one)")
    if answers.contract_path is not None:
        print(answers.contract_path)


@command(
    help={
        "to": "target revision (default: head)",
        "expect_head": "refuse unless the migrations' head is this revision (fab passes yours)",
        "sql": "print the SQL the upgrade would run, from the database's revision; change nothing",
        "yes": "outside development, apply without asking [y/N] (for pipelines; fab passes it after asking you)",
        "plan": PLAN,
        "expect_from": EXPECT_FROM,
        "running": RUNNING,
        "rehearsal": REHEARSAL,
        "targets": TARGETS,
    }
)
@one_line_errors
def upgrade(
    c,
    to="head",
    expect_head=None,
    sql=False,
    yes=False,
    plan=False,
    expect_from=None,
    rehearsal=False,
    targets=None,
    running=None,
    **guards,
):
    """Upgrade the database to head, or to --to REV."""
    if targets:
        chosen = dict(to=to, expect_head=expect_head, sql=sql, yes=yes, running=running, **guards)
        forking.run_each(
            c, targets, lambda **run: upgrade.body(c, **{**chosen, **run}), partial(warm_up, c, drift=True)
        )
    opened = project(c, **guards)
    opened.running = running
    if plan:
        print(STATUS_LINE + commands.plan(opened, to, expect_head).to_json())
        return
    if sql:
        print(commands.sql(opened, to, expect_head=expect_head))
        return
    if expect_from is not None:
        # Under fab, after the laptop showed the plan and asked: no question here, and stdin is the laptop's.
        approved = [revision for revision in expect_from.split(",") if revision]
        cancellation = Cancellation(sys.stdin.fileno())
        print(commands.upgrade(opened, to, expect_head, print, None, cancellation, approved, rehearsal))
        return
    # Outside development, the plan is shown and applied only when confirmed.
    confirm = None if not opened.guards.production else partial(console.confirm, "Apply?", yes)
    print(commands.upgrade(opened, to, expect_head, progress=print, confirm=confirm))


@command(
    help={
        "to": "target revision (default: -1, one step back; write --to=-1 style for relative ones)",
        "confirmed": "do not ask for the database's name outside development (fab passes it after asking you)",
        "sql": "print the SQL the downgrade would run, from the database's revision; change nothing",
        "conversation": CONVERSATION,
    }
)
@one_line_errors
def downgrade(c, to="-1", confirmed=False, sql=False, conversation=False, **guards):
    """Downgrade the database one revision, or to --to REV."""
    opened = project(c, **guards)
    if not sql:
        commands.check_resolved(opened)  # before the status and the typed name
    if conversation and not await_go(commands.plan(opened, to, downgrade=True)):
        return
    if sql:
        print(commands.sql(opened, to, downgrade=True))
        return
    # Outside development, a downgrade (which may drop data) wants the database's name typed.
    guarded = opened.guards.production and not confirmed
    cancellation = Cancellation(sys.stdin.fileno() if conversation else None)
    print(commands.downgrade(opened, to, confirm=guarded, progress=print, cancellation=cancellation))


@command(
    help={
        "revision": "the revision the database's schema already matches (or head, or base)",
        "conversation": CONVERSATION,
    }
)
@one_line_errors
def stamp(c, revision, conversation=False):
    """Record REVISION as the database's revision without running migrations."""
    opened = project(c)
    if agreed(opened, conversation):
        print(commands.stamp(opened, revision))


@command(
    help={
        "revision": "the applied revision, edited after it ran, whose file you reviewed and keep as it is now",
        "conversation": CONVERSATION,
    }
)
@one_line_errors
def accept(c, revision, conversation=False):
    """Accept an applied revision's file as it is now, after review of an edit made since it ran."""
    opened = project(c)
    if agreed(opened, conversation):
        print(commands.accept(opened, revision))


@command()
@one_line_errors
def current(c):
    """Show the database's current revision."""
    print("\n".join(commands.current(project(c))))


@command()
@one_line_errors
def history(c):
    """List the migrations, newest first."""
    print(commands.history(project(c)))


@command()
@one_line_errors
def heads(c):
    """Show the migrations' head revision(s)."""
    print(commands.heads(project(c)))


@command(
    help={
        "to": "target revision (default: head; with --downgrade: -1)",
        "json": "print machine-readable JSON",
        "downgrade": "list what a downgrade to --to would undo instead",
        "running": RUNNING,
        "targets": TARGETS,
    }
)
@one_line_errors
def status(c, to=None, json=False, downgrade=False, targets=None, running=None):
    """Show head, current revision and the pending revisions."""
    if targets:
        forking.run_each(c, targets, lambda: status.body(c, to, json, downgrade, running=running), partial(warm_up, c))
    opened = project(c)
    opened.running = running
    found = commands.status(opened, to or ("-1" if downgrade else "head"), downgrade)
    print(found.to_json() if json else found)


@command(
    help={
        "backup": "the backup's file name, as db.backups lists it",
        "confirmed": "do not ask for the database's name (fab passes it after asking you)",
        "from_database": FROM_DATABASE,
        "conversation": CONVERSATION,
    }
)
@one_line_errors
def restore(c, backup, confirmed=False, from_database=None, conversation=False, **guards):
    """Make the database exactly as in BACKUP, after typing its name (a backup of it comes first)."""
    opened = project(c, **guards)
    go = partial(agreed, opened, conversation)
    if said := commands.restore(opened, backup, not confirmed, print, from_database, go):
        print(said)


@command()
@one_line_errors
def backups(c):
    """List this database's backups, newest first: time, revision, size, file."""
    found = commands.list_backups(project(c))
    print("\n".join(map(str, found)) if found else "no backups yet")


@command(help={"to": "target revision (default: head)"})
@one_line_errors
def lint(c, to="head"):
    """Show the risky operations in the pending revisions; exit 1 when any is not marked reviewed."""
    found = commands.lint_pending(project(c), to)
    print("\n".join(map(str, found)) if found else "no risky operations pending")
    unreviewed = [finding for finding in found if not finding.reviewed]
    if unreviewed:
        raise DeployError(f"{len(unreviewed)} risky operation{'s' * (len(unreviewed) > 1)} not marked reviewed")


@command(
    help={
        "json": "print machine-readable JSON",
        "url": "run the scratch checks on this empty database instead of a temporary SQLite file",
        "compatible_with": (
            "also run release REF's code (a git ref: the one in production) on the schema of the revisions it "
            "lacks: select, insert, update and delete through each of its models, as it does while both run"
        ),
    }
)
@one_line_errors
def check(c, json=False, url=None, compatible_with=None):
    """CI gate: one head, downgrades that undo their upgrades, models that match the migrations."""
    from . import checks

    found = checks.check(project(c), checks.scratch_url(url) if url else None, compatible_with)
    print(found.to_json() if json else found)
    if not found.ok:
        raise DeployError(f"db.check failed: {', '.join(dict.fromkeys(problem.check for problem in found.problems))}")


@command(help={"message": "the merge revision's message (default: 'merge heads A and B')"})
@one_line_errors
def merge(c, message=None):
    """Merge the migrations' heads into one revision; prints its path."""
    from . import branches

    print(branches.merge(project(c), message))


@command(help={"diff": "also show what autogenerate would change to bring the database to the models"})
@one_line_errors
def schema(c, diff=False):
    """Show the database's tables, columns, indexes, constraints (read with the application's user)."""
    from . import checks

    print(checks.live_schema(project(c), diff))


@command(
    help={
        "json": "print machine-readable JSON (for monitoring: the exit status is 1 when there is drift, as without it)",
        "url": (
            "build the migrations in this empty database of the same kind, to compare column types too (default: a "
            "temporary SQLite file, compared without types); an empty password in it is asked for"
        ),
        "targets": TARGETS,
    }
)
@one_line_errors
def drift(c, json=False, url=None, targets=None):
    """Show what was changed in the database outside its migrations; exit 1 when anything was."""
    if targets:
        # A fleet's runs: the laptop tabulates their reports (fleet.drifts), so `table` runs exit 0 on drift.
        forking.run_each(c, targets, lambda table=False: show_drift(c, True, None, table), partial(warm_up, c, True))
    show_drift(c, json, url)


@one_line_errors
def show_drift(c, json: bool, url: str | None, table: bool = False) -> None:
    from . import checks
    from .credentials import with_password

    scratch = with_password(checks.scratch_url(url)) if url else None
    found = checks.drift(project(c), scratch)
    print(found.to_json() if json else found)
    if not found.ok and not table:
        count = len(found.drift)
        raise DeployError(f"drift: {count} difference{'s' * (count > 1)} from what the migrations build")


# Not `db.stamp --detect`: Invoke's positional REVISION cannot be optional.
@command(
    help={
        "yes": "stamp the match without asking [y/N] (for pipelines)",
        "report": "only report the match (last line `match: REV`) or the closest; stamp nothing",
        "conversation": "used by fab: the report, then the status line; stamp the match at the laptop's answer",
    }
)
@one_line_errors
def detect(c, yes=False, report=False, conversation=False):
    """Find the revision whose schema an unstamped database has; stamp it after a [y/N]."""
    from . import checks

    opened = project(c)
    found = checks.detect(opened)
    if report or conversation:
        # Read with the application's user; under fab the laptop reads the report, asks, then says go.
        print(found.report())
        if conversation and await_go(commands.status(opened)) and found.match is not None:
            print(commands.stamp(opened, found.match))
        return
    print(found)
    if found.match is None:
        raise DeployError("no single revision matches: nothing stamped")
    console.confirm(f"Stamp it at {found.match}?", yes)
    print(commands.stamp(opened, found.match))


COMMANDS: tuple[Command, ...] = (
    reset,
    revision,
    upgrade,
    downgrade,
    stamp,
    accept,
    current,
    history,
    heads,
    status,
    restore,
    backups,
    lint,
    check,
    merge,
    schema,
    detect,
    drift,
)


def db_tasks(tasks_file: str) -> Collection:
    """The `db` collection for the project whose tasks.py is `tasks_file` (it passes `__file__`).

    Its defaults live in Invoke's config under `db`, so invoke.yaml or INVOKE_DB_* override them."""
    return collection(str(Path(tasks_file).resolve().parent / "alembic.ini"))


def collection(alembic_ini: str, server: bool = False) -> Collection:
    """The `db` collection for the project of `alembic_ini`: what the user types, or (`server`) what
    fab starts on the server, with the options only the laptop passes (deploy.server)."""
    db = Collection("db", *(each.task(server) for each in COMMANDS))
    db.configure({"db": task_config.invoke_defaults(alembic_ini)})
    return db
