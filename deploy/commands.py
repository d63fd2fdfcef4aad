"""One function per user command, shared by `invoke db.*` and the server side of `fab ... db.*`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import URL, Connection

from . import alembic_ops, backfill, backups, console, database, dialects, rehearsal, schema, switches
from .console import Cancellation, confirm_restore_from
from .credentials import describe, needs_password, with_password
from .database import application_tables, explain, translate_errors
from .errors import RELAYED, DeployError, own, relayed
from .guards import lock, refusals, runlog, timeouts
from .renames import Renames
from .review import checksums, costs, diagnosis, lint, prechecks
from .settings import Settings
from .status import Status

# The connections one upgrade holds at once: its own, the migration lock's session, the backup's dump tool.
CONNECTIONS_PER_UPGRADE = 3


@dataclass(frozen=True)
class Guards:
    """How changes are guarded: the settings (Invoke config `db.safety`) and this run's switches, both
    declared in deploy.switches and read as attributes: `guards.lock_wait`, `guards.no_backup`."""

    # The settings given, by name; any other reads as its declared default.
    settings: Mapping[str, Any] = field(default_factory=dict)
    # This run: production (settings outside development) backs up and refuses risky operations.
    production: bool = False
    # This run's guard switches that are on, by name.
    switched: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.switched) - switches.names()
        if unknown:
            raise TypeError(f"not guard switches: {', '.join(sorted(unknown))}")
        unknown = set(self.settings) - {setting.name for setting in switches.SETTINGS}
        if unknown:
            raise TypeError(f"not guard settings: {', '.join(sorted(unknown))}")

    def __getattr__(self, name: str) -> Any:
        if name in switches.names():
            return name in self.switched
        for setting in switches.SETTINGS:
            if setting.name == name:
                return self.settings.get(name, setting.default)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def backup(self) -> bool:
        return self.production and not self.no_backup

    @property
    def refuse_risky(self) -> bool:
        return self.production and not self.allow_risky


@dataclass
class Project:
    """alembic.ini, the Flask settings in force, how the user calls us (for hints), the guards."""

    alembic: Config
    settings: Settings
    # What the user typed before `db.*`: `invoke` here, `fab prod` when the laptop drives the server.
    caller: str = "invoke"
    guards: Guards = Guards()
    # --running: the release of the code serving now, where the operator knows better than the one recorded.
    running: str | None = None

    @classmethod
    def open(
        cls, ini_path: Path, settings_name: str | None = None, caller: str = "invoke", guards: Guards = Guards()
    ) -> Project:
        config = alembic_ops.load_config(ini_path)
        return cls(config, alembic_ops.settings(config, settings_name), caller, guards)

    @property
    def backup_dir(self) -> Path:
        return (
            Path(self.guards.backup_dir)
            if self.guards.backup_dir
            else backups.default_directory(self.settings.instance_path)
        )

    def lock(self, url: URL, connection: Connection | None = None):
        """One migration at a time on this database; the refusal names the holder. Held by `connection`
        when given (a read that must not overlap a migration), else by a session of its own."""
        return lock.migration_lock(url, self.settings.engine_options, self.guards.lock_wait, connection)

    def command(self, task: str) -> str:
        """The command line the user can run where they are, for hints: `invoke db.status`."""
        return f"{self.caller} db.{task}"

    def heads(self) -> tuple[str, ...]:
        return alembic_ops.heads(self.alembic)

    def single_head(self) -> str:
        return alembic_ops.single_head(self.alembic)

    def migration_url_with_password(self) -> URL:
        """The migration URL, with the password asked for when the settings leave it empty."""
        return with_password(self.settings.migration_url)

    def connect(self, url: URL, create: bool = False):
        """A connection with the app's SQLALCHEMY_ENGINE_OPTIONS (TLS and the like)."""
        hint = f": `{self.command('upgrade')}` creates it"
        return database.connect(url, self.settings.engine_options, create, hint)

    def check_ready(self, connection: Connection) -> tuple[str, ...]:
        """Single head and a stamped database (when it has tables); the current heads."""
        return alembic_ops.check_ready(self.alembic, connection, self.command("stamp"))


@dataclass(frozen=True)
class Reset:
    database: str
    via: str | None  # the address the connection really went to (not for SQLite)
    tables: int
    stamped: str

    def __str__(self) -> str:
        via = f" via {self.via}" if self.via else ""
        return f"reset {self.database}{via}: {self.tables} tables, stamped at {self.stamped}"


@dataclass(frozen=True)
class Migration:
    """Where a migration left the database; `steps` 0: it was already there."""

    database: str
    steps: int
    now: str
    rehearsed: bool = False  # only rehearsed on a copy (fab asks in between): nothing ran on it

    def __str__(self) -> str:
        if self.rehearsed:
            return f"{self.database} is still at {self.now}: the upgrade was rehearsed on a copy only"
        if not self.steps:
            return f"{self.database} is already at {self.now}: nothing to do"
        return f"{self.database} is now at {self.now}"


def reset(project: Project, allowed_settings: list[str], force: bool = False) -> Reset:
    """Drop every table, create the models' tables, stamp head: no history replayed."""
    refusals.check_resettable(project.settings.name, allowed_settings, project.settings.migration_url, force)
    head = project.single_head()
    models = alembic_ops.metadata(project.alembic)
    url = project.migration_url_with_password()
    # Logged: a reset says what the schema is, so it resolves a revision a run left half applied.
    log = runlog.recorded(project.settings.instance_path, "db.reset", describe(url), "?", "head")
    with log, project.connect(url, create=True) as connection, translate_errors(url):
        peer = database.peer(connection) if database.sqlite_path(url) is None else None
        if peer is not None:
            refusals.check_on_this_machine(url, peer)
        existing = MetaData()
        existing.reflect(connection)
        # The reflected tables include stale ones (old models, alembic_version): drop them all.
        existing.drop_all(connection)
        models.create_all(connection)
        connection.commit()
        alembic_ops.stamp(project.alembic, connection, "head")
        connection.commit()
    via = f"{peer.address}, as {peer.proof}" if peer is not None else None
    return Reset(describe(url), via, len(models.tables), alembic_ops.label(project.alembic, head))


