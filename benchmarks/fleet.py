"""Fleet: `fab fleetN db.upgrade` on N MariaDB databases (one per tenant's settings, one host, all at
once; N is 16, 64 and 256 in the full run) against `fab one db.upgrade` on one database of the same
kind, through the loopback sshd.

Every database starts each repetition at the example's head with the same pending revisions, and
both commands take their verified backups (the production default). The machine's CPU use during
each fleet's runs is recorded: on a machine whose cores the upgrades, the server, MariaDB and the
laptop all share, that, not waiting, is what bounds the wall time. Each row also reports the cost
per tenant (the fleet's wall time over its tenants), which is what grows with a fleet.

Set-up is batched so that 256 tenants take seconds: the databases, users and grants on one root
connection, the tenants' instance/*.cfg files written in one pass, and the example's schema copied
from the one database upgraded by fab (SHOW CREATE TABLE) rather than migrated 256 times."""

from __future__ import annotations

import time
from pathlib import Path

from . import project as projects
from ._tests import PASSWORD, Checkout, MariaDB, Remote
from .measure import BenchError, Row, Target, Variant, measure, progress

PENDING = 3
# The cost per tenant a fleet should stay within, seconds: what each tenant past the first adds, for every
# fleet; and the wall time over the tenants from LARGE tenants on, where fab's fixed start (about 1.4 s
# for one database) no longer stands in for the tenants' cost (at 16 it alone would be 0.09 s a tenant).
PER_TENANT = 0.1
LARGE = 64
APP_PASSWORD = "app-pw"  # the tests' app user's password (tests/helpers.py)


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy, from /proc/stat (all cores)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / 100  # USER_HZ


