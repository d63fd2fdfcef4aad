"""The branch workflow: checks for CI on a scratch database, merging heads, the live schema, a revision
against another branch's schema, and which revision an unstamped database matches.

Scratch databases are temporary SQLite files (or a database the user names): the development
database is never opened here, except by `live_schema` and `detect`, which only read it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from sqlalchemy.engine import URL, Connection, make_url

from . import alembic_ops, commands, database, safety
from .commands import Project, current_of
from .credentials import describe
from .database import VERSION_TABLE, application_tables, translate_errors
from .errors import DeployError
from .settings import SETTINGS_VARIABLE


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' * (count != 1)}"


# --- schemas, as SQLAlchemy's Inspector reflects them


@dataclass(frozen=True)
class Table:
    """One reflected table; columns keep the database's order, comparisons ignore it."""

    name: str
    columns: tuple[tuple[str, str, bool, str | None], ...]  # name, type, nullable, server default
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, tuple[str, ...], bool], ...]  # name, columns, unique
    unique: tuple[tuple[str, tuple[str, ...]], ...]
    foreign_keys: tuple[tuple[str, tuple[str, ...], str, tuple[str, ...], str], ...]

    def aspects(self) -> dict[str, object]:
        """What two schemas compare: a batch migration may rebuild a table with its columns reordered."""
        return {
            "columns": sorted(self.columns),
            "primary key": self.primary_key,
            "indexes": self.indexes,
            "unique constraints": self.unique,
            "foreign keys": self.foreign_keys,
        }

    def differs_in(self, other: Table) -> list[str]:
        mine, theirs = self.aspects(), other.aspects()
        return [aspect for aspect in mine if mine[aspect] != theirs[aspect]]

    def __str__(self) -> str:
        lines = [f"table {self.name}"]
        for name, type_, nullable, default in self.columns:
            key = " PRIMARY KEY" if (name,) == self.primary_key else ""
            null = "NULL" if nullable else "NOT NULL"
            lines.append(f"  {name} {type_} {null}{key}{f' DEFAULT {default}' if default is not None else ''}")
        if len(self.primary_key) > 1:
            lines.append(f"  primary key ({', '.join(self.primary_key)})")
        for name, columns, unique in self.indexes:
            lines.append(f"  {'unique ' * unique}index {name} ({', '.join(columns)})")
        for name, columns in self.unique:
            lines.append(f"  unique {name} ({', '.join(columns)})")
        for name, columns, referred, referred_columns, options in self.foreign_keys:
            target = f"{referred}({', '.join(referred_columns)})"
            lines.append(f"  foreign key {name} ({', '.join(columns)}) -> {target}{options}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Schema:
    database: str
    revision: tuple[str, ...]
    tables: tuple[Table, ...]

    def table(self, name: str) -> Table | None:
        return next((table for table in self.tables if table.name == name), None)

    def differences(self, other: Schema) -> list[str]:
        """How this schema differs from `other`, table by table; empty when they are the same."""
        names = sorted({table.name for table in self.tables} | {table.name for table in other.tables})
        found = []
        for name in names:
            mine, theirs = self.table(name), other.table(name)
            if mine is None or theirs is None:
                found.append(f"table {name} {'missing' if mine is None else 'left over'}")
            elif aspects := mine.differs_in(theirs):
                found.append(f"{name}: {', '.join(aspects)} differ")
        return found

    def __str__(self) -> str:
        where = ", ".join(self.revision) if self.revision else "no alembic_version"
        head = f"{self.database} ({where}): {plural(len(self.tables), 'table')}"
        return "\n".join([head, *map(str, self.tables)])


FK_OPTIONS = {"ondelete": "ON DELETE", "onupdate": "ON UPDATE"}


def reflect(connection: Connection, database_name: str) -> Schema:
    """Every table but alembic_version, read with SQLAlchemy's Inspector."""
    from sqlalchemy import inspect

    inspector = inspect(connection)
    tables = []
    for name in application_tables(connection):
        columns = tuple(
            (column["name"], str(column["type"]), bool(column["nullable"]), column.get("default"))
            for column in inspector.get_columns(name)
        )
        # A unique constraint is also an index (PostgreSQL), or an index also reads as a unique
        # constraint (MariaDB): each is listed once.
        indexes = sorted(
            (str(index["name"]), tuple(map(str, index["column_names"])), bool(index["unique"]))
            for index in inspector.get_indexes(name)
            if not index.get("duplicates_constraint")
        )
        unique = sorted(
            (str(constraint["name"]), tuple(constraint["column_names"]))
            for constraint in inspector.get_unique_constraints(name)
            if not constraint.get("duplicates_index")
        )
        foreign_keys = sorted(
            (
                str(key["name"]),
                tuple(key["constrained_columns"]),
                key["referred_table"],
                tuple(key["referred_columns"]),
                "".join(
                    f" {FK_OPTIONS.get(option, option)} {value}" for option, value in sorted(key["options"].items())
                ),
            )
            for key in inspector.get_foreign_keys(name)
        )
        primary_key = tuple(inspector.get_pk_constraint(name).get("constrained_columns") or ())
        tables.append(Table(name, columns, primary_key, tuple(indexes), tuple(unique), tuple(foreign_keys)))
    revision = alembic_ops.current_heads(connection)
    return Schema(database_name, revision, tuple(tables))


def reflected_metadata(connection: Connection):
    """The live schema as a MetaData, for Alembic to compare a later state against."""
    from sqlalchemy import MetaData

    found = MetaData()
    found.reflect(connection)
    if VERSION_TABLE in found.tables:
        found.remove(found.tables[VERSION_TABLE])
    connection.rollback()
    return found


# --- Alembic's comparison


def operations(connection: Connection, models, compare_type: bool = True) -> list:
    """What autogenerate would write to bring the database to `models`: Alembic's own comparison
    (compare_metadata's), kept as operation objects so that they render as a revision would."""
    from alembic.autogenerate import produce_migrations
    from alembic.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"compare_type": compare_type})
    found = produce_migrations(context, models).upgrade_ops.ops
    connection.rollback()
    return found


