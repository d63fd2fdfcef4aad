"""Fleet: `fab fleet db.upgrade` on 16 MariaDB databases (one per tenant's settings, one host, all at
once) against `fab one db.upgrade` on one database of the same kind, through the loopback sshd.

Every database starts each repetition at the example's head with the same pending revisions, and
both commands take their verified backups (the production default). The machine's CPU use during
the fleet's runs is recorded: on a machine whose cores the 16 upgrades, the server, MariaDB and the
laptop all share, that, not waiting, is what bounds the wall time."""

from __future__ import annotations

import time
from pathlib import Path

from . import project as projects
from ._tests import PASSWORD, Checkout, Remote, make_database
from .measure import Row, Target, Variant, measure, progress

TENANTS = 16
PENDING = 3


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy, from /proc/stat (all cores)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / 100  # USER_HZ


def fleet_benchmarks(ctx) -> list[Row]:
    base: Path = ctx.scratch / "fleet"
    base.mkdir()
    sshd = ctx.sshd(base)
    server_db = ctx.mariadb()
    # One migration user for all, as a tenant fleet on one server has: one password prompt.
    databases = [make_database(server_db) for _ in range(TENANTS + 1)]
    migrator = databases[0].migration_user
    for database in databases[1:]:
        server_db.execute(f"GRANT ALL PRIVILEGES ON `{database.name}`.* TO %s@'%%'", (migrator,))
    local, server = Checkout(base / "local"), Checkout(base / "server")
    ini = server.path / "alembic.ini"
    ini.write_text(ini.read_text().replace("exampleapp.config:configs", "exampleapp.config:ProductionConfig"))
    names = [f"tenant{n:02d}" for n in range(TENANTS + 1)]
    for name, database in zip(names, databases, strict=True):
        migration_url = database.migration_url.replace(f"//{database.migration_user}:", f"//{migrator}:")
        server.write_settings(name, SQLALCHEMY_DATABASE_URI=database.app_url, SQLALCHEMY_ALEMBIC_URI=migration_url)
    with (local.path / "fabric.yaml").open("a") as declared:
        declared.write("  one: {}\n  fleet: {}\n")
    remote = Remote(local, server, databases[0], sshd, base / "fab.yaml")
    where = {"host": f"{sshd.user}@127.0.0.1:{sshd.port}", "app_dir": str(server.path), "python": projects.PYTHON}
    environments = {
        "one": {**where, "settings": names[0]},
        "fleet": {**where, "settings": names[1:], "concurrency": TENANTS},
    }
    remote.configure(python=projects.PYTHON, fabric={"environments": environments})
    for checkout in (local, server):
        projects.compile_tree(checkout.path)
    env = projects.env()
    env.pop("FLASK_CONFIG")
    stdin = PASSWORD + "\n"

    progress(f"fleet: {TENANTS + 1} databases to the example's head (set-up)")
    for name in environments:
        result = remote.fab(name, "db.upgrade", "--yes", stdin=stdin)
        assert result.code == 0, result.output
    old_head = local.head()
    for n in range(PENDING):
        remote.add_revision(f"fleet_pending_{n}", f"op.create_table('fleet_{n}', sa.Column('id', sa.Integer))")

    def back_to_old_head() -> None:
        for database in databases:
            for n in range(PENDING):
                database.server.execute(f"DROP TABLE IF EXISTS `{database.name}`.`fleet_{n}`")
            database.server.execute(f"UPDATE `{database.name}`.alembic_version SET version_num = %s", (old_head,))

    variants = {
        "ours": Variant([*remote.argv, "fleet", "db.upgrade", "--yes"], local.path, env, stdin=stdin),
        "alembic": Variant([*remote.argv, "one", "db.upgrade", "--yes"], local.path, env, stdin=stdin),
    }
    for variant in variants.values():
        variant.prepare = back_to_old_head
    started = time.perf_counter()
    cpu_before = busy_seconds()
    times = measure(f"fleet {TENANTS} databases", variants, ctx.reps, warmup=True)
    cpu_used = busy_seconds() - cpu_before
    wall = time.perf_counter() - started
    row = Row("remote", f"fab fleet db.upgrade ({TENANTS} databases)", "mariadb", "example", 4, PENDING, times)
    row.baseline = "fab one db.upgrade (1 database)"
    cores = len(Path("/proc/cpuinfo").read_text().split("processor\t:")) - 1
    row.note = (
        f"{PENDING} pending, backups on, concurrency {TENANTS}, one host; the machine's {cores} cores were "
        f"{cpu_used / wall / cores:.0%} busy over the whole measurement"
    )
    row.argv = {name: variant.argv for name, variant in variants.items()}
    row.targets = [Target(f"<=2x one database's wall time ({TENANTS} databases)", row.ratio("alembic"), 2.0)]
    ctx.profile_misses(row, variants)
    return [row]