class Tenants:
    """`count` tenant databases and one more ("one"), made on one root connection: each its own app
    user (no ALTER), all sharing one migration user, as a tenant fleet on one server has."""

    def __init__(self, server: MariaDB, count: int) -> None:
        self.server = server
        self.names = [f"tenant{n:03d}" for n in range(count + 1)]  # tenant000 is "one"
        self.migrator = "fleet_migrator"
        with server.admin() as connection, connection.cursor() as cursor:
            cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (self.migrator, PASSWORD))
            # Global: it shows other sessions' transactions (the open-transaction guard reads it).
            cursor.execute("GRANT PROCESS ON *.* TO %s@'%%'", (self.migrator,))
            for name in self.names:
                cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
                cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (f"app_{name}", APP_PASSWORD))
                cursor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{name}`.* TO %s@'%%'", (f"app_{name}",))
                cursor.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO %s@'%%'", (self.migrator,))

    def settings(self, name: str) -> str:
        """instance/<name>.cfg: the app's URL, and the migration user's with no password (typed at run time)."""
        where = f"127.0.0.1:{self.server.port}/{name}"
        app_url = f"mysql+pymysql://app_{name}:{APP_PASSWORD}@{where}"
        migration_url = f"mysql+pymysql://{self.migrator}:@{where}"
        return f"SQLALCHEMY_DATABASE_URI = {app_url!r}\nSQLALCHEMY_ALEMBIC_URI = {migration_url!r}\n"

    def copy_schema(self, source: str) -> None:
        """Every other database gets `source`'s tables and alembic_version row, as fab left them there."""
        with self.server.admin(database=source) as connection, connection.cursor() as cursor:
            cursor.execute("SHOW TABLES")
            tables = [row[0] for row in cursor.fetchall()]
            creates = []
            for table in tables:
                cursor.execute(f"SHOW CREATE TABLE `{table}`")
                creates.append(cursor.fetchone()[1])
            cursor.execute("SET SESSION foreign_key_checks = 0")  # tables in any order
            for name in self.names:
                if name == source:
                    continue
                cursor.execute(f"USE `{name}`")
                for create in creates:
                    cursor.execute(create)
                cursor.execute(f"INSERT INTO `{name}`.alembic_version SELECT * FROM `{source}`.alembic_version")

    def behind(self, names: list[str], revision: str) -> list[str]:
        """Those of `names` not at `revision`: a run that exited 0 must have left every database there."""
        with self.server.admin() as connection, connection.cursor() as cursor:
            found = []
            for name in names:
                cursor.execute(f"SELECT version_num FROM `{name}`.alembic_version")
                found += [name] if [row[0] for row in cursor.fetchall()] != [revision] else []
        return found

    def reset(self, names: list[str], revision: str) -> None:
        """`names` back at `revision`, without the pending revisions' tables (untimed)."""
        dropped = [f"fleet_{n}" for n in range(PENDING)]
        with self.server.admin() as connection, connection.cursor() as cursor:
            for name in names:
                cursor.execute("DROP TABLE IF EXISTS " + ", ".join(f"`{name}`.`{table}`" for table in dropped))
                cursor.execute(f"UPDATE `{name}`.alembic_version SET version_num = %s", (revision,))


def _what_failed(output: str) -> str:
    """fab's failure lines, each once (a fleet's table repeats one per target), for the page."""
    said = [line.strip() for line in output.splitlines() if "error" in line or "failed" in line]
    reasons = ["failed: " + line.split("failed:", 1)[1].strip() if "failed:" in line else line for line in said]
    distinct = list(dict.fromkeys(reasons))
    return "; ".join(distinct[:4])[:500] or output.strip().splitlines()[-1][:300]


def _connection_limits(server: MariaDB) -> str:
    """The throwaway server's max_connections and open files, which bound a fleet on one server."""
    rows = server.execute("SELECT @@max_connections, @@open_files_limit")
    return f"max_connections {rows[0][0]}, open_files_limit {rows[0][1]}"


def fleet_benchmarks(ctx) -> list[Row]:
    sizes = sorted(ctx.plan.fleet_sizes)
    base: Path = ctx.scratch / "fleet"
    base.mkdir()
    sshd = ctx.sshd(base)
    server_db = ctx.mariadb()
    progress(f"fleet: {max(sizes) + 1} databases, users and grants (set-up)")
    tenants = Tenants(server_db, max(sizes))
    limits = _connection_limits(server_db)
    progress(f"fleet: the throwaway MariaDB has {limits}")
    local, server = Checkout(base / "local"), Checkout(base / "server")
    ini = server.path / "alembic.ini"
    ini.write_text(ini.read_text().replace("exampleapp.config:configs", "exampleapp.config:ProductionConfig"))
    instance = server.path / "instance"
    instance.mkdir(exist_ok=True)
    for name in tenants.names:
        (instance / f"{name}.cfg").write_text(tenants.settings(name))
    one, others = tenants.names[0], tenants.names[1:]
    environments_of = {"one": [one], **{f"fleet{size}": others[:size] for size in sizes}}
    with (local.path / "fabric.yaml").open("a") as declared:
        declared.write("".join(f"  {name}: {{}}\n" for name in environments_of))
    # Remote wants a Database for its own checks, which this benchmark does not call.
    remote = Remote(local, server, None, sshd, base / "fab.yaml")
    where = {"host": f"{sshd.user}@127.0.0.1:{sshd.port}", "app_dir": str(server.path), "python": projects.PYTHON}
    environments = {"one": {**where, "settings": one}}
    for size in sizes:
        environments[f"fleet{size}"] = {**where, "settings": environments_of[f"fleet{size}"], "concurrency": size}
    remote.configure(python=projects.PYTHON, fabric={"environments": environments})
    for checkout in (local, server):
        projects.compile_tree(checkout.path)
    env = projects.env()
    env.pop("FLASK_CONFIG")
    stdin = PASSWORD + "\n"

    progress(f"fleet: the example's head on one database by fab, copied to {len(others)} (set-up)")
    result = remote.fab("one", "db.upgrade", "--yes", stdin=stdin)
    assert result.code == 0, result.output
    tenants.copy_schema(one)
    old_head = local.head()
    for n in range(PENDING):
        remote.add_revision(f"fleet_pending_{n}", f"op.create_table('fleet_{n}', sa.Column('id', sa.Integer))")
    new_head = local.head()
    cores = len(Path("/proc/cpuinfo").read_text().split("processor\t:")) - 1

    rows = []
    for size in sizes:
        environment = f"fleet{size}"
        variants = {
            "ours": Variant([*remote.argv, environment, "db.upgrade", "--yes"], local.path, env, stdin=stdin),
            "alembic": Variant([*remote.argv, "one", "db.upgrade", "--yes"], local.path, env, stdin=stdin),
        }
        for tool, measured in (("ours", environment), ("alembic", "one")):
            variants[tool].prepare = lambda names=environments_of[measured]: tenants.reset(names, old_head)
        # 256 upgrades a run, and its untimed reset: fewer repetitions for the largest fleets.
        reps = ctx.reps if size <= 64 else ctx.plan.heavy_reps
        command = f"fab fleet db.upgrade ({size} databases)"
        row = Row("remote", command, "mariadb", "example", 4, PENDING, {})
        row.baseline = "fab one db.upgrade (1 database)"
        row.tenants = size
        row.argv = {name: variant.argv for name, variant in variants.items()}
        server_db.execute("FLUSH STATUS")  # Max_used_connections from now on
        started = time.perf_counter()
        cpu_before = busy_seconds()
        try:
            row.times = measure(f"fleet {size} databases", variants, reps, warmup=True)
        except BenchError as exc:
            # Recorded, not raised: the run's other rows stand, and the page says what failed.
            progress(f"fleet {size} databases FAILED: {exc}")
            row.failure = _what_failed(str(exc))
        cpu_used = busy_seconds() - cpu_before
        peak = server_db.execute("SHOW GLOBAL STATUS LIKE 'Max_used_connections'")[0][1]
        left_behind = [] if row.failure else tenants.behind(environments_of[environment], new_head)
        if left_behind:
            row.failure = f"exited 0 but left {len(left_behind)} databases behind ({', '.join(left_behind[:3])}...)"
            row.times = {}
        wall = time.perf_counter() - started
        row.note = (
            f"{PENDING} pending, backups on, concurrency {size}, one host, one migration user; {limits}, "
            f"at most {peak} connections used at once; "
            f"the machine's {cores} cores were {cpu_used / wall / cores:.0%} busy over the whole measurement"
        )
        if size == 16:
            row.targets.append(Target(f"<=2x one database's wall time ({size} databases)", row.ratio("alembic"), 2.0))
        added = Target(f"<={PER_TENANT}s added per tenant", row.added_per_tenant(), PER_TENANT, unit="s/tenant")
        row.targets.append(added)
        if size >= LARGE:
            row.targets.append(Target(f"<={PER_TENANT}s per tenant", row.per_tenant(), PER_TENANT, unit="s/tenant"))
        if size == min(sizes) and not row.failure:
            # Profiles of fab on the laptop; the larger fleets' would cost minutes and show the same process.
            ctx.profile_misses(row, variants)
        rows.append(row)
    return rows
