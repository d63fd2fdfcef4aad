"""Remote: `fab prod db.*` through the loopback sshd against plain `ssh` running `alembic` on the same
server checkout and MariaDB database (set up as the tests' Remote helper does).

The baseline is OpenSSH's client with the same key and known_hosts, running
`cd APP && PYTHON -m alembic -c plain.ini ...` on the server: plain Alembic (project.py's generic env.py),
its URL, migration password included (percent-encoded), in the throwaway plain.ini. The password is the
tests' own (tests/helpers.py PASSWORD: every URL- and shell-hostile character), as Remote expects.
`fab` gets the password as the suite does in pipelines: the first line of standard input.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import quote

from . import project as projects
from ._tests import PASSWORD, Checkout, Remote, make_database
from .measure import Row, Target, Variant, measure, progress

PENDING = 10


def _pending_revision(i: int) -> str:
    return (
        f"op.create_table('bench_pending_{i}', sa.Column('id', sa.Integer(), primary_key=True))"
    ), f"op.drop_table('bench_pending_{i}')"


def remote_benchmarks(ctx) -> list[Row]:
    base: Path = ctx.scratch / "remote"
    base.mkdir()
    sshd = ctx.sshd(base)
    server_db = ctx.mariadb()
    database = make_database(server_db)
    local, server = Checkout(base / "local"), Checkout(base / "server")
    server.use_production(database)
    remote = Remote(local, server, database, sshd, base / "fab.yaml")
    remote.configure(python=projects.PYTHON)
    where = f"127.0.0.1:{server_db.port}/{database.name}"
    plain_url = f"mysql+pymysql://{database.migration_user}:{quote(PASSWORD, safe='')}@{where}"
    plain = projects.Project(server.path, "example", 4, 3, "mariadb", plain_url)
    projects.add_baselines(plain)  # plain.ini (+ an unused fm_app.py) in the server's checkout
    for checkout in (local, server):
        projects.compile_tree(checkout.path)

    env = projects.env()
    env.pop("FLASK_CONFIG")  # fab picks production on the server itself
    stdin = PASSWORD + "\n"

    def fab(*args: str) -> Variant:
        return Variant([*remote.argv, "prod", *args], local.path, env, stdin=stdin)

    known_hosts = base / "known_hosts"  # Remote.configure wrote it

    def ssh(alembic_args: str) -> Variant:
        python = shlex.quote(projects.PYTHON)
        command = f"cd {shlex.quote(str(server.path))} && {python} -m alembic -c plain.ini {alembic_args}"
        argv = [
            "ssh", "-F", "/dev/null", "-i", str(sshd.client_key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-p", str(sshd.port), f"{sshd.user}@127.0.0.1", command,
        ]  # fmt: skip
        return Variant(argv, local.path, env)

    # The example's history at head, then 10 more revisions (one small table each) deployed to both sides.
    progress("remote: fab prod db.upgrade to the example's head (set-up)")
    remote.upgrade()
    old_head = local.head()
    for i in range(PENDING):
        up, down = _pending_revision(i)
        remote.add_revision(f"bench_pending_{i:02d}", up)
        # add_revision's downgrade is `pass`: give it the real one.
        for checkout in (local, server):
            path = checkout.versions / f"bench_pending_{i:02d}.py"
            path.write_text(path.read_text().replace("def downgrade():\n    pass", f"def downgrade():\n    {down}"))
    new_head = local.head()

    def back_to_old_head() -> None:
        for i in range(PENDING):
            database.server.execute(f"DROP TABLE IF EXISTS `{database.name}`.`bench_pending_{i}`")
        database.server.execute(f"UPDATE `{database.name}`.alembic_version SET version_num = %s", (old_head,))

    rows: list[Row] = []
    reps = ctx.reps

    def row(command: str, variants: dict[str, Variant], targets, note: str = "") -> Row:
        label = f"remote {command}"
        times = measure(label, variants, reps, warmup=True)
        made = Row("remote", command, "mariadb", "example", 4, None, times, baseline="ssh+alembic", note=note)
        made.argv = {name: v.argv for name, v in variants.items()}
        made.targets = targets(made)
        ctx.profile_misses(made, variants)
        rows.append(made)
        return made

    def ratio_target(limit: float):
        return lambda r: [Target(f"<={limit}x ssh+alembic", r.ratio("alembic"), limit)]

    def diff_target(limit: float):
        def targets(r: Row):
            ours, other = r.median("ours"), r.median("alembic")
            return [Target(f"<=+{limit}s vs ssh+alembic", None if None in (ours, other) else ours - other, limit, "s")]

        return targets

    back_to_old_head()
    remote.upgrade()  # at the new head
    assert database.version() == new_head
    row(
        "fab prod db.status",
        {"ours": fab("db.status"), "alembic": ssh("current")},
        ratio_target(1.2),
        "baseline: ssh + `alembic current` (one process; db.status also shows head, pending, last run)",
    )
    row(
        "fab prod db.upgrade (at head)",
        {"ours": fab("db.upgrade", "--yes"), "alembic": ssh("upgrade head")},
        ratio_target(1.2),
        "password on stdin; at head no backup is taken",
    )
    pending = {
        "ours": fab("db.upgrade", "--yes", "--no-backup"),
        "alembic": ssh("upgrade head"),
    }
    for variant in pending.values():
        variant.prepare = back_to_old_head
    row(
        f"fab prod db.upgrade ({PENDING} pending, --no-backup)",
        pending,
        diff_target(0.3),
        "the target's row: no backup, like the baseline",
    )
    with_backup = {"ours": fab("db.upgrade", "--yes"), "alembic": ssh("upgrade head")}
    for variant in with_backup.values():
        variant.prepare = back_to_old_head
    row(
        f"fab prod db.upgrade ({PENDING} pending, backup)",
        with_backup,
        lambda r: [],
        "default production path: a verified mariadb-dump backup first (no target; the baseline takes none)",
    )
    return rows