def revision(project: Project, message: str, empty: bool = False, renames: Renames | None = None) -> Path | None:
    """Autogenerate a revision from the models against the database (or a blank one with `empty`):
    the script written, or None when the models and the database agree. `renames`: the answers about
    drops and adds that may be renames, and what came of them (deploy.renames)."""
    if empty:
        if renames is not None and renames.given:
            raise DeployError("--renames answers autogenerate's questions: it does not go with --empty")
        return Path(alembic_ops.run(command.revision, project.alembic, None, message=message).path)
    head_revisions = project.heads()
    refusals.check_single_head(head_revisions)  # before the password prompt
    url = project.migration_url_with_password()
    # No revisions yet (a new project): the first one is autogenerated against an empty database.
    with project.connect(url, create=not head_revisions) as connection, translate_errors(url):
        current = project.check_ready(connection)
        if current != head_revisions:
            raise DeployError(
                f"the database is at {', '.join(current) or 'base'}, not at the head "
                f"{', '.join(head_revisions) or 'base'}: run `{project.command('upgrade')}` "
                f"(or `{project.command('reset')}`) first"
            )
        models = alembic_ops.metadata(project.alembic)
        # A Script, or [] when env.py dropped an empty autogenerate.
        written = alembic_ops.run(
            command.revision,
            project.alembic,
            connection,
            message=message,
            autogenerate=True,
            models=models,
            renames=renames,
        )
    if isinstance(written, list) and written:  # --expand: the expand revision, then the contract one
        renames.contract_path = Path(written[-1].path)
        written = written[0]
    return Path(written.path) if written else None


def upgrade(
    project: Project,
    target: str = "head",
    expect_head: str | None = None,
    progress=None,
    confirm=None,
    cancellation: Cancellation | None = None,
    expect_from: list[str] | None = None,
    rehearsal_only: bool = False,
) -> Migration:
    """Upgrade to `target`, refusing first what could go wrong; `confirm()` may still say no.
    `expect_from`: the revisions the database was at when the plan was approved (under fab);
    `rehearsal_only`: with --rehearse, only the rehearsal on a copy (fab asks before the real run)."""
    return migrate(project, target, expect_head, False, progress, confirm, cancellation, expect_from, rehearsal_only)


def downgrade(
    project: Project,
    target: str = "-1",
    confirm: bool = False,
    progress=None,
    cancellation: Cancellation | None = None,
) -> Migration:
    """Downgrade to `target` (default: one revision back); `confirm`: have the database's name typed first."""
    if confirm:
        console.confirm_database(project.settings.migration_url.database or "")
    return migrate(project, target, None, True, progress, None, cancellation)