def render(operation) -> str:
    """One operation as the Python a revision would hold (`op.add_column(...)`)."""
    from alembic.autogenerate import render_python_code
    from alembic.operations.ops import UpgradeOps

    with quiet():  # rendering sets up a MigrationContext, which logs its dialect
        code = render_python_code(UpgradeOps(ops=[operation]))
    lines = [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return textwrap.dedent("\n".join(lines))


def dropped_tables(found: list) -> set[str]:
    from alembic.operations.ops import DropTableOp

    return {operation.table_name for operation in found if isinstance(operation, DropTableOp)}


def count(found: list) -> int:
    """How many changes, each column change counted (a table's are grouped in one operation)."""
    return sum(len(operation.as_diffs()) if hasattr(operation, "as_diffs") else 1 for operation in found)


# --- scratch databases


def scratch_url(text: str) -> URL:
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(text)
    except (ArgumentError, ValueError):
        raise DeployError("--url is not a database URL (dialect+driver://user:password@host/database)") from None


@contextmanager
def scratch_database(url: URL | None = None) -> Iterator[Connection]:
    """A connection to an empty scratch database: a temporary SQLite file, or `url`, which must be
    empty and is emptied again afterwards. Not the app's engine options: they are for its database."""
    with tempfile.TemporaryDirectory(prefix="db-scratch-") as folder:
        url = url or make_url(f"sqlite:///{Path(folder) / 'scratch.db'}")
        with database.connect(url, create=True) as connection, translate_errors(url):
            tables = application_tables(connection)
            if tables or alembic_ops.current_heads(connection):
                raise DeployError(
                    f"the scratch database {describe(url)} is not empty ({', '.join(tables) or VERSION_TABLE}): "
                    "name an empty one, the checks drop what they build"
                )
            try:
                yield connection
            finally:
                empty(connection)


def empty(connection: Connection) -> None:
    from sqlalchemy import MetaData

    connection.rollback()
    found = MetaData()
    found.reflect(connection)
    found.drop_all(connection)
    connection.commit()


@contextmanager
def quiet() -> Iterator[None]:
    # env.py reapplies alembic.ini's logging on every run: Alembic's per-revision lines, three per
    # revision in a round trip, would bury the report.
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.INFO))
    try:
        yield
    finally:
        logging.disable(previous)


def migrate_to(config, connection: Connection, target: str, downgrade: bool = False) -> None:
    alembic_ops.migrate(config, connection, target, downgrade)
    connection.commit()


