"""Write stall: how long the application's writes wait while a migration changes a big table, for plain
`alembic upgrade` and for the suite's `invoke db.upgrade`, on MariaDB and PostgreSQL.

Each kind of server gets one checkout of the example app and two databases as in production (an app user,
a migration user), one for each tool, both filled by a first revision with an `orders` table (estimates'
FILL: about 100 bytes a row) and a `customers` table to refer to. Then one revision for each kind of
change runs on each database in turn, while a separate process (benchmarks/stall_load.py) writes one row
to `orders` every 5 ms as the application's user, timing each write. The writes that overlap the
upgrade's run give its maximum and 99th-percentile latency; the upgrade's wall time is its total.

Plain Alembic runs `python -m alembic -c plain.ini upgrade REV` (Alembic's generic env.py, the URL in the
ini: benchmarks/project.py); the suite runs `python -m invoke db.upgrade --yes --no-backup --to REV` with
production settings and the migration password on standard input. Both read the same revision files but
one: the backfill, which plain Alembic writes as one UPDATE and the suite as `deploy.backfill.backfill`.

Target: the suite's maximum write stall at most LIMIT seconds for every change."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

from . import project as projects
from ._tests import PASSWORD, Checkout
from .estimates import FILL, SizedMariaDB, SizedPostgreSQL
from .measure import progress

ROWS = 1_000_000
LIMIT = 1.0  # seconds: the suite's maximum write stall, for every change
SETTLE = 1.0  # seconds of load before and after each upgrade, outside its window


@dataclass(frozen=True)
class Change:
    """One kind of change, one revision: the same text for both tools, but a backfill's (plain_body)."""

    label: str
    revision: str
    body: str  # upgrade()'s body
    plain_body: str | None = None  # plain Alembic's, where it differs
    # What a reviewer marks reviewed in the script (the suite's lint asks; plain Alembic ignores it).
    reviewed: dict | None = None


INDEX = Change("add an index", "stall_index", "op.create_index('ix_orders_customer', 'orders', ['customer_id'])")
COLUMN = Change(
    "add a NOT NULL column with a default",
    "stall_column",
    "op.add_column('orders', sa.Column('state', sa.Integer(), nullable=False, server_default='0'))",
)
BACKFILL = Change(
    "backfill every row",
    "stall_backfill",
    "from deploy.backfill import backfill\n\n    backfill('orders', 'state = MOD(customer_id, 7)')",
    "op.execute('UPDATE orders SET state = MOD(customer_id, 7)')",
)
TYPE = Change(
    "change a column's type",
    "stall_type",
    "op.alter_column('orders', 'total', existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=True)",
    reviewed={"alter_column orders.total type": "INTEGER to BIGINT keeps every value"},
)
FOREIGN_KEY = Change(
    "add a foreign key",
    "stall_fk",
    "op.create_foreign_key('fk_orders_customer', 'orders', 'customers', ['customer_id'], ['id'])",
    reviewed={"create_foreign_key orders.fk_orders_customer": "every customer_id is a customer's"},
)
# The order differs by kind so that each change meets a table either tool can take it on: on MariaDB the
# type change goes before the foreign key (pt-online-schema-change does not copy a table whose own
# foreign keys it would rename), on PostgreSQL after it (the suite refuses a rewrite, and the
# revisions after a refused one could not run).
CHANGES = {
    "mariadb": [INDEX, COLUMN, BACKFILL, TYPE, FOREIGN_KEY],
    "postgresql": [INDEX, COLUMN, BACKFILL, FOREIGN_KEY, TYPE],
}
FILL_REVISION = "stall_fill"
REVISION = '''"""{label}"""
from alembic import op
import sqlalchemy as sa

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None
reviewed_risks = {reviewed!r}


def upgrade():
    {body}


def downgrade():
    pass
'''