def migrate(
    project: Project,
    target: str,
    expect_head: str | None,
    downgrade: bool,
    progress=None,
    confirm=None,
    cancellation: Cancellation | None = None,
    expect_from: list[str] | None = None,
    rehearsal_only: bool = False,
) -> Migration:
    """`progress` (the task's print) hears the plan before Alembic reports each revision it runs;
    `confirm()`, called after the plan and before any change, raises to say no. Revisions run one
    at a time: a `cancellation` stops the run between two, never inside one. With --rehearse they
    run on a copy first (`rehearse`), before `confirm()`; under fab, in a run of its own (`rehearsal_only`)."""
    rehearsing = project.guards.rehearse and not downgrade and (expect_from is None or rehearsal_only)
    if rehearsing:
        rehearsal.check_switches(project.settings.migration_url, project.guards)
    head_revisions = project.heads()
    refusals.check_single_head(head_revisions)
    if expect_head:
        refusals.check_expected_head(head_revisions, expect_head)
    check_resolved(project)
    # Read with the application's user, before any question or password; under fab, the plan the laptop
    # approved (expect_from) was read by the same function a moment ago, and had work to do.
    ahead = read_ahead(project, target, downgrade) if expect_from is None else LookAhead()
    if ahead.there is not None and needs_password(project.settings.migration_url):
        return ahead.there
    checked, drift, conflicts, compatible = ahead.checked, ahead.drift, ahead.conflicts, ahead.compatible
    check_data([str(result) for result in prechecks.failures(checked)])
    if conflicts and not project.guards.allow_drift:
        raise drift_refusal(project, conflicts)
    if compatible is not None and compatible.failures and not project.guards.allow_incompatible:
        raise incompatible_refusal(compatible.failures)
    url = project.migration_url_with_password()
    guards = project.guards
    verb = "downgrade" if downgrade else "upgrade"
    # The lock held by the connection that migrates: one connection fewer a run, and its holder is that one.
    with project.connect(url, create=not downgrade) as connection, project.lock(url, connection):
        with translate_errors(url):
            current = project.check_ready(connection)
            check_unedited(project, connection, current)
        steps = alembic_ops.plan(project.alembic, current, target, downgrade)
        where_now = alembic_ops.label(project.alembic, current_of(current))
        if expect_from is not None and list(current) != list(expect_from):
            approved = alembic_ops.label(project.alembic, current_of(tuple(expect_from)))
            raise DeployError(
                f"{describe(url)} is at {where_now}, no longer at {approved} as in the plan you approved: "
                f"nothing was run; see where it is with `{project.command('status')}`"
            )
        if alembic_ops.target_behind(project.alembic, current, target, steps, downgrade):
            raise behind(project, target, where_now)
        if not steps:
            return Migration(describe(url), 0, where_now)
        if progress is not None:
            progress(f"{verb} {describe(url)} from {where_now}: {len(steps)} revision{'s' * (len(steps) > 1)}")
            for step in steps:
                progress(f"  {step.revision}  {step.doc}")
        upgrading = [] if downgrade else [step.revision for step in steps]
        if upgrading:
            check_risks(project, url, upgrading, progress, checked)
            check_online(online_refusals(project, connection, upgrading))
        for line in [*drift, *conflicts] if progress is not None else ():
            progress(f"warning: drift: {line}")
        with translate_errors(url):
            estimated = estimate(project, connection, upgrading) if upgrading else []
        for line in estimated if progress is not None else ():
            progress(f"estimate: {line}")
        for line in compatibility_lines(compatible) if progress is not None else ():
            progress(line)
        cancellation = cancellation or Cancellation()
        if rehearsing:
            rehearse(project, url, current, steps, target, progress, cancellation, estimated)
            if rehearsal_only:
                return Migration(describe(url), 0, where_now, rehearsed=True)
        if confirm is not None:
            confirm()
        if not guards.ignore_transactions:
            with translate_errors(url):
                timeouts.check_no_open_transactions(connection, guards.open_transactions_after)
        backup = take_backup(project, url, current, progress)
        log = runlog.recorded(project.settings.instance_path, f"db.{verb}", describe(url), where_now, target)
        guard = timeouts.guard_session(connection, guards.lock_wait_timeout, guards.retries, guards.retry_pause)
        measured = costs.Measured(estimated)
        with log as run, cancellation.active(), guard:
            run.timings = measured.records  # what later estimates learn from, as the run log keeps it
            done = run_steps(project, connection, url, steps, target, downgrade, cancellation, backup, measured)
            now = alembic_ops.label(project.alembic, current_of(alembic_ops.current_heads(connection)))
            if done < len(steps):
                run.outcome = f"stopped after {done} of {len(steps)} ({cancellation.reason})"
                raise DeployError(
                    f"stopped ({cancellation.reason}) after {done} of {len(steps)} revisions, none left half "
                    f"done: {describe(url)} is at {now}; run `{project.command(verb)}` again to go on"
                )
            keep_release(project, connection, verb)
    return Migration(describe(url), len(steps), now)


def check_resolved(project: Project) -> None:
    """Refuse to migrate on top of a revision a run left half applied, until a restore or a stamp
    has said what the schema is: a downgrade would undo the revision before it and orphan the
    leftovers, an upgrade would fail on them."""
    database = describe(project.settings.migration_url)
    run = runlog.unresolved(project.settings.instance_path, database)
    if run is None:
        return
    left = run.left or {}
    revision = left.get("revision", "?")
    out = ways_out(project, left.get("finished", revision), left.get("before", "?"), left.get("backup"))
    # The summary was masked when the run log kept it; marked relayed, it is the only part masking looks at.
    raise DeployError(
        own(
            f"{database} has a revision left half applied by {run.command} ({run.user}@{run.host}, {run.started}): "
            f"{relayed(left.get('summary', revision))}; nothing is migrated until that is resolved: {out} "
            f"(any of these resolves it)"
        )
    )


def ways_out(project: Project, finished: str, before: str, backup: str | None) -> str:
    """The ways out of a half-applied revision, as the user runs them here; in development, a reset too."""
    out = diagnosis.ways_out(project.command, finished, before, backup)
    return out if project.guards.production else f"{out}; or start over: `{project.command('reset')}`"


def behind(project: Project, target: str, where_now: str) -> DeployError:
    back = f"{project.command('downgrade')} --to={target}"
    return DeployError(f"{target} is behind {where_now}: to go back, run `{back}`")


def risky(findings: list) -> DeployError:
    return DeployError(
        f"{len(findings)} risky operation{'s' * (len(findings) > 1)} pending: {'; '.join(map(str, findings))}; "
        f"mark each reviewed in its script (reviewed_risks) or pass --allow-risky"
    )


def check_risks(project: Project, url: URL, revisions: list[str], progress, checked=()) -> None:
    """Risky operations in what is about to run: refused in production, shown in development; with them,
    the data prechecks (`checked`) stopped as too slow, and what they could not check, shown."""
    found = lint.lint(project.alembic, revisions, url.get_backend_name()) + prechecks.unreviewed_too_slow(checked)
    if found and project.guards.refuse_risky:
        raise risky(found)
    for finding in found if progress is not None else ():
        progress(f"warning: {finding}")
    for line in prechecks.unchecked(checked) if progress is not None else ():
        progress(f"unchecked: {line}")


def online_refusals(project: Project, connection: Connection, revisions: list[str]) -> list[str]:
    """The pending operations that would block the application for as long as their table takes to copy,
    where no online form can make them and this run's switches do not allow it (the dialect says why), one
    line each; read on `connection`, nothing left open on it."""
    refused = []
    dialect = dialects.dialect_for(connection)
    with translate_errors(connection.engine.url):
        for revision in revisions:
            try:
                operations = lint.operations(project.alembic, revision, connection.dialect.name)
            except lint.Unreadable as exc:
                operations = exc.recorded
            for operation in operations:
                if reason := dialect.online_refusal(connection, operation, project.guards):
                    refused.append(f"{revision}: {lint.name(operation)}: {reason}")
        connection.rollback()
    return refused


