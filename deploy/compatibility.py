"""Two releases live at once: while an upgrade runs, and until every app server restarts, the code of
the release before keeps serving on the new schema. This checks that code against that schema by
running it: the schema the pending revisions build, in a scratch database; the release's own models,
from a temporary git worktree of its commit, loaded in a process of their own (release_probe.py); every
mapper worked as that code would (select, insert, update, delete). What fails is told in terms of the
pending revision that causes it and what to do instead.

A release that cannot be loaded (no git, a commit the repository lacks, an import error) is said in one
line, and its revisions counted as unchecked, not as incompatible."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from alembic.operations import ops
from sqlalchemy.engine import URL

from . import alembic_ops, releases, schema
from .errors import DeployError
from .review import lint
from .schema import plural, quiet
from .settings import SETTINGS_VARIABLE

PROBE = Path(__file__).with_name("release_probe.py")
# The probe runs as a script of no package, from the release's folder (its first sys.path entry), so
# that the release's modules are the ones imported, never the suite's.
RUN_PROBE = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
DROP_LATER = "drop it one release after the code stops using it"
RENAME_LATER = "add the new name beside it, write both, and drop the old one a release after the code stops using it"
NOT_NULL_LATER = "give it a server default, or make it NOT NULL one release after the code sets it"


@dataclass(frozen=True)
class Verdict:
    """The running `release` (as people name it) against the schema `revisions` build: what it fails on,
    one line each; `unchecked`: why it could not be checked."""

    release: str
    revisions: list[str]
    failures: list[str] = field(default_factory=list)
    unchecked: str | None = None

    @property
    def compatible(self) -> bool:
        return not self.failures and self.unchecked is None

    @property
    def note(self) -> str:
        """The line a plan shows beside its revisions."""
        if self.unchecked:
            return f"unchecked: {self.unchecked}"
        if self.failures:
            return f"incompatible with the running release {self.release}"
        return f"compatible with the running release {self.release}"

    def __str__(self) -> str:
        lines = [f"incompatible: {line}" for line in self.failures]
        checked = plural(len(self.revisions), "revision")
        if self.unchecked:
            lines.append(f"unchecked: {self.unchecked}")
        elif self.failures:
            lines.append(f"{checked} incompatible with release {self.release}: {plural(len(self.failures), 'problem')}")
        else:
            lines.append(f"{checked} compatible with release {self.release}")
        return "\n".join(lines)


def unchecked(release: str, revisions: list[str], why: str) -> Verdict:
    count = plural(len(revisions), "pending revision")
    why = f"release {release} cannot be checked ({why}): {count} not checked against it"
    return Verdict(release, revisions, [], why)


def pending_since(config, release: str) -> list[str]:
    """This checkout's revisions that `release` (a commit) does not have: their files are not in its tree."""
    root = alembic_ops.root(config)
    top, commit = releases.resolve(root, release)
    in_release = set(releases.git(top, "ls-tree", "-r", "--name-only", commit).splitlines())
    with alembic_ops.alembic_errors():
        scripts = list(alembic_ops.scripts(config).walk_revisions())
    return [
        script.revision
        for script in reversed(scripts)
        if Path(script.path).resolve().relative_to(top).as_posix() not in in_release
    ]


# The verdicts of this process, by (release, revisions, target, scratch): a fleet's server process
# plans many databases at one revision, against one running release.
_checked: dict[tuple, Verdict] = {}


def check(
    config,
    release: str,
    revisions: list[str],
    target: str,
    settings_name: str,
    url: URL | None = None,
    current: tuple[str, ...] | None = None,
) -> Verdict:
    """The code of `release` (a git ref) against the schema the migrations build at `target` (built in a
    scratch database: `url`, an empty one, or a temporary SQLite file), the failures told in terms of
    the pending `revisions`. What fails on the schema before them (at `current`, by default where the
    history stands without them) is not theirs to answer for, and is left out."""
    key = (release, _as_they_are(config, revisions), target, str(url), settings_name, current)
    if key not in _checked:
        _checked[key] = _check(config, release, revisions, target, settings_name, url, current)
    return _checked[key]


def _as_they_are(config, revisions: list[str]) -> tuple[str, ...]:
    """The pending revisions' files, by where they are and what they hold now: a verdict holds for those."""
    directory = alembic_ops.scripts(config)
    with alembic_ops.alembic_errors():
        paths = [Path(directory.get_revision(revision).path) for revision in revisions]
    return tuple(f"{path.resolve()}:{hashlib.sha256(path.read_bytes()).hexdigest()}" for path in paths)


