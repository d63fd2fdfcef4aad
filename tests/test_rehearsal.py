"""`db.upgrade --rehearse`: the pending revisions run first on a copy of the database (the backup loaded
into a scratch database on the same server), timed, and only then the question about the real upgrade.

On real MariaDB and PostgreSQL servers, locally and through fab (a single target, and a fleet whose first
target is the canary): a rehearsal that fails leaves the database as it was (schema and rows compared), one
that passes reports each revision's time; the copy is gone afterwards whatever happens; the refusals come
in one line. The disk check's arithmetic is in-process, on a real file system."""

from __future__ import annotations

import os
import signal
import subprocess

import pexpect
import pytest
import sqlalchemy as sa
from helpers import (
    BIN,
    HEAD,
    PASSWORD,
    PRODUCTION,
    STDIN_PASSWORD,
    Checkout,
    Database,
    PgDatabase,
    PortForward,
    environment,
    held_revision,
    make_database,
    ok,
    refused,
    wait_until_running,
)
from test_fleet import fleet_remote

from deploy import rehearsal
from deploy.database import connect
from deploy.errors import DeployError
from deploy.guards import runlog

# Two revisions that pass: a column added, a table made.
PASSING = (
    ("r0000000000a", "op.add_column('posts', sa.Column('lang', sa.String(5)))"),
    ("r0000000000b", "op.create_table('notes', sa.Column('id', sa.Integer, primary_key=True))"),
)
# One that fails part way, on what no precheck reads: raw SQL on a table that is not there.
FAILING = (
    "r0000000000f",
    "op.add_column('posts', sa.Column('lang', sa.String(5)))\n    op.execute('UPDATE no_such_table SET x = 1')",
)


# --- in-process: the copy's name and the disk check


def test_the_copys_name_is_new_each_time_and_fits_the_servers_limit():
    names = {rehearsal.scratch_name("blog") for _ in range(50)}
    assert len(names) == 50 and all(name.startswith("blog_rehearsal_") for name in names)
    long = rehearsal.scratch_name("x" * 200)
    assert len(long) <= rehearsal.NAME_LIMIT and long.startswith("x" * 40)


def test_a_copy_the_disk_would_not_hold_is_refused_in_one_line(tmp_path):
    status = os.statvfs(tmp_path)
    free = status.f_bavail * status.f_frsize
    line = rehearsal.check_room(1024, str(tmp_path), "u@h/blog")
    assert line.startswith("disk: the copy takes about 0.0 MB") and str(tmp_path) in line
    with pytest.raises(DeployError) as refusal:
        rehearsal.check_room(free * 2 + 2**30, str(tmp_path), "u@h/blog")
    said = str(refusal.value)
    assert "a copy of u@h/blog would not fit on the server's disk" in said and "\n" not in said
    assert "upgrade without --rehearse" in said


# --- the servers: what the kinds do their own way


def allow_copies(database: Database | PgDatabase) -> None:
    """What the docs ask of the migration user: to create (and drop) the rehearsal's databases, and on
    PostgreSQL to read where the server keeps its files (for the disk check)."""
    if isinstance(database, PgDatabase):
        database.server.execute(f'ALTER ROLE "{database.migration_user}" CREATEDB')
        database.server.execute(f'GRANT pg_read_all_settings TO "{database.migration_user}"')
    else:
        pattern = database.name.replace("_", "\\_") + "\\_rehearsal\\_%%"  # %% : a placeholder's escape
        database.server.execute(f"GRANT ALL PRIVILEGES ON `{pattern}`.* TO %s@'%%'", (database.migration_user,))


def copies_left(database: Database | PgDatabase) -> list[str]:
    if isinstance(database, PgDatabase):
        rows = database.server.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{database.name}_rehearsal_%",)
        )
    else:
        rows = database.server.execute(
            "SHOW DATABASES LIKE %s", (database.name.replace("_", "\\_") + "\\_rehearsal\\_%",)
        )
    return [row[0] for row in rows]