def check_online(refused: list[str]) -> None:
    """Refuse what online_refusals() found."""
    if refused:
        many = len(refused) > 1
        raise DeployError(f"{len(refused)} pending operation{'s' * many} cannot run online: {'; '.join(refused)}")


def check_data(failing: list[str]) -> None:
    """Refuse pending operations that would fail on the rows there now (the data prechecks' lines): in
    every settings, since the upgrade would only stop on them, half applied where DDL is not transactional."""
    if failing:
        raise DeployError(
            f"{len(failing)} pending operation{'s' * (len(failing) > 1)} would fail on the rows there now: "
            f"{'; '.join(failing)}"
        )


@dataclass(frozen=True)
class LookAhead:
    """What an upgrade reads with the application's user before it asks anything (read_ahead)."""

    there: Migration | None = None  # the database already at the target: nothing to ask, nothing to do
    checked: list[prechecks.Result] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    compatible: Any = None  # the running release's verdict (compatibility.Verdict), outside development


def read_ahead(project: Project, target: str, downgrade: bool = False) -> LookAhead:
    """Before a migration to `target` asks anything, read on one connection of the application's user (no
    password): whether it is there already; for an upgrade, the data prechecks, and in production the drift,
    the pending operations that change it, and the running release's code against the new schema. Nothing
    when that user cannot connect (the migration user's connection says what is wrong)."""
    url = project.settings.database_url
    production = project.guards.production
    with ExitStack() as stack:
        try:
            connection = stack.enter_context(project.connect(url))
        except DeployError:
            return LookAhead()
        with translate_errors(url):
            current = project.check_ready(connection)
            steps = alembic_ops.plan(project.alembic, current, target, downgrade)
            if alembic_ops.target_behind(project.alembic, current, target, steps, downgrade):
                return LookAhead()
            if not steps:
                where = alembic_ops.label(project.alembic, current_of(current))
                return LookAhead(Migration(describe(project.settings.migration_url), 0, where))
            if downgrade:
                return LookAhead()
            revisions = [step.revision for step in steps]
            checked, drift, conflicts = looked_ahead(project, connection, current, revisions, production)
            release = running_release(project, connection)[0] if production else None
    compatible = compatibility_of(project, release, target, revisions, current) if production else None
    return LookAhead(None, checked, drift, conflicts, compatible)


def looked_ahead(project: Project, connection: Connection, current, revisions: list[str], drifted: bool):
    """The data prechecks of the pending `revisions` on the application's `connection`, and (`drifted`)
    the drift and the pending operations that change a drifted object: (checked, drift, conflicts).
    Each starts with no transaction open on it, as on a connection of its own."""
    connection.rollback()
    checked = prechecks.precheck(connection, project.alembic, revisions, project.guards.precheck_timeout)
    connection.rollback()
    drift, conflicts = drift_of(project, connection, current, revisions) if drifted else ([], [])
    return checked, drift, conflicts


def estimate(project: Project, connection: Connection, revisions: list[str]) -> list[costs.Cost]:
    """What each pending operation on a table there now costs (review.costs), read on `connection`, its
    rates learned from this checkout's run log; nothing left open on it."""
    try:
        return costs.estimate(connection, project.alembic, revisions, project.settings.instance_path)
    finally:
        connection.rollback()


def drift_of(project: Project, connection: Connection, current: tuple[str, ...], revisions: list[str]):
    """The live schema against what the migrations build at `current` (a scratch SQLite, without types),
    and the operations of the pending `revisions` that change a drifted object: (drift, conflicts)."""
    if not current:
        return [], []
    url = project.settings.database_url
    try:
        schema.built_at(project.alembic, current)  # before the lock: it reads nothing live
        # Under the migration lock: a migration in progress (MariaDB's DDL is seen at once) is no drift. Taken
        # by this connection, its reads so far ended, so that alembic_version is read afresh once it is held.
        connection.rollback()
        with project.lock(url, connection):
            if alembic_ops.current_heads(connection) != current:
                return [f"not compared: {describe(url)} moved since it was read"], []
            found, _ = schema.drift(connection, project.alembic, current)
    except DeployError as exc:  # a migration holds the lock, or the history does not build on SQLite
        return [f"not compared: {exc}"], []
    conflicts = []
    dialect_name = connection.dialect.name
    for revision in revisions:
        try:
            operations = lint.operations(project.alembic, revision, dialect_name)
        except lint.Unreadable as exc:
            operations = exc.recorded
        for operation in operations:
            conflicts += [
                f"{lint.name(operation)} ({revision}) changes what was changed by hand: {item.line}"
                for item in found
                if schema.touches(operation, item)
            ]
    return [item.line for item in found], conflicts


def drift_refusal(project: Project, conflicts: list[str]) -> DeployError:
    ways = (
        f"put the schema back as the migrations build it first (`{project.command('drift')}` lists what differs), "
        "or change the revision; or, if the revision is meant to meet it, pass --allow-drift"
    )
    if not project.guards.production:
        ways += f"; or start over: `{project.command('reset')}`"
    many = len(conflicts) > 1
    return DeployError(
        f"{len(conflicts)} pending operation{'s' * many} change{'s' * (not many)} the schema where it was changed "
        f"outside the migrations: {'; '.join(conflicts)}; {ways}"
    )


def keep_release(project: Project, connection: Connection, command: str) -> None:
    """Outside development, this checkout's release recorded as the code the database now runs with."""
    from . import releases

    if not project.guards.production:
        return
    root = alembic_ops.root(project.alembic)
    release = releases.of_checkout(root, project.alembic.get_main_option("flask_app"))
    if release is not None:
        releases.record(connection, release, alembic_ops.current_heads(connection), command)
        connection.commit()


