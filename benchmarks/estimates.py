"""Estimates: what the plan says each operation will take (deploy.review.costs) against what it takes, on
tables of 10k, 100k and 1M rows, for each kind of operation, on MariaDB and PostgreSQL.

Each size gets a fresh `orders` table (about 100 bytes a row, a customers table to refer to), filled
and analyzed (production tables have settled statistics); then each operation is estimated from the
server's statistics and run as an upgrade runs it (alembic's Operations inside the dialect's online()
hook, production's guards), timed. The estimate uses the defaults only: no run log.

Target: within a factor of 1.5 (either way) for each operation that takes over a second. The rows per
second each kind of operation was seen at are reported too, as the slope between the two largest sizes
(the fixed cost of an ALTER taken out): that is how costs.DEFAULTS were measured."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations, ops

from ._tests import MariaDB, PostgreSQL
from .measure import progress

SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
FACTOR = 1.5
OVER = 1.0  # seconds: the target holds for operations that take longer

# The operations, in the order they run on one table: (label, alembic operation).
OPERATIONS = [
    ("add column", ops.AddColumnOp("orders", sa.Column("flag", sa.Boolean(), nullable=True))),
    (
        "add column with default",
        ops.AddColumnOp("orders", sa.Column("state", sa.Integer(), nullable=False, server_default="0")),
    ),
    ("create index", ops.CreateIndexOp("ix_orders_customer", "orders", ["customer_id"])),
    (
        "widen varchar",
        ops.AlterColumnOp("orders", "note", modify_type=sa.String(200), existing_type=sa.String(100)),
    ),
    (
        "change type",
        ops.AlterColumnOp("orders", "total", modify_type=sa.BigInteger(), existing_type=sa.Integer()),
    ),
    (
        "set NOT NULL",
        ops.AlterColumnOp("orders", "total", modify_nullable=False, existing_type=sa.BigInteger()),
    ),
    ("add foreign key", ops.CreateForeignKeyOp("fk_orders_customer", "orders", "customers", ["customer_id"], ["id"])),
    ("add check", ops.CreateCheckConstraintOp("ck_orders_total", "orders", sa.text("total >= 0"))),
    ("drop column", ops.DropColumnOp("orders", "flag")),
]

FILL = {
    "mariadb": [
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL) ENGINE=InnoDB",
        "INSERT INTO customers SELECT seq, CONCAT('customer ', seq) FROM seq_1_to_1000",
        "CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL, total INT NULL, "
        "note VARCHAR(100), created DATETIME NOT NULL) ENGINE=InnoDB",
        "INSERT INTO orders (customer_id, total, note, created) SELECT seq %% 1000 + 1, seq %% 997, "
        "CONCAT('order ', seq, ' ', MD5(seq)), NOW() - INTERVAL seq SECOND FROM seq_1_to_{rows}",
        "ANALYZE TABLE customers, orders",
    ],
    "postgresql": [
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL)",
        "INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 1000) g",
        "CREATE TABLE orders (id SERIAL PRIMARY KEY, customer_id INT NOT NULL, total INT NULL, "
        "note VARCHAR(100), created TIMESTAMP NOT NULL)",
        "INSERT INTO orders (customer_id, total, note, created) SELECT g %% 1000 + 1, g %% 997, "
        "'order ' || g || ' ' || md5(g::text), now() - g * interval '1 second' FROM generate_series(1, {rows}) g",
        "VACUUM ANALYZE customers",
        "VACUUM ANALYZE orders",
    ],
}


class SizedMariaDB(MariaDB):
    """The tests' MariaDB with a buffer pool that holds the largest table: the tests' 16 MB would make a
    copy of a million rows wait on the disk, which no production server sized for its tables does."""

    _TUNING = (
        "--innodb-buffer-pool-size=512M",
        "--innodb-log-file-size=256M",
        "--innodb-flush-log-at-trx-commit=2",
        "--innodb-doublewrite=0",
    )


class SizedPostgreSQL(PostgreSQL):
    """The tests' PostgreSQL with shared buffers and WAL room for the largest table, likewise."""

    _TUNING = (*(item for item in PostgreSQL._TUNING if not item.startswith(("shared_buffers", "max_wal_size"))),
               "shared_buffers=256MB", "max_wal_size=2GB")  # fmt: skip


