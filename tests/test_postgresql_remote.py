"""`fab prod db.*` through the loopback sshd against a real PostgreSQL: every fab task, the password at a
terminal and on stdin, the leak sampler, Ctrl-C between revisions, backups restored over fab."""

from __future__ import annotations

import io
import subprocess
import tempfile
import time
from pathlib import Path

import pexpect
import psycopg
from helpers import (
    APP_PASSWORD,
    HEAD,
    PASSWORD,
    POSTS,
    STDIN_PASSWORD,
    ProcSampler,
    environment,
    files_containing,
    held_until,
    live_only,
    new_files_containing,
    refused,
)
from test_production_safety import fab_upgrade_in_the_background

SLOW, AFTER = "5105e0000001", "af7e20000001"


def held_revision(remote, name: str, release: Path) -> None:
    """A revision after head that runs until `release` exists (at most 120 s). It says so first, as its
    session's application_name, which pg_stat_activity shows at once (not a table it makes: PostgreSQL's
    DDL is transactional; not its last query: the guard's savepoints follow it). No fixed sleep, so a
    loaded machine cannot outrun it."""
    wait = f"op.get_bind().exec_driver_sql(\"SET application_name = 'revision {name} running'\")\n    " + held_until(
        release
    )
    remote.add_revision(
        name,
        f"op.create_table('{name}_started', sa.Column('id', sa.Integer))\n    " + live_only(wait),
    )


def wait_until_running(database, name: str, timeout: float = 60) -> None:
    """Until the migration role's connection is inside revision `name`."""
    deadline = time.monotonic() + timeout
    while not database.query(
        "SELECT 1 FROM pg_stat_activity WHERE usename = %s AND application_name = %s",
        (database.migration_user, f"revision {name} running"),
    ):
        assert time.monotonic() < deadline, f"revision {name} never started"
        time.sleep(0.05)


def app_connection(database) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1", port=database.server.port, dbname=database.name, user=database.app_user, password=APP_PASSWORD
    )