def running_release(project: Project, connection: Connection) -> tuple[str | None, str | None]:
    """The release of the code running against the database, and how status shows it: --running's, or
    the one recorded last."""
    from . import releases

    if project.running:
        return project.running, f"{project.running} (named with --running)"
    found = releases.recorded(connection)
    return (found.release, str(found)) if found is not None else (None, None)


def compatibility_of(project: Project, release: str | None, target: str, revisions: list[str], current=()):
    """The running `release`'s code against the schema the pending `revisions` build on the database's
    `current` revisions (in a scratch SQLite); None when nothing is pending."""
    from . import compatibility

    if not revisions:
        return None
    if release is None:
        count = f"{len(revisions)} pending revision{'s' * (len(revisions) > 1)}"
        why = (
            "the release running is not known (each upgrade outside development records its own; "
            f"--running REF names it): {count} not checked against it"
        )
        return compatibility.Verdict("?", revisions, [], why)
    return compatibility.check(project.alembic, release, revisions, target, project.settings.name, None, current)


def compatibility_lines(verdict) -> list[str]:
    """What an upgrade shows of the running release's verdict: its failures (allowed), then its note."""
    if verdict is None:
        return []
    return [*(f"warning: incompatible: {line}" for line in verdict.failures), verdict.note]


def incompatible_refusal(failures: list[str]) -> DeployError:
    return DeployError(
        f"{'; '.join(failures)}; nothing was run: ship the release that stops using it first; or, in a planned "
        "maintenance window with the app stopped, pass --allow-incompatible"
    )


def take_backup(project: Project, url: URL, current: tuple[str, ...], progress, spare=None) -> backups.Backup | None:
    """A verified backup before a production change, or a loud line saying there is none; retention
    leaves `spare` (a backup about to be restored) alone; a rehearsal's copy is made from one, in any settings."""
    if not (project.guards.backup or project.guards.rehearse):
        if progress is not None and project.guards.production:  # --no-backup said so
            progress(f"warning: --no-backup: no backup of {describe(url)} is taken; db.restore cannot undo this run")
        return None
    shown = console.Progress("backup", "MB") if progress is not None else None
    kept = project.guards.backups_kept
    taken = backups.take(url, project.backup_dir, current_of(current), kept, shown and shown.update, spare)
    if shown is not None:
        shown.end()
        progress(f"backup: {taken.path} ({taken.size} bytes, verified)")
    return taken


def rehearse(
    project: Project, url: URL, current, steps: list, target: str, progress, cancellation, estimated=()
) -> None:
    """The pending `steps` run first on a copy of the database (deploy.rehearsal) as the upgrade runs them,
    guards and all, one at a time and timed; the timings told to `progress`, and kept in the run log as an
    upgrade's are, for later estimates of the `estimated` operations. A revision that fails there, or a
    stop, is raised: nothing ran on the database itself."""
    told = progress or (lambda line: None)
    guards, database = project.guards, describe(url)
    timings: list[rehearsal.Timing] = []
    with rehearsal.copy_of(url, lambda: take_backup(project, url, current, progress), told) as (copy_url, copy):
        told(f"rehearsal: {len(steps)} revision{'s' * (len(steps) > 1)} on {copy_url.database}")
        guard = timeouts.guard_session(copy, guards.lock_wait_timeout, guards.retries, guards.retry_pause)
        measured = costs.Measured(estimated)
        where = alembic_ops.label(project.alembic, current_of(current))
        log = runlog.recorded(project.settings.instance_path, "db.rehearse", describe(copy_url), where, target)
        with log as run, cancellation.active(), guard:
            run.timings = measured.records  # the copy's times teach later estimates, as a real run's do
            for step in steps:
                started = time.monotonic()
                try:
                    done = run_steps(project, copy, copy_url, [step], target, False, cancellation, None, measured)
                except DeployError as exc:
                    raise rehearsal.failed(database, copy_url.database, exc) from None
                if done:
                    label = alembic_ops.label(project.alembic, step.revision)
                    timings.append(rehearsal.Timing(label, time.monotonic() - started))
                if cancellation.requested:  # the last revision too: a stop asked during a rehearsal ends it
                    raise DeployError(
                        f"rehearsal stopped ({cancellation.reason}) after {len(timings)} of {len(steps)} revisions "
                        f"on a copy: nothing was run on {database}"
                    )
    for line in rehearsal.report(database, copy_url.database, timings):
        told(line)


def run_steps(project, connection, url, steps, target, downgrade, cancellation, backup=None, measured=None) -> int:
    """Run the planned revisions one Alembic call each, checking for a stop between them; how many ran.
    `measured` (costs.Measured) is told how long each took."""
    done = 0
    for step in steps:
        if cancellation.requested:
            break
        # A downgrade stops at the revision below the one undone; below a merge, only the final
        # target names where to stop, so the rest runs in one call.
        destination = (step.down_revision or "base") if downgrade else step.revision
        merge = isinstance(destination, tuple)
        trail = diagnosis.Trail()
        # No transaction of ours open: a revision's autocommit_block() (CREATE INDEX CONCURRENTLY) needs that.
        connection.commit()
        try:
            with (
                diagnosis.watching(connection) as trail,
                dialects.dialect_for(connection).online(connection, project.guards),
                costs.timing(measured, step.revision),
            ):
                alembic_ops.migrate(project.alembic, connection, target if merge else destination, downgrade)
            connection.commit()
            keep_checksums(project, connection, steps[done:] if merge else [step], downgrade)
        except backfill.Stopped:  # between two batches: the revision is not recorded, its progress is
            connection.rollback()
            break
        except KeyboardInterrupt:
            raise migration_failed(project, connection, url, None, target, downgrade, backup, trail, step) from None
        except Exception as exc:
            raise migration_failed(project, connection, url, exc, target, downgrade, backup, trail, step) from None
        if merge:
            return len(steps)
        done += 1
    return done