def failure(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def scratch_project(project: Project, url: URL) -> Project:
    """The project, its settings pointing at a scratch database (without the app's engine options)."""
    config = {
        **project.settings.config,
        "SQLALCHEMY_DATABASE_URI": url,
        "SQLALCHEMY_ALEMBIC_URI": None,
        "SQLALCHEMY_ENGINE_OPTIONS": {},
    }
    return dataclasses.replace(project, settings=dataclasses.replace(project.settings, config=config))


# --- db.check


@dataclass
class Problem:
    check: str  # heads, upgrade, drift, models, downgrade
    message: str
    details: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        indented = ("\n".join("    " + line for line in detail.splitlines()) for detail in self.details)
        return "\n".join([f"FAILED {self.check}: {self.message}", *indented])


@dataclass
class CheckReport:
    database: str
    heads: list[str]
    revisions: int
    round_tripped: int = 0
    skipped: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, **dataclasses.asdict(self)})

    def __str__(self) -> str:
        lines = [str(problem) for problem in self.problems]
        checked = f"{plural(self.revisions, 'revision')}, {plural(len(self.heads), 'head')}"
        lines.append(
            f"checked {checked} on {self.database}: {self.round_tripped} round trips (upgrade, downgrade, upgrade)"
        )
        lines += [f"not round-tripped: {reason}" for reason in self.skipped]
        lines.append("ok" if self.ok else f"{plural(len(self.problems), 'problem')} found")
        return "\n".join(lines)


def check(project: Project, url: URL | None = None) -> CheckReport:
    """Single head; each downgrade restores the schema before its revision; the models match what
    the migrations build. All on a scratch database, never the development one."""
    config = project.alembic
    heads = project.heads()
    directory = alembic_ops.scripts(config)
    report = CheckReport("", list(heads), len(list(directory.walk_revisions())))
    if len(heads) > 1:
        report.problems.append(
            Problem(
                "heads",
                f"the migrations have {len(heads)} heads ({', '.join(heads)}): run `{project.command('merge')}`, "
                "review and commit the merge revision",
            )
        )
    models = alembic_ops.metadata(config)
    with quiet(), scratch_database(url) as connection:
        report.database = "a scratch SQLite database" if url is None else describe(url)
        at_head = False
        if len(heads) == 1:
            at_head = round_trip(config, connection, report)
        if not at_head:
            empty(connection)
            try:
                migrate_to(config, connection, "heads")
            except Exception as exc:
                connection.rollback()
                report.problems.append(Problem("upgrade", f"upgrading an empty database fails: {failure(exc)}"))
                return report
        found = operations(connection, models)
    missing = dropped_tables(found)
    if missing:
        report.problems.append(
            Problem(
                "models",
                f"tables the migrations create are missing from the models' MetaData ({', '.join(sorted(missing))}): "
                "a model module may not be imported (import it where flask_app's db is), or a model was "
                "deleted without a revision",
            )
        )
    drift = [operation for operation in found if getattr(operation, "table_name", None) not in missing]
    if drift:
        report.problems.append(
            Problem(
                "drift",
                f"the models differ from what the migrations build ({plural(count(drift), 'change')}): "
                f'run `{project.command("revision")} -m "..."`, or undo the model change',
                [render(operation) for operation in drift],
            )
        )
    return report


def round_trip(config, connection: Connection, report: CheckReport) -> bool:
    """Upgrade from empty one revision at a time, checking that each downgrade restores the schema
    before it and that the upgrade then runs again. Whether it got to head."""
    for script in alembic_ops.plan(config, (), "heads"):
        label = alembic_ops.label(config, script.revision)
        before, before_metadata = reflect(connection, ""), reflected_metadata(connection)
        try:
            migrate_to(config, connection, script.revision)
        except Exception as exc:
            connection.rollback()
            report.problems.append(Problem("upgrade", f"upgrading to {label} fails: {failure(exc)}"))
            return False
        if isinstance(script.down_revision, tuple):
            report.skipped.append(f"{label}: a merge")
            continue
        # `REV@-1`: one step down REV's own branch; its down_revision would undo a sibling branch too.
        one_down = f"{script.revision}@-1"
        if len(alembic_ops.plan(config, alembic_ops.current_heads(connection), one_down, True)) != 1:
            report.skipped.append(f"{label}: its downgrade also undoes another branch")
            continue
        after = reflect(connection, "")
        try:
            migrate_to(config, connection, one_down, downgrade=True)
            left = reflect(connection, "").differences(before)
            if left:
                restoring = [render(operation) for operation in operations(connection, before_metadata)]
                return broken(
                    report, f"the downgrade of {label} does not restore the schema before it", left, restoring
                )
            migrate_to(config, connection, script.revision)
        except Exception as exc:
            connection.rollback()
            report.problems.append(
                Problem("downgrade", f"downgrading {label}, then upgrading again fails: {failure(exc)}")
            )
            return False
        changed = reflect(connection, "").differences(after)
        if changed:
            return broken(report, f"upgrading {label} again after its downgrade builds another schema", changed)
        report.round_tripped += 1
    return True