@dataclass
class Measurement:
    kind: str  # mariadb | postgresql
    operation: str
    rows: int  # the table's real rows
    estimated_rows: int | None
    form: str  # how the server does it (its online form after a comma), as the plan shows it
    key: str
    estimate_s: float | None
    actual_s: float
    line: str  # the plan's line

    @property
    def factor(self) -> float | None:
        if not self.estimate_s or not self.actual_s:
            return None
        return max(self.estimate_s / self.actual_s, self.actual_s / self.estimate_s)

    @property
    def judged(self) -> bool:
        return self.actual_s > OVER

    @property
    def met(self) -> bool | None:
        if not self.judged:
            return None
        return self.factor is not None and self.factor <= FACTOR


def _servers(ctx):
    """A MariaDB and a PostgreSQL of this group's own (sized for the tables), stopped at the end."""
    mariadb = SizedMariaDB(ctx.scratch / "estimates-mariadb")
    pg = SizedPostgreSQL(ctx.scratch / "estimates-postgresql")
    for server in (mariadb, pg):
        ctx.started.append(server)
        progress(f"starting a throwaway {server.name} sized for the tables (tests/servers.py)")
        server.start()
    return {
        "mariadb": (mariadb, f"mysql+pymysql://root@127.0.0.1:{mariadb.port}/{{name}}"),
        "postgresql": (pg, f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/{{name}}"),
    }


def measure_kind(kind: str, server, url: str, sizes: tuple[int, ...]) -> list[Measurement]:
    from deploy import commands, dialects
    from deploy.errors import DeployError
    from deploy.review import costs

    guards = commands.Guards(production=True)
    copying = commands.Guards(production=True, switched=frozenset({"allow_copy"}))
    found = []
    for rows in sizes:
        name = f"estimates_{rows}"
        server.create_database(name)
        engine = sa.create_engine(url.format(name=name))
        try:
            with engine.connect() as connection:
                started = time.perf_counter()
                for statement in FILL[kind]:
                    if statement.startswith("VACUUM"):  # not in a transaction: on an autocommit connection
                        server.execute(statement, database=name)
                    else:
                        connection.exec_driver_sql(statement.format(rows=rows))
                        connection.commit()
                progress(f"estimates {kind}: {rows} rows filled in {time.perf_counter() - started:.1f}s")
                dialect = dialects.dialect_for(connection)
                for label, operation in OPERATIONS:
                    cost = costs.of_operation(connection, operation)
                    connection.commit()
                    form = ""
                    try:
                        actual = _timed(connection, dialect, operation, guards)
                    except DeployError:  # not online (pt-online-schema-change cannot): as --allow-copy runs it
                        connection.rollback()
                        actual = _timed(connection, dialect, operation, copying)
                        form = " (refused online: ran with --allow-copy)"
                    measured = Measurement(
                        kind,
                        label,
                        rows,
                        cost.rows if cost else None,
                        (cost.alteration.how + (f", {cost.alteration.online}" if cost.alteration.online else "")) + form
                        if cost
                        else "no estimate",
                        cost.key if cost else "",
                        cost.seconds if cost else None,
                        actual,
                        str(cost) if cost else "",
                    )
                    found.append(measured)
                    shown = "—" if measured.estimate_s is None else f"{measured.estimate_s:.2f}s"
                    progress(f"estimates {kind} {rows}: {label} ({measured.form}): {actual:.2f}s, estimated {shown}")
        finally:
            engine.dispose()
            _drop(kind, server, name)
    return found


def _timed(connection, dialect, operation, guards) -> float:
    """Seconds `operation` takes as an upgrade runs it: in the dialect's online() hook, under `guards`."""
    started = time.perf_counter()
    with dialect.online(connection, guards):
        Operations(MigrationContext.configure(connection)).invoke(operation)
        connection.commit()
    return time.perf_counter() - started


def _drop(kind: str, server, name: str) -> None:
    if kind == "mariadb":
        server.execute(f"DROP DATABASE `{name}`")
    else:
        server.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def slopes(found: list[Measurement]) -> dict[str, tuple[float, float]]:
    """(rows per second, fixed seconds) of each key that grows with rows: the slope between its two largest
    tables, so that what the operation takes whatever the rows drops out, and that intercept."""
    by_key: dict[str, list[Measurement]] = {}
    for m in found:
        if m.key and m.estimate_s:  # an estimate: it grows with rows
            by_key.setdefault(m.key, []).append(m)
    rates = {}
    for key, seen in by_key.items():
        seen.sort(key=lambda m: m.rows)
        if len(seen) >= 2 and seen[-1].actual_s > seen[-2].actual_s:
            rate = (seen[-1].rows - seen[-2].rows) / (seen[-1].actual_s - seen[-2].actual_s)
            rates[key] = (round(rate, -3), round(max(0.0, seen[-1].actual_s - seen[-1].rows / rate), 2))
    return rates


def table(found: list[Measurement]) -> str:
    lines = [
        "| database | operation | form | rows | estimated rows | estimate s | actual s | factor | target |",
        "|" + "---|" * 9,
    ]
    for m in found:
        estimate = "—" if m.estimate_s is None else f"{m.estimate_s:.3f}"
        factor = "—" if m.factor is None else f"{m.factor:.2f}"
        target = "—" if m.met is None else ("met" if m.met else "MISSED")
        lines.append(
            f"| {m.kind} | {m.operation} | {m.form} | {m.rows:,} | "
            f"{'—' if m.estimated_rows is None else f'{m.estimated_rows:,}'} | {estimate} | {m.actual_s:.3f} | "
            f"{factor} | {target} |"
        )
    judged = [m for m in found if m.met is not None]
    missed = [m for m in judged if not m.met]
    lines.append("")
    lines.append(
        f"Estimates within {FACTOR}x of the actual time, for operations over {OVER:g} s: "
        f"{len(judged) - len(missed)} of {len(judged)}"
        + (": missed " + "; ".join(f"{m.kind} {m.operation} at {m.rows:,} rows" for m in missed) if missed else ".")
    )
    return "\n".join(lines)


def report(found: list[Measurement]) -> str:
    """The table, and the rates each key was seen at."""
    shown = table(found)
    shown += "\n\nRows per second between the two largest tables, and the fixed seconds left, by key "
    shown += "(kind|form|online form|operation):\n\n"
    rates = sorted(slopes(found).items())
    return shown + "\n".join(f"- `{key}`: {rate:,.0f} rows/s, {fixed:g} s" for key, (rate, fixed) in rates)


def plot(found: list[Measurement], path: Path) -> None:
    """Estimate against actual time, log-log, one colour per operation, a marker per database; the band
    is the target's factor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6))
    labels = list(dict.fromkeys(m.operation for m in found))
    colours = plt.get_cmap("tab10")
    markers = {"mariadb": "o", "postgresql": "s"}
    for index, label in enumerate(labels):
        for kind, marker in markers.items():
            points = [(m.actual_s, m.estimate_s) for m in found if m.operation == label and m.kind == kind]
            points = [(a, e) for a, e in points if e]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.scatter(xs, ys, marker=marker, color=colours(index % 10), label=f"{label} ({kind})", s=28)
    low, high = 0.001, 200
    ax.plot([low, high], [low, high], color="grey", linewidth=1)
    ax.fill_between([low, high], [low / FACTOR, high / FACTOR], [low * FACTOR, high * FACTOR], color="grey", alpha=0.15)
    ax.axvline(OVER, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("actual s")
    ax.set_ylabel("estimated s")
    ax.set_title(f"Estimates against actual times (band: {FACTOR}x; the target holds right of {OVER:g} s)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def estimate_benchmarks(ctx) -> list:
    """The group: measures, writes estimates.{json,md,png} beside the other results (estimates-quick.* for
    a quick run); no command rows."""
    sizes = ctx.plan.estimate_sizes
    name = "estimates" if tuple(sizes) == SIZES else "estimates-quick"
    found = []
    for kind, (server, url) in _servers(ctx).items():
        found += measure_kind(kind, server, url, sizes)
    out = ctx.out
    out.mkdir(parents=True, exist_ok=True)
    shown = report(found)
    rates = slopes(found)
    print(shown)
    (out / f"{name}.md").write_text(shown + "\n")
    (out / f"{name}.json").write_text(
        json.dumps({"sizes": list(sizes), "measurements": [asdict(m) for m in found], "rates": rates}, indent=1) + "\n"
    )
    plot(found, out / f"{name}.png")
    progress(f"wrote {out}/{name}.json, .md, .png")
    return []


def replot(json_path: Path) -> None:
    """Redraw the table (.md) and plot (.png) beside a results JSON, as measured:
    `python -m benchmarks.estimates benchmarks/results/estimates.json`."""
    data = json.loads(json_path.read_text())
    found = [Measurement(**measured) for measured in data["measurements"]]
    json_path.with_suffix(".md").write_text(report(found) + "\n")
    plot(found, json_path.with_suffix(".png"))


if __name__ == "__main__":
    import sys

    replot(Path(sys.argv[1]))