def keep_checksums(project: Project, connection: Connection, steps: list, downgrade: bool) -> None:
    """The revisions just run: their files' checksums kept as they ran, or dropped with the undone ones."""
    for step in steps:
        if downgrade:
            checksums.forget(connection, step.revision)
        else:
            checksums.record(connection, checksums.of(project.alembic, step.revision, connection.dialect.name))
    connection.commit()


def check_unedited(project: Project, connection: Connection, current: tuple[str, ...]) -> None:
    """Nothing migrates over an applied revision whose file changed since it ran."""
    edited = checksums.verify(connection, project.alembic, current, connection.dialect.name).pairs()
    if edited:
        raise unedited_refusal(project, edited)


def unedited_refusal(project: Project, edited: list[list[str]]) -> DeployError:
    ways = f"`{project.command('accept')} {edited[0][0]}` after review, or put the file back as it ran"
    if not project.guards.production:
        ways += f"; or start over: `{project.command('reset')}`"
    return checksums.refusal(edited, ways)


def sql(project: Project, target: str, downgrade: bool = False, expect_head: str | None = None) -> str:
    """The exact SQL an upgrade (or downgrade) to `target` would run from the database's current
    revision, in Alembic's offline mode: nothing is changed, and no password is needed."""
    head_revisions = project.heads()
    refusals.check_single_head(head_revisions)
    if expect_head:
        refusals.check_expected_head(head_revisions, expect_head)
    url = project.settings.database_url
    with project.connect(url, create=False) as connection, translate_errors(url):
        current = project.check_ready(connection)
    steps = alembic_ops.plan(project.alembic, current, target, downgrade)
    if not steps:
        return f"-- {describe(url)} is already at {alembic_ops.label(project.alembic, current_of(current))}"
    start = current_of(current) or "base"
    # Offline ranges need revision ids: the plan resolves relative targets (-1) and heads.
    end = steps[-1].down_revision if downgrade else steps[-1].revision
    if isinstance(end, tuple):
        raise DeployError(f"--sql cannot show a downgrade through the merge {steps[-1].revision}: name a target")
    command_function = command.downgrade if downgrade else command.upgrade
    return alembic_ops.run_captured(command_function, project.alembic, f"{start}:{end or 'base'}", sql=True)


def migration_failed(
    project: Project,
    connection: Connection,
    url: URL,
    exc: Exception | None,
    target: str,
    downgrade: bool,
    backup: backups.Backup | None,
    trail: diagnosis.Trail,
    step,
) -> DeployError:
    """Name the revision that failed (`exc`) or was aborted (None), the one the database is left at,
    what the failed one left behind, as the run followed it, and the ways out."""
    # What the message relays (the driver's words, the script's names) is marked, for masking.
    if exc is None:
        what = "was aborted"
    elif hasattr(exc, "orig"):
        what = f"failed: {explain(exc, url)}"
    elif isinstance(exc, DeployError):
        what = f"failed: {exc.marked if exc.marked and RELAYED[0] in exc.marked else relayed(str(exc))}"
    else:
        what = f"failed: {relayed(' '.join([type(exc).__name__ + ':', *str(exc).splitlines()[:1]]))}"
    transactional = dialects.dialect_for(connection).transactional_ddl
    try:
        if exc is None:  # the connection may be cut off mid-statement: read on a fresh one
            with project.connect(url) as fresh:
                now = alembic_ops.current_heads(fresh)
        else:
            connection.rollback()
            now = alembic_ops.current_heads(connection)
        failed = alembic_ops.plan(project.alembic, now, target, downgrade)[0]
    except Exception:
        now, failed = None, step
    label = relayed(alembic_ops.label(project.alembic, failed.revision))
    if now is None:
        where = f"its revision cannot be read now: `{project.command('status')}` shows where the database is"
    else:
        where = f"the database is at {relayed(alembic_ops.label(project.alembic, current_of(now)))}"
    head = own(f"revision {label} {what}; {where}")
    if transactional:
        return DeployError(
            f"{head}; it was rolled back whole, none of it is in the live schema"
            " (but for what an autocommit_block in it committed on its own)"
        )
    # Without transactional DDL (MariaDB, MySQL, SQLite), a failed revision may have left some of its work.
    planned = None
    if not downgrade:  # the lint reads upgrade() offline: the operations after the failing one are named
        try:
            planned = [
                lint.name(op) for op in lint.operations(project.alembic, failed.revision, url.get_backend_name())
            ]
        except DeployError:
            planned = None
    left = diagnosis.left_by(trail, failed.revision, planned, aborted=exc is None)
    if not left.half_applied and now is not None:
        again = f"run `{project.command('downgrade' if downgrade else 'upgrade')}` again"
        # A statement that gave way to the application is not the revision's fault: only try again.
        way_out = again if isinstance(exc, timeouts.GaveWay) else f"fix it, then {again}"
        return DeployError(f"{head}; {left.summary()}: nothing of it is in the database; {way_out}")
    down = failed.down_revision
    finished = (target if isinstance(down, tuple) else down or "base") if downgrade else failed.revision
    # Where the database was recorded before the failed revision ran: read, or else from the plan.
    before = current_of(now) if now is not None else (failed.revision if downgrade else down)
    record = {
        "revision": failed.revision,
        "summary": left.summary(),
        "finished": finished,
        "before": ", ".join(before) if isinstance(before, tuple) else before or "base",
        "backup": backup.path.name if backup is not None else None,
    }
    out = ways_out(project, finished, record["before"], record["backup"])
    return runlog.HalfApplied(f"{head}; {left.summary()}; {out}", record)