def broken(report: CheckReport, message: str, differences: list[str], restoring: list[str] = ()) -> bool:
    """A failed round trip, reported; False: the scratch database is no longer where the plan says."""
    said = f"{message} ({'; '.join(differences)})" + ("; these operations would restore it:" if restoring else "")
    report.problems.append(Problem("downgrade", said, list(restoring)))
    return False


# --- db.merge


@dataclass(frozen=True)
class Merged:
    heads: tuple[str, ...]
    path: Path | None

    def __str__(self) -> str:
        if self.path is None:
            return (
                f"{plural(len(self.heads), 'head')} ({', '.join(self.heads) or 'no revisions yet'}): nothing to merge"
            )
        # The path last, alone on its line, as db.revision prints it.
        return f"merged {', '.join(self.heads)}:\n{self.path}"


def merge(project: Project, message: str | None = None) -> Merged:
    """One merge revision over every head (alembic merge heads); nothing with a single head."""
    heads = project.heads()
    if len(heads) < 2:
        return Merged(heads, None)
    message = message or f"merge heads {', '.join(heads[:-1])} and {heads[-1]}"
    written = alembic_ops.run(command.merge, project.alembic, None, "heads", message=message)
    return Merged(heads, Path(written.path))


# --- db.schema


@dataclass(frozen=True)
class LiveSchema:
    schema: Schema
    changes: list[str] | None = None  # with --diff: what would bring the database to the models

    def __str__(self) -> str:
        lines = [str(self.schema)]
        if self.changes is not None:
            if self.changes:
                lines.append(f"the models differ from the database ({plural(len(self.changes), 'operation')}):")
                lines += ["\n".join("  " + line for line in change.splitlines()) for change in self.changes]
            else:
                lines.append("the models match the database")
        return "\n".join(lines)


def live_schema(project: Project, diff: bool = False) -> LiveSchema:
    """The database's tables as the Inspector reads them with the application's URL (no password);
    `diff`: and the operations autogenerate would write against it."""
    models = alembic_ops.metadata(project.alembic) if diff else None
    url = project.settings.database_url
    with project.connect(url) as connection, translate_errors(url):
        schema = reflect(connection, describe(url))
        changes = [render(operation) for operation in operations(connection, models)] if diff else None
    return LiveSchema(schema, changes)


# --- db.revision --base


def git(cwd: Path, *args: str, failure: str | None = None) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise DeployError("git is not installed: --base needs it") from None
    if done.returncode:
        said = done.stderr.strip().splitlines()
        raise DeployError(failure or f"git {args[0]} failed: {said[-1] if said else done.returncode}")
    return done.stdout.strip()


@contextmanager
def worktree(top: Path, commit: str, path: Path) -> Iterator[Path]:
    """A temporary checkout of `commit` beside the user's, removed afterwards whatever happens."""
    git(top, "worktree", "add", "--detach", "--quiet", str(path), commit)
    try:
        yield path
    finally:
        # --force: the settings file written there is untracked. Prune whatever remove could not.
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=top, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=top, capture_output=True)