@dataclass
class Run:
    """One tool's upgrade of one change, and the application's writes while it ran."""

    kind: str  # mariadb | postgresql
    change: str
    tool: str  # alembic | suite
    rows: int
    status: str  # ran | refused | failed
    total_s: float
    max_s: float | None  # the longest write overlapping the run
    p99_s: float | None
    writes: int  # writes overlapping the run
    errors: int  # writes that failed
    reason: str = ""  # a refusal's or failure's error line
    note: str = ""  # the suite's lines on how it ran the change
    failed_writes: list = field(default_factory=list)  # what the failed writes said, once each
    output: str = ""  # what the upgrade printed (its end)
    # (seconds from the run's start, latency) of every write, from SETTLE before the run to SETTLE after
    samples: list = field(default_factory=list, repr=False)

    @property
    def met(self) -> bool | None:
        if self.tool != "suite" or self.status != "ran":
            return None
        return self.max_s is not None and self.max_s <= LIMIT


@dataclass
class Side:
    """One tool's database and the command that upgrades it."""

    tool: str
    database: object  # tests/helpers.py's Database or PgDatabase
    argv: list[str]
    stdin: str | None
    env: dict[str, str]


def _servers(ctx) -> dict:
    """A MariaDB and a PostgreSQL of this group's own, sized as the estimates group's, stopped at the end."""
    found = {}
    for kind, server in (
        ("mariadb", SizedMariaDB(ctx.scratch / "stall-mariadb")),
        ("postgresql", SizedPostgreSQL(ctx.scratch / "stall-postgresql")),
    ):
        ctx.started.append(server)
        progress(f"stall: starting a throwaway {server.name} sized for the table (tests/servers.py)")
        server.start()
        found[kind] = server
    return found


def _databases(kind: str, server):
    import helpers  # tests/helpers.py, on the path once ._tests is imported

    make = helpers.make_database if kind == "mariadb" else helpers.make_pg_database
    return make(server), make(server)


def _fill(kind: str, rows: int) -> tuple[str, dict]:
    """The fill revision's body, estimates' FILL but its statistics (no transaction may VACUUM), and the
    raw SQL marked reviewed, as its author would."""
    from alembic.operations import ops

    from deploy.review.lint import name

    statements = [s.format(rows=rows).replace("%%", "%") for s in FILL[kind] if not s.startswith("VACUUM")]
    reviewed = {name(ops.ExecuteSQLOp(s)): "the benchmark's own table" for s in statements}
    return "\n    ".join(f"op.execute({s!r})" for s in statements), reviewed


def _write_revision(directory: Path, revision: str, down: str, label: str, body: str, reviewed: dict) -> None:
    text = REVISION.format(label=label, revision=revision, down=down, body=body, reviewed=reviewed)
    (directory / f"{revision}.py").write_text(text)


def _checkout(ctx, kind: str, plain_db, ours_db, rows: int) -> Checkout:
    """The example's checkout for one kind: production settings pointing at `ours_db`, a plain Alembic
    set-up (plain.ini) pointing at `plain_db` with its own copy of the revisions (plain_versions/)."""
    checkout = Checkout(ctx.scratch / f"stall-{kind}-app")
    checkout.use_production(ours_db)
    where = f"127.0.0.1:{plain_db.server.port}/{plain_db.name}"
    plain_url = f"{plain_db.driver}://{plain_db.migration_user}:{quote(PASSWORD, safe='')}@{where}"
    projects.add_baselines(projects.Project(checkout.path, "example", 4, 3, kind, plain_url))
    plain_versions = checkout.path / "plain_versions"
    shutil.copytree(checkout.versions, plain_versions, ignore=shutil.ignore_patterns("__pycache__"))
    ini = configparser.RawConfigParser()
    ini.optionxform = str
    ini.read(checkout.path / "plain.ini")
    ini["alembic"]["version_locations"] = "%(here)s/plain_versions"
    with (checkout.path / "plain.ini").open("w") as file:
        ini.write(file)

    down = checkout.head()
    for directory in (checkout.versions, plain_versions):
        _write_revision(directory, FILL_REVISION, down, f"orders, {rows} rows", *_fill(kind, rows))
    down = FILL_REVISION
    for change in CHANGES[kind]:
        reviewed = change.reviewed or {}
        _write_revision(checkout.versions, change.revision, down, change.label, change.body, reviewed)
        _write_revision(plain_versions, change.revision, down, change.label, change.plain_body or change.body, reviewed)
        down = change.revision
    projects.compile_tree(checkout.path)
    return checkout