def stamp(project: Project, revision: str) -> str:
    """Record `revision` in alembic_version without running any migration; says where it is now."""
    # Before connecting: a failed stamp would still have created alembic_version.
    alembic_ops.resolve(project.alembic, revision)
    url = project.migration_url_with_password()
    log = runlog.recorded(project.settings.instance_path, "db.stamp", describe(url), "?", revision)
    with project.connect(url, create=True) as connection, translate_errors(url), project.lock(url), log:
        alembic_ops.stamp(project.alembic, connection, revision)
        connection.commit()
        now = alembic_ops.current_heads(connection)
        # What the stamp says the schema is, as its files are now; the revisions below have none.
        keep_checksums(project, connection, [SimpleNamespace(revision=head) for head in now], False)
        keep_release(project, connection, "stamp")
    return f"{describe(url)} is stamped at {alembic_ops.label(project.alembic, current_of(now))}"


def accept(project: Project, revision: str) -> str:
    """Keep an applied revision's file, edited after it ran, as it is now (after review): its checksum
    is recorded anew, as Flyway's `repair` does."""
    with alembic_ops.alembic_errors():
        script = alembic_ops.scripts(project.alembic).get_revision(revision)
    if script is None:
        raise DeployError(f"no revision {revision!r} in the migration scripts")
    url = project.migration_url_with_password()
    with project.connect(url) as connection, translate_errors(url), project.lock(url):
        current = project.check_ready(connection)
        if script.revision not in checksums.applied(project.alembic, current):
            raise DeployError(f"{script.revision} is not applied to {describe(url)}: there is nothing to accept")
        checksums.record(connection, checksums.of(project.alembic, script.revision, connection.dialect.name))
        connection.commit()
    return f"{describe(url)}: {script.revision} ({Path(script.path).name}) is accepted as its file is now"


def restore(
    project: Project, name: str, confirm: bool = False, progress=None, from_database=None, agreed=None
) -> str | None:
    """Make the database exactly as in backup `name` (a file in the backup directory), alembic_version
    included, after a backup of how it is now; `confirm`: have the database's name typed first.
    A backup of another database only with `from_database`, its name; `agreed()` (fab's go) comes
    after the file's checks: None when it says no."""
    path = project.backup_dir / name
    # A damaged file, or one of another database, is refused before any question.
    source = backups.check_source(backups.verify(path), project.settings.migration_url, from_database)
    if agreed is not None and not agreed():
        return None
    if confirm and source is not None:
        confirm_restore_from(project.settings.migration_url.database or "", source)
    elif confirm:
        console.confirm_database(project.settings.migration_url.database or "")
    url = project.migration_url_with_password()
    with project.lock(url):
        with project.connect(url) as connection, translate_errors(url):
            current = alembic_ops.current_heads(connection)
        taken = take_backup(project, url, current, progress, spare=path)
        with runlog.recorded(project.settings.instance_path, "db.restore", describe(url), "?", name):
            # Should the load fail, the database is put back from the backup just taken.
            shown = console.Progress("restore", "MB") if progress is not None else None
            restored = backups.restore(url, path, shown and shown.update, before=taken)
            if shown is not None:
                shown.end()
        with project.connect(url) as connection, translate_errors(url):
            now = alembic_ops.label(project.alembic, current_of(alembic_ops.current_heads(connection)))
    return f"{describe(url)} is restored from {restored.path.name}: it is at {now}"


def list_backups(project: Project) -> list[backups.Backup]:
    """The backups of this database in the backup directory, newest first."""
    return backups.list_backups(project.backup_dir, project.settings.migration_url.database)


def lint_pending(project: Project, target: str = "head") -> list[lint.Finding]:
    """Risky operations in the revisions an upgrade to `target` would run (reviewed ones included)."""
    url = project.settings.database_url
    with project.connect(url) as connection, translate_errors(url):
        current = project.check_ready(connection)
    steps = alembic_ops.plan(project.alembic, current, target)
    return lint.lint(project.alembic, [step.revision for step in steps], url.get_backend_name(), include_reviewed=True)


def current(project: Project) -> list[str]:
    """The database's revision(s), each labelled, read with the application's own user."""
    url = project.settings.database_url
    with project.connect(url) as connection, translate_errors(url):
        found = alembic_ops.current_heads(connection)
        tables = application_tables(connection)
    if not found:
        return ["not stamped" + (f": {len(tables)} tables but no alembic_version" if tables else ": empty database")]
    head_revisions = project.heads()
    return [
        f"{alembic_ops.label(project.alembic, revision)}{' (head)' if revision in head_revisions else ''}"
        for revision in found
    ]


def history(project: Project) -> str:
    """The migrations, newest first, as `alembic history` lists them."""
    return alembic_ops.run_captured(command.history, project.alembic)


def heads(project: Project) -> str:
    """The migrations' head revisions (more than one means: merge)."""
    return alembic_ops.run_captured(command.heads, project.alembic, verbose=False)