def advisory_locks(database) -> int:
    ((count,),) = database.query(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return count


def ok(result):
    assert result.code == 0, result.output
    assert PASSWORD not in result.output
    return result


# -- the password at a terminal, and on stdin --------------------------------------------------------


def test_fab_upgrade_at_a_terminal_on_postgresql(pg_remote):
    transcript = io.StringIO()
    child = pg_remote.spawn("prod", "db.upgrade", dimensions=(50, 250))
    child.logfile_read = transcript
    try:
        child.expect_exact("Apply? [y/N] ")
        plan = transcript.getvalue()
        child.sendline("y")
        child.expect(f"Password for {pg_remote.database.migration_user}@127.0.0.1")
        child.sendline(PASSWORD)
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    output = transcript.getvalue()
    assert child.exitstatus == 0, output
    assert "3 pending" in plan and all(revision in plan for revision in pg_remote.local.revisions()), plan
    assert output.count("Running upgrade") == 3, output
    assert "verified" in output  # the pg_dump backup, on the server, before anything changed
    assert f"is now at {HEAD}" in output and PASSWORD not in output
    assert pg_remote.state() == (HEAD, {"users", "posts", "tags", "post_tags", "alembic_version"})


def test_fab_upgrade_with_the_password_on_stdin_leaks_it_nowhere(pg_remote, tmp_path, sshd, postgresql):
    """Piped as the first line; meanwhile no process's argv or environment holds it (fab, ssh, the
    server's invoke, pg_dump), nor does any output, file or PostgreSQL's own log."""
    database = pg_remote.database
    pg_remote.upgrade()
    # Rows enough that pg_dump runs a while, and a revision that sleeps so the server's invoke is seen.
    database.server.execute(
        f'CREATE TABLE big (id int PRIMARY KEY, filler text); ALTER TABLE big OWNER TO "{database.migration_user}";'
        "INSERT INTO big SELECT n, repeat(md5(n::text), 3000) FROM generate_series(1, 400) AS n",
        database=database.name,
    )
    pg_remote.add_revision("5133c0000001", live_only("__import__('time').sleep(2)"))
    started = time.time()
    sampler = ProcSampler(PASSWORD)
    sampler.start()
    try:
        process = subprocess.Popen(
            [*pg_remote.argv, "prod", "db.upgrade", "--yes"],
            cwd=pg_remote.local.path,
            env=environment(TMPDIR=str(tmp_path)),
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = process.communicate(STDIN_PASSWORD, timeout=120)
    finally:
        sampler.stop.set()
        sampler.join()
    assert process.returncode == 0, out + err
    assert database.version() == "5133c0000001"
    assert sampler.saw(b"invoke\0db.upgrade\0") and sampler.saw(b"pg_dump"), sampler.rounds
    assert not sampler.leaks, sampler.leaks
    assert PASSWORD not in out + err
    for root in (tmp_path, sshd.base_dir, postgresql.base_dir, postgresql.cluster_dir):
        assert not files_containing(root, PASSWORD), root
    assert not new_files_containing(Path(tempfile.gettempdir()), PASSWORD, started)


# -- status, stamp, detect, downgrade, backups, restore ----------------------------------------------


def test_fab_status_detect_and_stamp_on_postgresql(pg_remote):
    status = ok(pg_remote.fab("prod", "db.status"))
    assert f"head {HEAD}" in status.out and "current:    not stamped" in status.out
    ok(pg_remote.fab("prod", "db.upgrade", "--yes", f"--to={POSTS}", stdin=STDIN_PASSWORD))
    pg_remote.database.query("DROP TABLE alembic_version")  # a database that predates the migrations
    before = pg_remote.state()
    # No terminal and no --yes: the answer is no, before any password is read.
    unconfirmed = pg_remote.fab("prod", "db.detect", stdin=STDIN_PASSWORD)
    assert f"matches revision {POSTS}" in unconfirmed.out
    refused(unconfirmed, "not confirmed")
    assert pg_remote.state() == before
    detected = ok(pg_remote.fab("prod", "db.detect", "--yes", stdin=STDIN_PASSWORD))
    assert f"stamped at {POSTS}" in detected.out
    assert pg_remote.state() == (POSTS, before[1] | {"alembic_version"})
    # Restamping asks for the database's name first.
    refused(pg_remote.fab("prod", "db.stamp", HEAD, stdin=f"nope\n{PASSWORD}\n"), "not confirmed")
    assert pg_remote.database.version() == POSTS
    ok(pg_remote.fab("prod", "db.stamp", HEAD, stdin=f"{pg_remote.database.name}\n{PASSWORD}\n"))
    assert pg_remote.database.version() == HEAD


def test_fab_downgrade_backups_and_restore_on_postgresql(pg_remote):
    database = pg_remote.database
    pg_remote.upgrade()
    with app_connection(database) as app:
        app.execute("INSERT INTO users (email, name) VALUES (%s, %s)", ("a@example.com", "Ann 'the first' ünï"))
    for checkout in (pg_remote.local, pg_remote.server):
        checkout.add_revision(
            "notes0000001",
            HEAD,
            upgrade="op.create_table('notes', sa.Column('id', sa.Integer))",
            downgrade="op.drop_table('notes')",
        )
    pg_remote.upgrade()  # backed up at HEAD, with Ann, first
    listed = ok(pg_remote.fab("prod", "db.backups"))
    newest = listed.out.splitlines()[0]
    assert HEAD in newest and newest.endswith(".pgdump.gz"), listed.out
    name = newest.split()[-1].rsplit("/", 1)[-1]

    wrong = pg_remote.fab("prod", "db.downgrade", f"--to={HEAD}", stdin=f"not-{database.name}\n{PASSWORD}\n")
    refused(wrong, "not confirmed")
    assert database.version() == "notes0000001"
    ok(pg_remote.fab("prod", "db.downgrade", f"--to={HEAD}", stdin=f"{database.name}\n{PASSWORD}\n"))
    assert database.version() == HEAD and "notes" not in database.tables()

    with app_connection(database) as app:
        app.execute("DELETE FROM users")
    refused(pg_remote.fab("prod", "db.restore", name, stdin=f"nope\n{PASSWORD}\n"), "not confirmed")
    assert database.query("SELECT count(*) FROM users") == ((0,),)
    ok(pg_remote.fab("prod", "db.restore", name, stdin=f"{database.name}\n{PASSWORD}\n"))
    assert database.version() == HEAD and "notes" not in database.tables()
    assert database.query("SELECT email, name FROM users") == (("a@example.com", "Ann 'the first' ünï"),)
    with app_connection(database) as app:  # the app role's grants came back with the tables
        assert app.execute("SELECT count(*) FROM users").fetchone() == (1,)


# -- dry runs, schema, lint ---------------------------------------------------------------------------

UNCONCURRENT = "op.create_index('ix_posts_status', 'posts', ['status'])"


def test_fab_sql_schema_and_lint_on_postgresql(pg_remote):
    dry = ok(pg_remote.fab("prod", "db.upgrade", "--sql"))
    assert "CREATE TABLE users (\n    id SERIAL NOT NULL" in dry.out and "Password" not in dry.output
    assert pg_remote.state() == (None, set())
    pg_remote.upgrade()
    schema = ok(pg_remote.fab("prod", "db.schema", "--diff"))
    database = pg_remote.database
    assert f"{database.app_user}@127.0.0.1:{database.server.port}/{database.name} ({HEAD}): 4 tables" in schema.out
    assert "table users\n  id INTEGER NOT NULL PRIMARY KEY" in schema.out
    assert schema.out.rstrip().endswith("the models match the database") and "Password" not in schema.output

    pg_remote.add_revision("index0000001", UNCONCURRENT)
    lint = pg_remote.fab("prod", "db.lint")
    assert lint.code == 1, lint.output
    assert "index0000001: create_index posts.ix_posts_status: PostgreSQL blocks writes to the table" in lint.out
    refused(pg_remote.fab("prod", "db.upgrade", "--yes", stdin=STDIN_PASSWORD), "1 risky operation", "--allow-risky")
    assert database.version() == HEAD
    result = ok(pg_remote.fab("prod", "db.upgrade", "--yes", "--allow-risky", stdin=STDIN_PASSWORD))
    assert "risk: index0000001: create_index posts.ix_posts_status" in result.out
    assert database.version() == "index0000001"


BROKEN = (
    "op.create_table('extra', sa.Column('id', sa.Integer, primary_key=True))\n    "
    "op.add_column('posts', sa.Column('subtitle', sa.String(50)))\n    "
    "op.create_index('ix_posts_title', 'posts', ['title'])\n    "
    "op.execute('SELECT * FROM no_such_table')"
)


def test_a_revision_failing_over_fab_leaves_the_postgresql_schema_exactly_as_before(pg_remote):
    pg_remote.upgrade()
    before = pg_remote.database.schema()
    pg_remote.add_revision("broken", BROKEN)
    line = refused(
        pg_remote.fab("prod", "db.upgrade", "--yes", "--allow-risky", stdin=STDIN_PASSWORD),
        "revision broken (broken) failed: ",
        'relation "no_such_table" does not exist',
        f"the database is at {HEAD}",
        "rolled back whole",
    )
    assert "invoke" not in line
    assert pg_remote.database.schema() == before and pg_remote.database.version() == HEAD


# -- cancellation and the lock -----------------------------------------------------------------------


def test_ctrl_c_over_fab_on_postgresql_stops_between_revisions_and_frees_the_lock(pg_remote, tmp_path):
    pg_remote.upgrade()
    release = tmp_path / "release"
    held_revision(pg_remote, SLOW, release)
    for checkout in (pg_remote.local, pg_remote.server):
        checkout.add_revision(AFTER, SLOW, upgrade="op.create_table('after_slow', sa.Column('id', sa.Integer))")
    child = pg_remote.spawn("prod", "db.upgrade")
    try:
        child.expect_exact("Apply? [y/N] ")
        child.sendline("y")
        child.expect("Password for ")
        child.sendline(PASSWORD)
        wait_until_running(pg_remote.database, SLOW)
        assert advisory_locks(pg_remote.database) == 1  # the run holds its lock
        child.sendintr()  # Ctrl-C, once, while the slow revision runs
        time.sleep(1.5)  # the stop crosses the SSH channel; then the revision may end
        release.touch()
        child.expect(pexpect.EOF)
    finally:
        release.touch()
        child.close(force=True)
    output = child.before
    assert child.exitstatus == 1, output
    assert "stopped (stopped from the laptop) after 1 of 2 revisions" in output, output
    assert pg_remote.database.version() == SLOW and f"{SLOW}_started" in pg_remote.database.tables()
    assert "after_slow" not in pg_remote.database.tables()
    status = pg_remote.fab("prod", "db.status")
    assert "stopped after 1 of 2 (stopped from the laptop)" in status.out, status.output
    # The lock went with the run: the next upgrade takes it at once and goes on.
    assert advisory_locks(pg_remote.database) == 0
    (pg_remote.server.path / "invoke.yaml").write_text("db:\n  safety:\n    lock_wait: 0\n")
    pg_remote.upgrade()
    assert pg_remote.database.version() == AFTER


def test_two_fab_upgrades_at_once_on_postgresql_the_second_names_the_first(pg_remote, tmp_path):
    (pg_remote.server.path / "invoke.yaml").write_text("db:\n  safety:\n    lock_wait: 1\n")
    pg_remote.upgrade()
    release = tmp_path / "release"
    held_revision(pg_remote, "slow00000001", release)
    first = fab_upgrade_in_the_background(pg_remote)
    try:
        wait_until_running(pg_remote.database, "slow00000001")
        second = pg_remote.fab("prod", "db.upgrade", "--yes", stdin=STDIN_PASSWORD)
    finally:
        release.touch()
        out, _ = first.communicate(timeout=120)
    refused(second, "another migration holds the lock", "backend pid ", pg_remote.database.migration_user)
    assert first.returncode == 0, out.decode()
    assert pg_remote.database.version() == "slow00000001"


def test_a_lost_ssh_connection_finishes_the_postgresql_revision_and_stops_before_the_next(pg_remote, tmp_path):
    pg_remote.upgrade()
    release = tmp_path / "release"
    held_revision(pg_remote, SLOW, release)
    for checkout in (pg_remote.local, pg_remote.server):
        checkout.add_revision(AFTER, SLOW, upgrade="op.create_table('after_slow', sa.Column('id', sa.Integer))")
    laptop = fab_upgrade_in_the_background(pg_remote)
    try:
        wait_until_running(pg_remote.database, SLOW)
        laptop.kill()  # the laptop vanishes mid-revision: its SSH connection drops with it
        laptop.wait(timeout=30)
        time.sleep(1)  # the server sees its control channel end; then the revision may finish
    finally:
        release.touch()
        laptop.wait(timeout=30)
    log = pg_remote.server.path / "instance" / "migration-runs.jsonl"
    deadline = time.monotonic() + 60
    while '"outcome": "stopped' not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no run log"
        time.sleep(0.2)
    assert pg_remote.database.version() == SLOW and "after_slow" not in pg_remote.database.tables()
    # The server-side run ends (its log is written under the lock, just before the release), its lock with it.
    deadline = time.monotonic() + 10
    while advisory_locks(pg_remote.database):
        assert time.monotonic() < deadline, "the lock outlived the run"
        time.sleep(0.1)
    status = pg_remote.fab("prod", "db.status")
    assert "stopped after 1 of 2 (the SSH connection was lost)" in status.out, status.output
    pg_remote.upgrade()
    assert pg_remote.database.version() == AFTER