def _sides(checkout: Checkout, plain_db, ours_db) -> dict[str, Side]:
    python = projects.PYTHON
    return {
        "alembic": Side("alembic", plain_db, [python, "-m", "alembic", "-c", "plain.ini", "upgrade"], None,
                        projects.env()),
        "suite": Side("suite", ours_db, [python, "-m", "invoke", "db.upgrade", "--yes", "--no-backup", "--to"],
                      PASSWORD + "\n", projects.env(FLASK_CONFIG="production")),
    }  # fmt: skip


def _upgrade(checkout: Checkout, side: Side, revision: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*side.argv, revision],
        cwd=checkout.path,
        env=side.env,
        input=side.stdin,
        stdin=None if side.stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=3600,
    )


def _error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines[-1:] or ["(no output)"])[0]


def _analyze(kind: str, database) -> None:
    if kind == "mariadb":
        database.query("ANALYZE TABLE customers, orders")
    else:
        for table in ("customers", "orders"):
            database.server.execute(f"VACUUM ANALYZE {table}", database=database.name)


class Load:
    """The application's writes (benchmarks/stall_load.py), in a process of its own."""

    def __init__(self, kind: str, database, rows: int, out: Path):
        from helpers import APP_PASSWORD  # tests/helpers.py, on the path once ._tests is imported

        self.out = out
        self.process = subprocess.Popen(
            [projects.PYTHON, "-m", "benchmarks.stall_load"],
            cwd=Path(__file__).resolve().parent.parent,
            env=projects.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        settings = {
            "kind": kind,
            "host": "127.0.0.1",
            "port": database.server.port,
            "user": database.app_user,
            "password": APP_PASSWORD,
            "database": database.name,
            "table": "orders",
            "rows": rows,
            "out": str(out),
            "seconds": 3600,
        }
        self.process.stdin.write(json.dumps(settings) + "\n")
        self.process.stdin.close()
        if self.process.stdout.readline().strip() != "ready":
            self.process.wait(timeout=30)
            raise RuntimeError(f"stall: the load did not start: {self.process.stderr.read()}")

    def stop(self) -> list[tuple[float, float, str]]:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        samples = []
        for line in self.out.read_text().splitlines():
            started, latency, what = line.split(" ", 2)
            samples.append((float(started), float(latency), what))
        return samples


def measure_run(kind: str, change: str, checkout: Checkout, side: Side, revision: str, rows: int, out: Path) -> Run:
    load = Load(kind, side.database, rows, out)
    try:
        time.sleep(SETTLE)
        began = time.monotonic()
        done = _upgrade(checkout, side, revision)
        ended = time.monotonic()
        time.sleep(SETTLE)
    finally:
        samples = load.stop()
    during = [(s, latency, what) for s, latency, what in samples if s < ended and s + latency > began]
    latencies = sorted(latency for _, latency, _ in during)
    errors = sum(1 for *_, what in during if what.startswith("error"))
    p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98] if len(latencies) >= 2 else None
    if done.returncode == 0:
        status, reason = "ran", ""
    else:
        reason = _error_line(done)
        status = "refused" if "--allow-rewrite" in reason or "cannot run online" in reason else "failed"
    return Run(
        kind,
        change,
        side.tool,
        rows,
        status,
        round(ended - began, 3),
        round(latencies[-1], 4) if latencies else None,
        None if p99 is None else round(p99, 4),
        len(during),
        errors,
        reason,
        _how(done) if side.tool == "suite" else "",
        sorted({what for *_, what in during if what.startswith("error")}),
        (done.stdout + done.stderr)[-4000:],
        [(round(s - began, 4), round(latency, 4)) for s, latency, _ in samples],
    )


