"""One function per user command, shared by `invoke db.*` and the server side of `fab ... db.*`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData
from sqlalchemy.engine import URL, Connection

from . import alembic_ops, safety
from .credentials import describe, needs_password, with_password
from .database import application_tables, connect, explain, has_version_table, translate_errors
from .errors import DeployError
from .settings import Settings


@dataclass
class Project:
    """alembic.ini and the Flask settings in force."""

    alembic: Config
    settings: Settings

    @classmethod
    def open(cls, ini_path: Path, settings_name: str | None = None) -> Project:
        config = alembic_ops.load_config(ini_path)
        return cls(config, alembic_ops.settings(config, settings_name))

    def heads(self) -> tuple[str, ...]:
        return alembic_ops.heads(self.alembic)

    def single_head(self) -> str:
        heads = self.heads()
        safety.check_single_head(heads)
        if not heads:
            raise DeployError("the migrations have no revisions yet: create one with `invoke db.revision`")
        return heads[0]

    def migration_url(self) -> URL:
        """The migration URL, with the password asked for when the settings leave it empty."""
        return with_password(self.settings.migration_url)


@dataclass
class Status:
    """Where the database stands against the checkout's migrations."""

    database: str
    database_name: str
    migration_user: str
    needs_password: bool
    heads: list[str]
    current: list[str]
    target: str
    pending: list[list[str]]
    unstamped_tables: list[str]
    base: str | None


def reset(project: Project, allowed_settings: list[str], force: bool = False) -> None:
    """Drop every table, create the models' tables, stamp head: no history replayed."""
    safety.check_resettable(project.settings.name, allowed_settings, project.settings.migration_url, force)
    head = project.single_head()
    models = alembic_ops.metadata(project.alembic)
    url = project.migration_url()
    with connect(url, create=True) as connection, translate_errors(url):
        existing = MetaData()
        existing.reflect(connection)
        # The reflected tables include stale ones (old models, alembic_version): drop them all.
        existing.drop_all(connection)
        models.create_all(connection)
        connection.commit()
        alembic_ops.run(command.stamp, project.alembic, connection, "head")
        connection.commit()
    print(f"reset {describe(url)}: {len(models.tables)} tables, stamped at {alembic_ops.label(project.alembic, head)}")


def revision(project: Project, message: str, empty: bool = False) -> None:
    """Autogenerate a revision from the models against the database; --empty writes a blank one."""
    if empty:
        script = alembic_ops.run(command.revision, project.alembic, None, message=message)
        print(script.path)
        return
    head = project.single_head()
    url = project.migration_url()
    with connect(url) as connection, translate_errors(url):
        check_stamped(project, connection)
        current = alembic_ops.current_heads(connection)
        if current != (head,):
            raise DeployError(
                f"the database is at {', '.join(current) or 'nothing'}, not at the head {head}: "
                "run `invoke db.upgrade` (or `invoke db.reset`) first"
            )
        models = alembic_ops.metadata(project.alembic)
        scripts = alembic_ops.run(
            command.revision, project.alembic, connection, message=message, autogenerate=True, models=models
        )
    if not scripts:
        print("no schema changes detected: no revision written (use --empty for a hand-written one)")
        return
    print(scripts.path)


def upgrade(project: Project, target: str = "head", expect_head: str | None = None) -> None:
    """Upgrade to `target`, refusing first what could go wrong."""
    migrate(project, target, expect_head, downgrade=False)


def downgrade(project: Project, target: str = "-1") -> None:
    """Downgrade to `target` (default: one revision back)."""
    migrate(project, target, None, downgrade=True)


def migrate(project: Project, target: str, expect_head: str | None, downgrade: bool) -> None:
    head_revisions = project.heads()
    safety.check_single_head(head_revisions)
    if expect_head:
        safety.check_expected_head(head_revisions, expect_head)
    url = project.migration_url()
    with connect(url, create=not downgrade) as connection:
        with translate_errors(url):
            check_stamped(project, connection)
            current = alembic_ops.current_heads(connection)
        steps = alembic_ops.plan(project.alembic, current, target, downgrade)
        where_now = alembic_ops.label(project.alembic, current_of(current))
        if not steps:
            print(f"{describe(url)} is already at {where_now}: nothing to do")
            return
        verb = "downgrade" if downgrade else "upgrade"
        count = f"{len(steps)} revision{'s' if len(steps) > 1 else ''}"
        print(f"{verb} {describe(url)} from {where_now}: {count}")
        try:
            alembic_ops.run(getattr(command, verb), project.alembic, connection, target)
            connection.commit()
        except DeployError:
            raise
        except Exception as exc:
            raise migration_failed(project, connection, url, exc, target, downgrade) from None
        now = alembic_ops.current_heads(connection)
    print(f"{describe(url)} is now at {alembic_ops.label(project.alembic, current_of(now))}")