def admin_url(database: Database | PgDatabase) -> sa.URL:
    """The migration user's URL with its password: it owns every table (reads them whole)."""
    return sa.make_url(database.migration_url).set(password=PASSWORD)


def state(database: Database | PgDatabase) -> dict:
    """Every table's reflected columns, indexes and foreign keys, and its rows in key order."""
    engine = sa.create_engine(admin_url(database), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            found = {}
            for name in sorted(inspector.get_table_names()):
                table = sa.Table(name, sa.MetaData(), autoload_with=connection)
                columns = [(c.name, str(c.type), c.nullable) for c in table.columns]
                indexes = sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(name))
                keys = sorted(str(k["referred_table"]) for k in inspector.get_foreign_keys(name))
                rows = connection.execute(sa.select(table).order_by(*table.primary_key.columns or table.columns)).all()
                found[name] = (columns, indexes, keys, [tuple(row) for row in rows])
            return found
    finally:
        engine.dispose()


def test_the_disk_is_checked_only_where_it_can_be_told(any_database):
    url = admin_url(any_database)
    if isinstance(any_database, PgDatabase):  # data_directory is shown to pg_read_all_settings only
        with connect(url) as connection:
            assert (
                rehearsal.room(connection, "db")
                == "disk: not checked: the server does not say where it keeps its files"
            )
    allow_copies(any_database)
    with connect(url) as connection:
        assert rehearsal.room(connection, "db").startswith("disk: the copy takes about ")
    # Through a port forward (ssh -L), the server's files are on another machine as far as anyone can tell.
    with (
        PortForward(("127.0.0.1", any_database.server.port)) as forward,
        connect(url.set(port=forward.port)) as connection,
    ):
        line = rehearsal.room(connection, "db")
    assert line.startswith("disk: not checked: the server is not on this machine ("), line