def form(run: Run) -> str:
    """How the suite ran the change, from its plan's estimate line: "COPY, pt-online-schema-change"."""
    if "backfill orders: done" in run.note:
        return "batched backfill"
    found = re.search(r"estimate: [^(]*\((.*)\)", run.note)
    if not found:
        return ""
    parts = found.group(1).split(", ")
    for index, part in enumerate(parts):
        if re.fullmatch(r"[\d.,]+[kM]? rows", part):
            return ", ".join(parts[:index])
    return found.group(1)


def _how(done: subprocess.CompletedProcess) -> str:
    """What the suite said of how it ran the change: its lines about online forms, copies and backfills."""
    keys = ("estimate:", "online", "backfill orders: done", "copy", "rewrite")
    said = (done.stdout + done.stderr).splitlines()
    lines = [line.strip() for line in said if any(key in line for key in keys) and "INFO" not in line]
    return " | ".join(dict.fromkeys(lines))[:600]


def measure_kind(ctx, kind: str, server, rows: int) -> list[Run]:
    plain_db, ours_db = _databases(kind, server)
    checkout = _checkout(ctx, kind, plain_db, ours_db, rows)
    sides = _sides(checkout, plain_db, ours_db)
    for side in sides.values():
        started = time.perf_counter()
        done = _upgrade(checkout, side, FILL_REVISION)
        if done.returncode != 0:
            raise RuntimeError(f"stall {kind}: the fill revision failed for {side.tool}: {done.stdout}{done.stderr}")
        _analyze(kind, side.database)
        progress(f"stall {kind}: {side.tool}'s orders filled ({rows:,} rows) in {time.perf_counter() - started:.1f}s")
    found = []
    for change in CHANGES[kind]:
        label = change.label
        for side in sides.values():
            run = measure_run(kind, label, checkout, side, change.revision, rows, ctx.scratch / f"load-{kind}.txt")
            shown = "—" if run.max_s is None else f"{run.max_s:.3f}s"
            progress(
                f"stall {kind}: {label}, {side.tool}: {run.status} in {run.total_s:.1f}s, longest write {shown}"
                + (f": {run.reason}" if run.reason else "")
            )
            found.append(run)
    return found


def table(found: list[Run]) -> str:
    rows = found[0].rows if found else 0
    lines = [
        f"Write stall on a table of {rows:,} rows (the target: the suite's longest write at most {LIMIT:g} s)",
        "",
        "| database | change | tool | total s | max stall s | p99 s | writes | target |",
        "|" + "---|" * 8,
    ]
    for run in found:
        tool = "plain `alembic upgrade`" if run.tool == "alembic" else "the suite (`invoke db.upgrade`)"
        if run.tool == "suite" and form(run):
            tool += f": {form(run)}"
        if run.status == "refused":
            target = "refused (the manual's recipe: expand/contract)"
        elif run.status == "failed":
            target = "FAILED"
        else:
            target = {None: "—", True: "met", False: "MISSED"}[run.met]
        maximum = "—" if run.max_s is None else f"{run.max_s:.3f}"
        p99 = "—" if run.p99_s is None else f"{run.p99_s:.3f}"
        errors = f" ({run.errors} failed)" if run.errors else ""
        lines.append(
            f"| {run.kind} | {run.change} | {tool} | {run.total_s:.2f} | {maximum} | {p99} | {run.writes}{errors} "
            f"| {target} |"
        )
    judged = [run for run in found if run.met is not None]
    missed = [run for run in judged if not run.met]
    lines.append("")
    lines.append(
        f"The suite's longest write within {LIMIT:g} s: {len(judged) - len(missed)} of {len(judged)} changes run"
        + (": missed " + "; ".join(f"{r.kind} {r.change} ({r.max_s:.2f} s)" for r in missed) if missed else ".")
    )
    for run in found:
        if run.reason:
            lines.append(f"\n{run.kind}, {run.change}, {run.tool}: {run.status}: `{run.reason}`")
    return "\n".join(lines)