def build_base_schema(base_root: Path, url: URL, settings_name: str, branch: str) -> None:
    """The base branch's own `invoke db.reset`, in a subprocess (its models and ours must never
    share a process), onto the scratch database instead of its development one."""
    instance = base_root / "instance"
    instance.mkdir(exist_ok=True)
    (instance / f"{settings_name}.cfg").write_text(
        f"SQLALCHEMY_DATABASE_URI = {url.render_as_string(hide_password=False)!r}\n"
        "SQLALCHEMY_ALEMBIC_URI = None\nSQLALCHEMY_ENGINE_OPTIONS = {}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "db.reset"],
        cwd=base_root,
        env={**os.environ, SETTINGS_VARIABLE: settings_name},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        said = lines[-1].removeprefix("error: ") if lines else f"exit status {done.returncode}"
        raise DeployError(f"cannot build {branch}'s schema: {said}")


def revision_against(project: Project, message: str, base: str) -> Path | None:
    """Autogenerate a revision with this checkout's models against the schema `base`'s models build,
    stamped at `base`'s head, in a scratch SQLite: neither the working tree nor the development
    database is touched. The script written, or None when there is no change."""
    safety.check_single_head(project.heads())
    root = alembic_ops.root(project.alembic)
    top = Path(
        git(root, "rev-parse", "--show-toplevel", failure=f"{root} is not in a git repository: --base needs one")
    )
    commit = git(
        root,
        "rev-parse",
        "--verify",
        "--quiet",
        f"{base}^{{commit}}",
        failure=f"unknown branch {base!r}: `git branch --list` shows the branches",
    )
    settings_name = project.settings.name
    with tempfile.TemporaryDirectory(prefix="db-revision-") as folder:
        url = make_url(f"sqlite:///{Path(folder) / 'base.db'}")
        with worktree(top.resolve(), commit, Path(folder) / "base") as tree:
            build_base_schema(tree / root.relative_to(top.resolve()), url, settings_name, base)
        with database.connect(url) as connection, translate_errors(url):
            base_head = current_of(alembic_ops.current_heads(connection))
            try:
                alembic_ops.resolve(project.alembic, base_head)
            except DeployError:
                raise DeployError(
                    f"{base}'s migrations end at {base_head}, which this checkout does not have: "
                    f"merge {base} into this branch first"
                ) from None
            # This branch's own revisions since `base`, so the new one follows them.
            migrate_to(project.alembic, connection, "head")
        return commands.revision(scratch_project(project, url), message)


# --- db.detect

# The last line of `db.detect --report` on a single match, which `fab ENV db.detect` reads.
MATCH_LINE = "match: "


@dataclass(frozen=True)
class Detection:
    database: str
    matches: list[str]
    closest: list[tuple[str, int]]  # (revision, how many changes from it), nearest first

    @property
    def match(self) -> str | None:
        return self.matches[0] if len(self.matches) == 1 else None

    def __str__(self) -> str:
        if self.match:
            return f"{self.database} matches revision {self.match}"
        if self.matches:
            same = ", ".join(self.matches)
            return f"{self.database} matches {len(self.matches)} revisions with one schema ({same}): stamp one by hand"
        nearest = ", ".join(f"{revision} ({plural(changes, 'change')})" for revision, changes in self.closest[:3])
        return f"{self.database} matches no revision; closest: {nearest or 'none'}"

    def report(self) -> str:
        """What `db.detect --report` prints: this, then `match: REV` alone on the last line on a single match."""
        return str(self) + (f"\n{MATCH_LINE}{self.match}" if self.match else "")


def read_report(text: str) -> tuple[str, str | None]:
    """A server's `db.detect --report`: the report to show, and the revision on its `match:` line, if any."""
    lines = text.rstrip().splitlines()
    if lines and lines[-1].startswith(MATCH_LINE):
        return "\n".join(lines[:-1]), lines[-1].removeprefix(MATCH_LINE).strip() or None
    return "\n".join(lines), None


def detect(project: Project) -> Detection:
    """Which revision's schema an unstamped database has: each revision built in a scratch SQLite,
    compared with Alembic (tables, columns, indexes, constraints; types differ by database kind)."""
    config = project.alembic
    alembic_ops.single_head(config)
    url = project.settings.database_url
    with project.connect(url) as live, translate_errors(url):
        if alembic_ops.current_heads(live):
            raise DeployError(
                f"{describe(url)} is stamped already: db.detect is for a database without alembic_version"
            )
        if not application_tables(live):
            raise DeployError(f"{describe(url)} has no tables: nothing to detect")
        distances = []
        with quiet(), scratch_database() as scratch:
            for script in alembic_ops.plan(config, (), "head"):
                migrate_to(config, scratch, script.revision)
                built = reflected_metadata(scratch)
                distances.append((script.revision, count(operations(live, built, compare_type=False))))
    matches = [revision for revision, changes in distances if changes == 0]
    closest = sorted(reversed(distances), key=lambda pair: pair[1])
    return Detection(describe(url), matches, closest)