def below(config, revisions: list[str]) -> tuple[str, ...]:
    """The heads of the history without `revisions`: where it stands before them."""
    pending = set(revisions)
    with alembic_ops.alembic_errors():
        kept = [script for script in alembic_ops.scripts(config).walk_revisions() if script.revision not in pending]
    downs = {down for script in kept for down in _tuple(script.down_revision)}
    return tuple(script.revision for script in kept if script.revision not in downs)


def _tuple(down) -> tuple[str, ...]:
    return tuple(down) if isinstance(down, (tuple, list)) else ((down,) if down else ())


def _check(
    config,
    release: str,
    revisions: list[str],
    target: str,
    settings_name: str,
    url: URL | None,
    current: tuple[str, ...] | None,
) -> Verdict:
    named = releases.short(release)
    if not revisions:
        return Verdict(named, [])
    root = alembic_ops.root(config)
    try:
        top, commit = releases.resolve(root, release)
    except DeployError as exc:
        return unchecked(named, revisions, str(exc))
    named = releases.short(commit) if commit.startswith(release) else f"{release} ({releases.short(commit)})"
    start = below(config, revisions) if current is None else current
    try:
        before = schema.built_at(config, start, url) if start else sa.MetaData()
    except DeployError as exc:
        return unchecked(named, revisions, str(exc))
    with tempfile.TemporaryDirectory(prefix="db-compatible-") as folder:
        with quiet(), schema.scratch_database(url) as scratch:
            try:
                schema.migrate_to(config, scratch, target)
            except Exception as exc:
                scratch.rollback()
                why = f"the migrations do not build in {schema.scratch_name(url)}: {schema.failure(exc)}"
                return unchecked(named, revisions, why)
            built = schema.snapshot(scratch)
            dialect_name = scratch.dialect.name
            scratch_url = scratch.engine.url
            with releases.worktree(top, commit, Path(folder) / "release") as tree:
                found = probe(tree / root.relative_to(top), scratch_url, settings_name)
    if "error" in found:
        return unchecked(named, revisions, found["error"])
    with quiet():  # reading the revisions' operations offline logs Alembic's context
        failures = told(config, named, found["failures"], built, before, revisions, dialect_name)
    return Verdict(named, revisions, failures)


def probe(release_root: Path, url: URL, settings_name: str) -> dict:
    """release_probe.py's report, run from the release's folder; {"error": ...} when it cannot load."""
    if not (release_root / "alembic.ini").is_file():
        return {"error": f"it has no {release_root.name}/alembic.ini"}
    # Its app may want a database URL to start: a harmless one (the probe uses only `url`, given on stdin).
    instance = release_root / "instance"
    instance.mkdir(exist_ok=True)
    (instance / f"{settings_name}.cfg").write_text(
        "SQLALCHEMY_DATABASE_URI = 'sqlite://'\nSQLALCHEMY_ALEMBIC_URI = None\nSQLALCHEMY_ENGINE_OPTIONS = {}\n"
    )
    asked = json.dumps({"url": url.render_as_string(hide_password=False), "settings": settings_name})
    done = subprocess.run(
        [sys.executable, "-c", RUN_PROBE, str(PROBE)],
        cwd=release_root,
        input=asked,
        capture_output=True,
        text=True,
        env={**os.environ, SETTINGS_VARIABLE: settings_name},
        timeout=600,
    )
    lines = done.stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1]) if lines else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        said = [line for line in done.stderr.splitlines() if line.strip()]
        return {"error": f"its process failed: {said[-1] if said else f'exit status {done.returncode}'}"}
    if not found.get("loaded"):
        return {"error": f"its models did not load: {found.get('error')}"}
    return found


# --- the failures, told in terms of the revisions that cause them


def operations(config, revisions: list[str], dialect_name: str) -> list[tuple[str, ops.MigrateOperation]]:
    found = []
    for revision in revisions:
        try:
            recorded = lint.operations(config, revision, dialect_name)
        except lint.Unreadable as exc:
            recorded = exc.recorded
        found += [(revision, operation) for operation in recorded]
    return found