def plot(found: list[Run], path: Path) -> None:
    """Each write's latency against the time since its upgrade started, one panel per change and database,
    both tools; the dashed line is the target, the dotted ones where each tool's run ended."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(run.kind for run in found))
    changes = list(dict.fromkeys(run.change for run in found))
    fig, axes = plt.subplots(len(changes), len(kinds), figsize=(5.2 * len(kinds), 2.3 * len(changes)), squeeze=False)
    colours = {"alembic": "tab:red", "suite": "tab:blue"}
    names = {"alembic": "plain alembic upgrade", "suite": "the suite"}
    for column, kind in enumerate(kinds):
        for line, change in enumerate(changes):
            ax = axes[line][column]
            for run in (r for r in found if r.kind == kind and r.change == change):
                if run.samples:
                    xs, ys = zip(*run.samples, strict=True)
                    label = names[run.tool] + (f" ({run.status})" if run.status != "ran" else "")
                    ax.scatter(xs, ys, s=3, color=colours[run.tool], label=label, alpha=0.6)
                ax.axvline(run.total_s, color=colours[run.tool], linestyle=":", linewidth=1)
            ax.axhline(LIMIT, color="grey", linestyle="--", linewidth=1)
            ax.set_yscale("log")
            ax.set_ylim(0.0001, 100)
            ax.set_title(f"{kind}: {change}", fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=7)
            if line == len(changes) - 1:
                ax.set_xlabel("seconds since the upgrade started", fontsize=8)
            if column == 0:
                ax.set_ylabel("write latency s", fontsize=8)
            ax.legend(fontsize=6, loc="upper right", markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write(found: list[Run], out: Path, name: str, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shown = table(found)
    print(shown)
    (out / f"{name}.md").write_text(shown + "\n")
    (out / f"{name}.json").write_text(
        json.dumps({"meta": meta, "runs": [asdict(run) for run in found]}, separators=(",", ":")) + "\n"
    )
    plot(found, out / f"{name}.png")
    progress(f"wrote {out}/{name}.json, .md, .png")


def stall_benchmarks(ctx, name: str | None = None) -> list:
    """The group: measures, writes `name`.{json,md,png} beside the other results (by default stall.*, or
    stall-quick.* for a run of fewer rows than the full one); no command rows."""
    rows = ctx.plan.stall_rows
    started = time.time()
    found = []
    for kind, server in _servers(ctx).items():
        found += measure_kind(ctx, kind, server, rows)
    meta = {
        "rows": rows,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": round(time.time() - started, 1),
        "load_average_at_end": os.getloadavg(),
    }
    write(found, ctx.out, name or ("stall" if rows == ROWS else "stall-quick"), meta)
    return []


def replot(json_path: Path) -> None:
    """Redraw the table (.md) and plot (.png) beside a results JSON:
    `python -m benchmarks.stall --replot benchmarks/results/stall.json`."""
    data = json.loads(json_path.read_text())
    found = [Run(**run) for run in data["runs"]]
    json_path.with_suffix(".md").write_text(table(found) + "\n")
    plot(found, json_path.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.stall --rows N`: this group alone at N rows, its results as stall.* (the full
    run's names); `--replot JSON`: the table and plot again from a results JSON."""
    import argparse
    import dataclasses
    import tempfile

    from .run import FULL, RESULTS, Context

    parser = argparse.ArgumentParser(prog="python -m benchmarks.stall", description=main.__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--replot", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.replot:
        replot(args.replot)
        return 0
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt(signum)))
    shm = Path("/dev/shm")
    scratch = Path(tempfile.mkdtemp(prefix="bench-stall-", dir=shm if shm.is_dir() else None))
    ctx = Context(dataclasses.replace(FULL, stall_rows=args.rows), scratch, args.out)
    try:
        stall_benchmarks(ctx, "stall")
    finally:
        for server in reversed(ctx.started):
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