@pytest.fixture
def production(checkout, any_database) -> tuple[Checkout, Database | PgDatabase]:
    """A checkout whose production settings point at the database, upgraded to the example's head, with rows."""
    checkout.use_production(any_database)
    ok(checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=PRODUCTION))
    engine = sa.create_engine(admin_url(any_database), poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO users (id, name, email) VALUES (1, 'ada', 'ada@example.org')"))
        connection.execute(
            sa.text("INSERT INTO posts (id, author_id, title, slug, body) VALUES (1, 1, 'hi', 'hi', 'first')")
        )
    engine.dispose()
    return checkout, any_database


def add(checkout: Checkout, *revisions: tuple[str, str]) -> None:
    down = checkout.head()
    for name, body in revisions:
        checkout.add_revision(name, down, body)
        down = name


# --- locally


def test_refused_without_the_right_then_failing_untouched_then_passing_with_its_times(production):
    """The user may not create a database: refused before any backup. Allowed, a revision that fails on
    the copy leaves the database as it was. Fixed, the rehearsal reports each revision's time, then the
    real upgrade runs. No copy is left at any point."""
    checkout, database = production
    add(checkout, FAILING)
    backup_dir = checkout.path / "instance" / "backups"
    before, backups = state(database), sorted(backup_dir.iterdir())
    result = checkout.invoke("db.upgrade", "--rehearse", "--yes", stdin=STDIN_PASSWORD, env=PRODUCTION)
    refused(result, f"{database.migration_user} may not create a database", "nothing was run")
    assert state(database) == before and sorted(backup_dir.iterdir()) == backups
    assert copies_left(database) == []

    allow_copies(database)
    result = checkout.invoke("db.upgrade", "--rehearse", "--yes", stdin=STDIN_PASSWORD, env=PRODUCTION)
    line = refused(
        result, "the rehearsal failed on ", f"nothing was run on {database.migration_user}@", "no_such_table"
    )
    assert FAILING[0] in line and "ways out" not in line
    assert state(database) == before
    assert copies_left(database) == []

    # Nothing half applied was recorded for the database itself: the fixed revision goes on at once.
    checkout.add_revision(PASSING[0][0], HEAD, PASSING[0][1])
    checkout.add_revision(PASSING[1][0], PASSING[0][0], PASSING[1][1])
    (checkout.versions / f"{FAILING[0]}.py").unlink()
    out = ok(checkout.invoke("db.upgrade", "--rehearse", "--yes", stdin=STDIN_PASSWORD, env=PRODUCTION)).out
    assert "rehearsal passed on " in out and "2 revisions in " in out
    # The server runs on this machine, and says where its files are: the disk was checked.
    assert "disk: the copy takes about " in out
    timed = [line for line in out.splitlines() if line.startswith("  r00000000") and line.endswith(" s")]
    assert [line.split(":")[0].split()[0] for line in timed] == ["r0000000000a", "r0000000000b"]
    # The copy was timed before the question, and the real run came after it.
    assert out.index("rehearsal passed") < out.rindex("is now at")
    assert database.version() == "r0000000000b"
    assert copies_left(database) == []
    assert checkout.files_containing(PASSWORD) == []
    # The copy's run is in the run log, as an upgrade's is: its times are what later estimates learn from.
    rehearsed = [run for run in runlog.runs(checkout.path / "instance") if run.command == "db.rehearse"]
    assert [(run.outcome.split(":")[0], "_rehearsal_" in run.database) for run in rehearsed] == [
        ("failed", True),
        ("done", True),
    ]


def test_rehearse_does_not_go_with_no_backup_nor_sqlite(checkout):
    add(checkout, *PASSING)
    line = refused(checkout.invoke("db.upgrade", "--rehearse", "--no-backup", "--yes"), "--no-backup skips")
    assert "nothing was run" in line
    refused(checkout.invoke("db.upgrade", "--rehearse", "--yes"), "--rehearse makes its copy on the database's server")


def test_ctrl_c_during_a_rehearsal_removes_the_copy_and_changes_nothing(production, tmp_path):
    checkout, database = production
    allow_copies(database)
    release = tmp_path / "release"
    add(checkout, ("r0000000000h", held_revision("held", release)))
    before = state(database)
    process = subprocess.Popen(
        [str(BIN / "python"), "-m", "invoke", "db.upgrade", "--rehearse", "--yes"],
        cwd=checkout.path,
        env=environment(**PRODUCTION),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    process.stdin.write(STDIN_PASSWORD.encode())
    process.stdin.close()
    try:
        wait_until_running(release, "held", process)
        assert [name for name in copies_left(database)], "the copy exists while the rehearsal runs"
        process.send_signal(signal.SIGINT)  # stop after the revision in progress
        release.touch()
        said = process.stdout.read().decode()
        process.wait(timeout=120)
    finally:
        release.touch()
        process.kill()
    assert process.returncode != 0
    assert "error: rehearsal stopped (SIGINT received) after 1 of 1 revisions on a copy: nothing was run on" in said
    assert "is now at" not in said and said.count("backup: /") == 1
    assert state(database) == before
    assert copies_left(database) == []


# --- through fab: a single target


def test_through_fab_refused_in_the_plan_then_failing_untouched_then_passing_before_the_question(any_remote):
    remote, database = any_remote, any_remote.database
    remote.upgrade()
    allow_copies(database)
    remote.add_revision(*FAILING)
    # What cannot go with a rehearsal is in the server's plan: refused before the password.
    remote.refuses("--no-backup skips", args=("prod", "db.upgrade", "--rehearse", "--no-backup"))

    before = state(database)
    result = remote.fab("prod", "db.upgrade", "--rehearse", "--yes", stdin=STDIN_PASSWORD)
    refused(result, "the rehearsal failed on ", "nothing was run on", "no_such_table")
    assert state(database) == before
    assert copies_left(database) == []

    for checkout in (remote.local, remote.server):  # the revision fixed, and another after it
        checkout.add_revision(PASSING[0][0], HEAD, PASSING[0][1])
        checkout.add_revision(PASSING[1][0], PASSING[0][0], PASSING[1][1])
        (checkout.versions / f"{FAILING[0]}.py").unlink()
    child = remote.spawn("prod", "db.upgrade", "--rehearse")
    transcript = []
    try:
        child.expect_exact("Password for ")
        child.sendline(PASSWORD)
        child.expect_exact("Apply? [y/N] ")
        transcript.append(child.before)
        assert database.version() == HEAD and copies_left(database) == []  # the question comes after
        child.sendline("y")
        child.expect(pexpect.EOF)
        transcript.append(child.before)
    finally:
        child.close(force=True)
    said = "".join(transcript)
    assert child.exitstatus == 0, said
    before_question = transcript[0]
    assert "rehearsal passed on " in before_question and "2 revisions in " in before_question
    timed = [line.split()[0] for line in before_question.splitlines() if line.strip().endswith(" s")]
    assert timed[-2:] == ["r0000000000a", "r0000000000b"]
    assert database.version() == "r0000000000b"
    assert PASSWORD not in said
    assert remote.server.files_containing(PASSWORD) == [] and remote.local.files_containing(PASSWORD) == []


def test_through_fab_ctrl_c_stops_the_rehearsal_and_removes_the_copy(any_remote, tmp_path):
    remote, database = any_remote, any_remote.database
    remote.upgrade()
    allow_copies(database)
    release = tmp_path / "release"
    remote.add_revision("r0000000000h", held_revision("held", release))
    before = state(database)
    child = remote.spawn("prod", "db.upgrade", "--rehearse", "--yes")
    try:
        child.expect_exact("Password for ")
        child.sendline(PASSWORD)
        wait_until_running(release, "held")
        assert copies_left(database), "the copy exists while the rehearsal runs"
        child.sendintr()
        child.expect_exact("asking the server to stop after the revision in progress")
        release.touch()
        child.expect(pexpect.EOF)
        said = child.before
    finally:
        release.touch()
        child.close(force=True)
    assert child.exitstatus != 0
    assert "rehearsal stopped (stopped from the laptop) after 1 of 1 revisions on a copy: nothing was run on" in said
    assert state(database) == before
    assert copies_left(database) == []


# --- through fab: a fleet rehearses on its first target, the canary


@pytest.fixture
def two_tenants(tmp_path, mariadb, sshd):
    """Two tenants' databases on one server, one migration user for both, upgraded to the example's head."""
    first = make_database(mariadb)
    second = make_database(mariadb)
    mariadb.execute(f"GRANT ALL PRIVILEGES ON `{second.name}`.* TO %s@'%%'", (first.migration_user,))
    databases = {
        "tenant_a": first,
        "tenant_b": Database(mariadb, second.name, second.app_user, first.migration_user),
    }
    remote = fleet_remote(tmp_path, sshd, databases)
    ok(remote.fab("tenants", "db.upgrade", "--yes", stdin=STDIN_PASSWORD))
    allow_copies(databases["tenant_a"])
    return remote, databases


def test_a_fleet_rehearses_on_its_canary_whose_failure_touches_no_target(two_tenants):
    remote, databases = two_tenants
    remote.add_revision(*FAILING)
    before = {name: state(database) for name, database in databases.items()}
    result = remote.fab("tenants", "db.upgrade", "--rehearse", "--yes", stdin=STDIN_PASSWORD)
    assert result.code != 0, result.output
    assert "rehearsing on tenant_a first" in result.out
    assert "the rehearsal failed on " in result.output and "not started: the rehearsal on tenant_a failed" in result.out
    assert {name: state(database) for name, database in databases.items()} == before
    assert copies_left(databases["tenant_a"]) == [] and copies_left(databases["tenant_b"]) == []

    # Fixed: the canary's rehearsal passes, once, and every target is upgraded.
    for checkout in (remote.local, remote.server):
        checkout.add_revision(PASSING[0][0], HEAD, PASSING[0][1])
        (checkout.versions / f"{FAILING[0]}.py").unlink()
    result = ok(remote.fab("tenants", "db.upgrade", "--rehearse", "--yes", stdin=STDIN_PASSWORD))
    assert result.out.count("rehearsal passed on ") == 1 and "rehearsing on tenant_a first" in result.out
    assert all(database.version() == PASSING[0][0] for database in databases.values())
    assert copies_left(databases["tenant_a"]) == []