def migration_failed(
    project: Project, connection: Connection, url: URL, exc: Exception, target: str, downgrade: bool
) -> DeployError:
    """Name the revision that failed and the one the database is left at."""
    if hasattr(exc, "orig"):
        reason = explain(exc, url)
    else:
        reason = " ".join([type(exc).__name__ + ":", *str(exc).splitlines()[:1]])
    try:
        connection.rollback()
        now = alembic_ops.current_heads(connection)
        failed = alembic_ops.plan(project.alembic, now, target, downgrade)[0].revision
    except Exception:
        return DeployError(f"a migration failed ({reason}); run `invoke db.current` to see where the database is")
    return DeployError(
        f"revision {alembic_ops.label(project.alembic, failed)} failed: {reason}; "
        f"the database is at {alembic_ops.label(project.alembic, current_of(now))}"
    )


def stamp(project: Project, revision: str) -> None:
    """Record `revision` in alembic_version without running any migration."""
    url = project.migration_url()
    with connect(url, create=True) as connection, translate_errors(url):
        alembic_ops.run(command.stamp, project.alembic, connection, revision)
        connection.commit()
        now = alembic_ops.current_heads(connection)
    print(f"{describe(url)} is stamped at {alembic_ops.label(project.alembic, current_of(now))}")


def current(project: Project) -> None:
    """The database's revision, read with the application's own user."""
    url = project.settings.database_url
    with connect(url) as connection, translate_errors(url):
        found = alembic_ops.current_heads(connection)
        tables = application_tables(connection)
    head_revisions = project.heads()
    for revision in found:
        mark = " (head)" if revision in head_revisions else ""
        print(f"{alembic_ops.label(project.alembic, revision)}{mark}")
    if not found:
        print("not stamped" + (f": {len(tables)} tables but no alembic_version" if tables else ": empty database"))


def history(project: Project) -> None:
    """The migrations, newest first."""
    alembic_ops.run(command.history, project.alembic, None)


def heads(project: Project) -> None:
    """The migrations' head revisions (more than one means: merge)."""
    alembic_ops.run(command.heads, project.alembic, None, verbose=False)


def status(project: Project, target: str = "head", as_json: bool = False, downgrade: bool = False) -> Status:
    """Head, current revision and the revisions an upgrade (or downgrade) to `target` would run.

    Reads with the application's own user: no password."""
    config = project.alembic
    head_revisions = project.heads()
    url = project.settings.database_url
    with connect(url) as connection, translate_errors(url):
        found = alembic_ops.current_heads(connection)
        tables = application_tables(connection)
        stamped = has_version_table(connection)
    pending = []
    if len(head_revisions) == 1 and (stamped or not tables):
        pending = [[s.revision, s.doc] for s in alembic_ops.plan(config, found, target, downgrade)]
    migration_url = project.settings.migration_url
    result = Status(
        database=describe(url),
        database_name=url.database or "",
        migration_user=describe(migration_url),
        needs_password=needs_password(migration_url),
        heads=list(head_revisions),
        current=list(found),
        target=target,
        pending=pending,
        unstamped_tables=[] if stamped else tables,
        base=alembic_ops.base(config),
    )
    print(json.dumps(asdict(result)) if as_json else format_status(result))
    return result


def format_status(status: Status) -> str:
    lines = [
        f"database:   {status.database}",
        f"migrations: head {', '.join(status.heads) or 'none'}",
        f"current:    {', '.join(status.current) or 'not stamped'}",
    ]
    if status.unstamped_tables:
        lines.append(f"warning:    {len(status.unstamped_tables)} tables but no alembic_version: stamp it first")
    if len(status.heads) > 1:
        lines.append("warning:    several heads: merge them first")
    lines.append(f"pending:    {len(status.pending)}" + (" (up to date)" if not status.pending else ""))
    lines += [f"  {revision}  {message}" for revision, message in status.pending]
    return "\n".join(lines)


def check_stamped(project: Project, connection: Connection) -> None:
    tables = application_tables(connection)
    stamped = has_version_table(connection)
    where = describe(connection.engine.url)
    safety.check_stamped(where, tables, stamped, alembic_ops.base(project.alembic), "invoke db.stamp")


def current_of(heads: tuple[str, ...]) -> str | None:
    return heads[0] if heads else None