def status(
    project: Project,
    target: str = "head",
    downgrade: bool = False,
    room: bool = False,
    prechecked: bool = False,
    drifted: bool = False,
) -> Status:
    """Head, current revision and the revisions an upgrade (or downgrade) to `target` would run;
    `room`: also how many upgrades its database server has connections for now; `prechecked`: also the
    data prechecks of the upgrade; `drifted` (with `prechecked`): also the live schema's drift from its
    migrations, and the pending operations that change a drifted object. One connection reads it all.

    Reads with the application's own user: no password."""
    config = project.alembic
    head_revisions = project.heads()
    url = project.settings.database_url
    spare = None
    pending = None
    findings = []
    checked: list[prechecks.Result] = []
    estimated: list[costs.Cost] = []
    drift: list[str] = []
    conflicts: list[str] = []
    not_online: list[str] = []
    revisions: list[str] = []
    with project.connect(url) as connection, translate_errors(url):
        found = alembic_ops.current_heads(connection)
        tables = application_tables(connection)
        verdict = checksums.verify(connection, config, found, connection.dialect.name)
        release, running = running_release(project, connection)
        if room:
            spare = dialects.dialect_for(connection).spare_connections(connection)
        if len(head_revisions) == 1 and (found or not tables):
            steps = alembic_ops.plan(config, found, target, downgrade)
            pending = [[step.revision, step.doc] for step in steps]
            revisions = [] if downgrade else [step.revision for step in steps]
            findings = [str(finding) for finding in lint.lint(config, revisions, url.get_backend_name())]
            if prechecked and revisions:
                checked, drift, conflicts = looked_ahead(project, connection, found, revisions, drifted)
                estimated = estimate(project, connection, revisions)
                not_online = online_refusals(project, connection, revisions)
                findings += [str(result) for result in prechecks.unreviewed_too_slow(checked)]
    # In an upgrade's plan outside development: the code still running against the schema it would build.
    compatible = compatibility_of(project, release, target, revisions, found) if drifted and prechecked else None
    migration_url = project.settings.migration_url
    return Status(
        database=describe(url),
        database_name=url.database or "",
        migration_user=describe(migration_url),
        needs_password=needs_password(migration_url),
        heads=list(head_revisions),
        current=list(found),
        pending=pending,
        target_behind=pending is not None and alembic_ops.target_behind(config, found, target, pending, downgrade),
        unstamped_tables=[] if found else tables,
        base=alembic_ops.base(config),
        last_run=last_run(project.settings.instance_path, describe(migration_url)),
        risks=findings,
        edited=verdict.pairs(),
        without_checksum=len(verdict.without),
        data_failures=[str(result) for result in prechecks.failures(checked)],
        not_checked=[str(result) for result in prechecks.unchecked(checked)],
        drift=drift,
        drift_conflicts=conflicts,
        estimates=[str(cost) for cost in estimated],
        release=running,
        incompatible=compatible.failures if compatible else [],
        compatibility=compatible.note if compatible else None,
        not_online=not_online,
        room=None if spare is None else max(1, spare // CONNECTIONS_PER_UPGRADE),
    )


def plan(project: Project, target: str = "head", expect_head: str | None = None, downgrade: bool = False) -> Status:
    """A migration's plan, as fab shows it before asking anything: the status, with the refusal
    `migrate` would give (in its words), and the room its database server has for more upgrades."""
    upgrading = not downgrade
    state = status(
        project,
        target,
        downgrade,
        room=upgrading,
        prechecked=upgrading,
        drifted=upgrading and project.guards.production,
    )
    try:
        check_plan(project, state, target, expect_head)
    except DeployError as exc:
        return replace(state, refusal=str(exc))
    return state


def check_plan(project: Project, state: Status, target: str, expect_head: str | None) -> None:
    """What `migrate` refuses, judged from the status, in the order it would meet them."""
    rehearsal.check_switches(project.settings.migration_url, project.guards)
    check_resolved(project)
    stamped = bool(state.current)
    where = describe(project.settings.database_url)
    refusals.check_stamped(where, state.unstamped_tables, stamped, state.base, project.command("stamp"))
    refusals.check_single_head(tuple(state.heads))
    if expect_head:
        refusals.check_expected_head(tuple(state.heads), expect_head)
    if state.edited:
        raise unedited_refusal(project, state.edited)
    if state.target_behind:
        raise behind(project, target, alembic_ops.label(project.alembic, current_of(tuple(state.current))))
    check_data(state.data_failures)
    if state.drift_conflicts and not project.guards.allow_drift:
        raise drift_refusal(project, state.drift_conflicts)
    if state.incompatible and not project.guards.allow_incompatible:
        raise incompatible_refusal(state.incompatible)
    if state.risks and project.guards.refuse_risky:
        raise risky(state.risks)
    check_online(state.not_online)


def last_run(instance_path: Path, database: str) -> str | None:
    """The last run on `database`, or the one that left a revision half applied while unresolved."""
    pending = runlog.unresolved(instance_path, database)
    if pending is not None:
        return f"{pending}; unresolved: upgrades and downgrades refuse until a restore or a stamp"
    last = runlog.last_run(instance_path, database)
    return str(last) if last else None


def current_of(heads: tuple[str, ...]) -> str | None:
    return heads[0] if heads else None


def warm_up(project: Project) -> None:
    """Before a server process forks a run per target: what the first target's plan and upgrade read, which
    its siblings share as a rule, loaded here once for every run to inherit: the schema the migrations make
    at its revision (drift), the pending revisions' operations and checksums, the reflection's own set-up."""
    url = project.settings.database_url
    with project.connect(url) as connection:
        current = alembic_ops.current_heads(connection)
        if not current:
            return
        # MySQL's reflection compiles some fifty regular expressions on its first table; compiled here,
        # they are in every child's cache.
        inspect(connection).get_columns(database.VERSION_TABLE)
        release, _ = running_release(project, connection)
    schema.built_at(project.alembic, current)
    steps = alembic_ops.plan(project.alembic, current, "head")
    for step in steps:
        checksums.of(project.alembic, step.revision, connection.dialect.name)
    # The running release's code against the new schema: a worktree and a process, once per server process.
    compatibility_of(project, release, "head", [step.revision for step in steps], current)