def removing(pending, table: str, column: str | None) -> tuple[str, str, str] | None:
    """The pending revision that takes `table`.`column` (None: the table) away: (revision, verb, advice)."""
    for revision, operation in pending:
        if getattr(operation, "table_name", None) != table:
            continue
        if isinstance(operation, ops.DropTableOp):
            return revision, "drops", DROP_LATER
        if isinstance(operation, ops.RenameTableOp):
            return revision, "renames", RENAME_LATER
        if column is None:
            continue
        if isinstance(operation, ops.DropColumnOp) and operation.column_name == column:
            return revision, "drops", DROP_LATER
        if isinstance(operation, ops.AlterColumnOp) and operation.column_name == column and operation.modify_name:
            return revision, "renames", RENAME_LATER
    return None


def requiring(pending, table: str, column: str) -> str | None:
    """The pending revision that makes `table`.`column` required without a server default."""
    for revision, operation in pending:
        if getattr(operation, "table_name", None) != table:
            continue
        if isinstance(operation, ops.AddColumnOp) and operation.column.name == column:
            if not operation.column.nullable and operation.column.server_default is None:
                return revision
        if isinstance(operation, ops.AlterColumnOp) and operation.column_name == column:
            if operation.modify_nullable is False or operation.modify_server_default is None:
                return revision
    return None


def told(
    config, release: str, failures: list[dict], built, before: sa.MetaData, revisions: list[str], dialect_name: str
) -> list[str]:
    """The probe's failures as lines a developer acts on: the column, the revision, what to do; not what
    fails on the schema `before` the pending revisions too."""
    pending = operations(config, revisions, dialect_name)

    def label(revision: str) -> str:
        return f"revision {alembic_ops.label(config, revision)}"

    lines: list[str] = []
    unreadable = {failure["table"] for failure in failures if failure["step"] == "select"}
    for failure in failures:
        table, step, error = failure["table"], failure["step"], failure["error"]
        if step == "select":
            if built.table(table) is None:
                if table not in before.tables:
                    continue  # it failed before these revisions too
                cause = removing(pending, table, None)
                lines.append(
                    f"release {release} still maps table {table}, which "
                    + (f"{label(cause[0])} {cause[1]}: {cause[2]}" if cause else "the new schema does not have")
                )
                continue
            for column in failure["columns"] or [None]:
                if column and not had(before, table, column):
                    continue  # missing before these revisions too
                cause = removing(pending, table, column) if column else None
                what = f"{table}.{column}" if column else table
                if cause:
                    lines.append(f"release {release} still maps {what}, which {label(cause[0])} {cause[1]}: {cause[2]}")
                else:
                    lines.append(f"release {release} cannot select {what} from the new schema: {error}")
        elif table in unreadable:
            continue  # the column it still maps, told once
        elif step == "insert":
            missing = without(built, table, failure["sets"])
            if missing and all(required(before, table, column) for column in missing):
                continue  # required before these revisions too
            for column in missing:
                if required(before, table, column):
                    continue
                cause = requiring(pending, table, column)
                why = f"which {label(cause)} makes NOT NULL without a server default" if cause else "which is NOT NULL"
                lines.append(f"release {release} inserts into {table} without {column}, {why}: {NOT_NULL_LATER}")
            if not missing:
                lines.append(f"release {release} cannot insert into {table}: {error}")
        elif step == "update":
            lines.append(f"release {release} cannot update {table} ({', '.join(failure['columns'])}): {error}")
        elif step == "delete":
            lines.append(f"release {release} cannot delete from {table}: {error}")
    # A parent row that could not be inserted ("parent") fails its own table's check too: told there.
    return list(dict.fromkeys(lines))


def had(before: sa.MetaData, table: str, column: str) -> bool:
    return table in before.tables and column in before.tables[table].c


def required(before: sa.MetaData, table: str, column: str) -> bool:
    """Whether `table`.`column` was NOT NULL without a server default before the pending revisions."""
    if not had(before, table, column):
        return False
    found = before.tables[table].c[column]
    return not found.nullable and found.server_default is None


def without(built, table: str, sets: list[str]) -> list[str]:
    """The columns of `table` in the new schema that an insert naming only `sets` cannot leave out."""
    found = built.table(table)
    if found is None:
        return []
    reflected = built.metadata.tables.get(table)
    generated = getattr(getattr(reflected, "autoincrement_column", None), "name", None)
    return [
        name
        for name, _, nullable, default in found.columns
        if not nullable and default is None and name not in sets and name != generated
    ]
