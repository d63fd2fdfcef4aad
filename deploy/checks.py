"""The checks on migrations and the live schema: `check` (single head, each revision's round trip,
the models against what the migrations build), `live_schema` (db.schema), `detect` (which revision an
unstamped database matches), `drift` (the live schema against what its migrations build).

Scratch databases are temporary SQLite files (or a database the user names): the development
database is never opened here, except by `live_schema` and `detect`, which only read it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from sqlalchemy.engine import URL, Connection

from . import alembic_ops, compatibility, schema
from .commands import Project
from .credentials import describe
from .database import application_tables, translate_errors
from .errors import DeployError
from .schema import (  # noqa: F401 (scratch_url: db.check's --url, and db.drift's)
    Snapshot,
    compare,
    count,
    dropped_tables,
    empty,
    failure,
    migrate_to,
    plural,
    quiet,
    render,
    scratch_database,
    scratch_url,
    snapshot,
)

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
    # With --compatible-with: what a release still running says of the new revisions (compatibility.Verdict).
    compatibility: str | None = None

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
        if self.compatibility and self.ok:
            lines.append(self.compatibility)
        lines.append("ok" if self.ok else f"{plural(len(self.problems), 'problem')} found")
        return "\n".join(lines)


def check(project: Project, url: URL | None = None, compatible_with: str | None = None) -> CheckReport:
    """Single head; each downgrade restores the schema before its revision; the models match what
    the migrations build; `compatible_with`: the code of that release (a git ref) still works on the
    schema of the revisions it lacks. All on a scratch database, never the development one."""
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
        found = compare(connection, models)
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
    if compatible_with and len(heads) == 1:
        compatible(project, compatible_with, url, report)
    return report


def compatible(project: Project, release: str, url: URL | None, report: CheckReport) -> None:
    """The code of `release` against the schema of the revisions it lacks, built in a scratch database
    (`url`, or a temporary SQLite file): as a production upgrade checks the release still running."""
    config = project.alembic
    revisions = compatibility.pending_since(config, release)
    verdict = compatibility.check(config, release, revisions, "heads", project.settings.name, url)
    if verdict.unchecked:
        report.problems.append(Problem("compatible", verdict.unchecked))
    elif verdict.failures:
        what = f"{plural(len(revisions), 'revision')} since release {verdict.release} would break it while both run"
        report.problems.append(Problem("compatible", what, verdict.failures))
    report.compatibility = str(verdict)


def round_trip(config, connection: Connection, report: CheckReport) -> bool:
    """Upgrade from empty one revision at a time, checking that each downgrade restores the schema
    before it and that the upgrade then runs again. Whether it got to head."""
    for script in alembic_ops.plan(config, (), "heads"):
        label = alembic_ops.label(config, script.revision)
        before = snapshot(connection)
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
        after = snapshot(connection)
        try:
            migrate_to(config, connection, one_down, downgrade=True)
            left = snapshot(connection).differences(before)
            if left:
                restoring = [render(operation) for operation in compare(connection, before.metadata)]
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
        changed = snapshot(connection).differences(after)
        if changed:
            return broken(report, f"upgrading {label} again after its downgrade builds another schema", changed)
        report.round_tripped += 1
    return True


def broken(report: CheckReport, message: str, differences: list[str], restoring: list[str] = ()) -> bool:
    """A failed round trip, reported; False: the scratch database is no longer where the plan says."""
    said = f"{message} ({'; '.join(differences)})" + ("; these operations would restore it:" if restoring else "")
    report.problems.append(Problem("downgrade", said, list(restoring)))
    return False


# --- db.schema


@dataclass(frozen=True)
class LiveSchema:
    snapshot: Snapshot
    changes: list[str] | None = None  # with --diff: what would bring the database to the models

    def __str__(self) -> str:
        lines = [str(self.snapshot)]
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
        found = snapshot(connection, describe(url))
        changes = [render(operation) for operation in compare(connection, models)] if diff else None
    return LiveSchema(found, changes)


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
                built = snapshot(scratch).metadata
                distances.append((script.revision, count(compare(live, built, compare_type=False))))
    matches = [revision for revision, changes in distances if changes == 0]
    closest = sorted(reversed(distances), key=lambda pair: pair[1])
    return Detection(describe(url), matches, closest)


# --- db.drift


@dataclass(frozen=True)
class DriftReport:
    """What was changed in a database outside its migrations: its schema against the one they build at
    its revision, in a scratch database (`scratch`); `typed`: column types compared too."""

    database: str
    revision: list[str]
    scratch: str
    typed: bool
    drift: list[str]

    @property
    def ok(self) -> bool:
        return not self.drift

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, **dataclasses.asdict(self)})

    @property
    def compared(self) -> str:
        return f"against {self.scratch}" + ("" if self.typed else ", compared without types")

    def __str__(self) -> str:
        where = ", ".join(self.revision)
        lines = [f"{self.database} at {where}, {self.compared}:"]
        lines += [f"drift: {line}" for line in self.drift]
        if self.drift:
            lines.append(f"{plural(len(self.drift), 'difference')} from what the migrations build")
        else:
            lines.append("no drift: the schema is what the migrations build")
        return "\n".join(lines)


def drift(project: Project, url: URL | None = None) -> DriftReport:
    """The database's schema, read with the application's user (no password), against the one its
    migrations build at its revision in a scratch database: a temporary SQLite file (compared without
    types), or `url`, an empty database of the same kind."""
    live_url = project.settings.database_url
    with project.connect(live_url) as live, translate_errors(live_url):
        current = project.check_ready(live)
        if not current:
            raise DeployError(
                f"{describe(live_url)} is not stamped: there is no revision to compare with "
                f"(`{project.command('detect')}` finds the one it matches)"
            )
        found, typed = schema.drift(live, project.alembic, current, url)
    return DriftReport(
        describe(live_url), list(current), schema.scratch_name(url), typed, [item.line for item in found]
    )
