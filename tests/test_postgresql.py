"""`invoke db.*` against a real PostgreSQL set up as in production: the app role may only read and
write rows, migrations run as the role that owns the database, whose password is typed (here: piped).

One throwaway server for the session (conftest's `postgresql`); each test gets its own database and roles."""

from __future__ import annotations

import gzip
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
from helpers import (
    HEAD,
    PASSWORD,
    POSTS,
    PRODUCTION,
    PgDatabase,
    differences_from_the_models,
    files_containing,
    ok,
    one_error_line,
)
from helpers import make_pg_database as make_database
from servers import PostgreSQL
from sqlalchemy import make_url

from deploy.guards.lock import migration_lock


@pytest.fixture
def database(pg_database) -> PgDatabase:
    return pg_database


@pytest.fixture
def production(checkout, database):
    checkout.write_settings(
        "production", SQLALCHEMY_DATABASE_URI=database.app_url, SQLALCHEMY_ALEMBIC_URI=database.migration_url
    )
    return checkout


def upgrade(checkout, *args, stdin=PASSWORD + "\n", env=None):
    """A production upgrade in a pipeline: the password on stdin, --yes for the [y/N]."""
    return checkout.invoke("db.upgrade", "--yes", *args, stdin=stdin, env={**PRODUCTION, **(env or {})})


def test_every_local_task_on_postgresql(production, database, tmp_path, monkeypatch):
    # The tasks' temporary files go to a folder of this test's own: the shared one holds the password
    # files of another worker's pg_dump while it runs, which are not this test's to judge.
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    result = ok(upgrade(production))
    assert "Running upgrade  -> 747f7d2e75b9" in result.output and f"is now at {HEAD}" in result.output
    assert database.version() == HEAD
    assert database.tables() == {"users", "posts", "tags", "post_tags", "alembic_version"}
    assert ok(production.invoke("db.current", env=PRODUCTION)).out.strip() == f"{HEAD} (add tags) (head)"
    status = ok(production.invoke("db.status", "--json", env=PRODUCTION)).out
    assert f'"current": ["{HEAD}"]' in status and '"pending": []' in status
    wrong = production.invoke("db.downgrade", stdin=f"nope\n{PASSWORD}\n", env=PRODUCTION)
    assert "not confirmed" in one_error_line(wrong) and database.version() == HEAD
    ok(production.invoke("db.downgrade", stdin=f"{database.name}\n{PASSWORD}\n", env=PRODUCTION))
    assert database.version() == POSTS and "tags" not in database.tables()
    ok(production.invoke("db.stamp", HEAD, stdin=PASSWORD + "\n", env=PRODUCTION))
    assert database.version() == HEAD
    # Each change above was backed up first, by pg_dump, into files only their owner may read.
    backups = sorted((production.path / "instance" / "backups").glob("*.pgdump.gz"))
    assert len(backups) == 2 and all(path.stat().st_mode & 0o777 == 0o600 for path in backups)
    assert list(private_tmp.iterdir()) == []
    assert files_containing(tmp_path, PASSWORD) == []


def test_history_reproduces_the_models_exactly(production, database):
    ok(upgrade(production))
    assert differences_from_the_models(database.app_url) == []


def test_wrong_password_is_one_line_and_changes_nothing(production, database):
    line = one_error_line(upgrade(production, stdin="not the password\n"))
    assert line == (
        f"error: access denied for {database.migration_user}@127.0.0.1:{database.server.port}/{database.name}: "
        "wrong user or password"
    )
    assert database.tables() == set()


def test_a_missing_database_and_a_stopped_server_are_one_line(checkout, tmp_path):
    server = PostgreSQL(tmp_path / "doomed")
    server.start()
    database = make_database(server)
    checkout.write_settings(
        "production",
        SQLALCHEMY_DATABASE_URI=database.app_url + "_missing",
        SQLALCHEMY_ALEMBIC_URI=database.migration_url + "_missing",
    )
    assert f"database '{database.name}_missing' does not exist" in one_error_line(upgrade(checkout))
    server.kill()
    assert "cannot reach the database server" in one_error_line(upgrade(checkout))


def test_the_app_role_cannot_alter(production, database):
    ok(upgrade(production))
    production.add_revision("addcol", HEAD, upgrade="op.add_column('posts', sa.Column('extra', sa.Text()))")
    production.write_settings("production", SQLALCHEMY_DATABASE_URI=database.app_url)
    line = one_error_line(upgrade(production, "--no-backup", stdin=None))
    assert f"{database.app_user} lacks a privilege on " in line and "must be owner of table posts" in line
    assert database.version() == HEAD


def test_reset_of_a_local_postgresql_needs_force_and_names_the_address(checkout, database):
    checkout.write_settings(
        "development", SQLALCHEMY_DATABASE_URI=database.app_url, SQLALCHEMY_ALEMBIC_URI=database.migration_url
    )
    assert "add --force" in one_error_line(checkout.invoke("db.reset", stdin=PASSWORD + "\n"))
    result = ok(checkout.invoke("db.reset", "--force", stdin=PASSWORD + "\n"))
    assert f"via 127.0.0.1:{database.server.port}" in result.out  # peer() read the psycopg socket
    assert database.version() == HEAD


BROKEN = (
    "op.create_table('extra', sa.Column('id', sa.Integer, primary_key=True))\n    "
    "op.add_column('posts', sa.Column('subtitle', sa.String(50)))\n    "
    "op.create_index('ix_posts_title', 'posts', ['title'])\n    "
    "op.execute('SELECT * FROM no_such_table')"
)


def failed_part_way(production, database):
    ok(upgrade(production))
    before = database.schema()
    production.add_revision("broken", HEAD, upgrade=BROKEN)
    line = one_error_line(upgrade(production, "--allow-risky"))
    return before, line


def test_a_revision_that_fails_part_way_leaves_the_schema_exactly_as_before(production, database):
    before, line = failed_part_way(production, database)
    assert "revision broken (broken) failed: " in line and 'relation "no_such_table" does not exist' in line
    assert f"the database is at {HEAD} (add tags)" in line
    # Transactional DDL: the table, the column and the index made before the failure are gone too.
    assert database.schema() == before
    assert database.version() == HEAD


def test_the_failure_says_the_revision_was_rolled_back_whole(production, database):
    _, line = failed_part_way(production, database)
    assert "rolled back whole" in line
    # Nothing was left half applied, so nothing waits to be resolved: the fixed revision goes through.
    assert "unresolved" not in production.invoke("db.status", env={"FLASK_CONFIG": "production"}).out
    production.add_revision("broken", HEAD, upgrade="op.add_column('posts', sa.Column('subtitle', sa.String(50)))")
    ok(upgrade(production))
    assert database.version() == "broken"


def test_a_second_migration_is_refused_naming_the_holder(production, database):
    production.add_revision("r1", HEAD)
    url = make_url(database.migration_url).set(password=PASSWORD)
    with migration_lock(url, None, wait=0):
        result = upgrade(production, env={"INVOKE_DB_SAFETY_LOCK_WAIT": "1"})
        ((pid,),) = database.query(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    line = one_error_line(result)
    assert line.startswith(f"error: another migration holds the lock on {database.migration_user}@127.0.0.1:")
    assert f"(waited 1 s): backend pid {pid}, {database.migration_user}@127.0.0.1:" in line
    assert PASSWORD not in result.output
    ok(upgrade(production))  # released


ALTER = "op.add_column('posts', sa.Column('subtitle', sa.String(50)))"
GUARD = {
    "INVOKE_DB_SAFETY_LOCK_WAIT_TIMEOUT": "1",
    "INVOKE_DB_SAFETY_RETRY_PAUSE": "0.3",
    "INVOKE_DB_SAFETY_OPEN_TRANSACTIONS_AFTER": "60",
}


def test_a_blocked_alter_gives_way_and_names_the_blocker(production, database):
    ok(upgrade(production))
    production.add_revision("blocked", HEAD, upgrade=ALTER)
    with database.app_connection() as app:
        app.execute("SELECT * FROM posts")  # a transaction left open: its lock on posts stays
        blocker = app.info.backend_pid
        started = time.monotonic()
        result = upgrade(production, "--allow-risky", env={**GUARD, "INVOKE_DB_SAFETY_RETRIES": "1"})
        elapsed = time.monotonic() - started
        app.rollback()
    line = one_error_line(result)
    assert "`ALTER TABLE posts ADD COLUMN subtitle VARCHAR(50)` gave way after 2 tries of 1 s: " in line
    assert f"blocked by 1 open transaction: connection {blocker} ({database.app_user}@127.0.0.1:" in line
    assert f", idle); the database is at {HEAD} (add tags)" in line
    assert elapsed < 20
    assert database.version() == HEAD and "subtitle" not in str(database.schema()["posts"])


def waiting_on_a_lock(database: PgDatabase) -> bool:
    return bool(database.query("SELECT 1 FROM pg_locks WHERE NOT granted AND relation = 'posts'::regclass"))


def release_after_a_timeout(database: PgDatabase, app: psycopg.Connection, seen: list[str]) -> None:
    """Commit the app's transaction once the migration's ALTER has waited for it and given way once."""
    deadline = time.monotonic() + 30
    for state in (True, False):  # waiting, then no longer: its lock_timeout fired
        while waiting_on_a_lock(database) != state:
            if time.monotonic() > deadline:
                seen.append("timed out")
                break
            time.sleep(0.02)
        else:
            seen.append("waiting" if state else "gave way")
    app.commit()


def test_a_blocked_alter_retried_in_its_savepoint_keeps_the_revision_whole(production, database):
    ok(upgrade(production))
    # A first statement, then the blocked one: the retry must keep the first (one transaction, one savepoint).
    production.add_revision(
        "blocked", HEAD, upgrade="op.create_table('extra', sa.Column('id', sa.Integer, primary_key=True))\n    " + ALTER
    )
    seen: list[str] = []
    with database.app_connection() as app:
        app.execute("SELECT * FROM posts")
        release = threading.Thread(target=release_after_a_timeout, args=(database, app, seen))
        release.start()
        result = upgrade(production, "--allow-risky", env={**GUARD, "INVOKE_DB_SAFETY_RETRIES": "5"})
        release.join()
    ok(result)
    assert seen == ["waiting", "gave way"]
    assert database.version() == "blocked"
    assert "extra" in database.tables() and "subtitle" in str(database.schema()["posts"])


def test_open_transactions_are_refused_naming_them(production, database):
    production.add_revision("r1", HEAD)
    with database.app_connection() as app:
        app.execute("SELECT 1")
        time.sleep(1.2)
        result = upgrade(production, env={"INVOKE_DB_SAFETY_OPEN_TRANSACTIONS_AFTER": "1"})
        blocker = app.info.backend_pid
    line = one_error_line(result)
    assert f"1 transaction open longer than 1 s: connection {blocker} ({database.app_user}@127.0.0.1:" in line
    assert line.endswith(" s, idle); refusing: end it or pass --ignore-transactions")
    assert database.tables() == set()


def test_without_pg_read_all_stats_the_migration_role_is_told_to_grant_it(production, database):
    production.add_revision("r1", HEAD)
    database.server.execute(f'REVOKE pg_read_all_stats FROM "{database.migration_user}"')
    with database.app_connection() as app:
        app.execute("SELECT 1")  # another role's session: its state is hidden without the role
        result = upgrade(production)
    line = one_error_line(result)
    assert line == (
        "error: reading open transactions needs the pg_read_all_stats role: grant it to the migration user "
        f'(GRANT pg_read_all_stats TO "{database.migration_user}") or pass --ignore-transactions'
    )
    assert database.tables() == set()
    ok(upgrade(production, "--ignore-transactions"))


def test_backup_and_restore_round_trip(production, database, tmp_path):
    ok(upgrade(production))
    with database.app_connection() as app:
        app.execute("INSERT INTO users (email, name) VALUES (%s, %s)", ("o'brien@example.com", "O'Brien ünï 🎉"))
    production.add_revision(
        "extra", HEAD, upgrade="op.create_table('extra', sa.Column('id', sa.Integer, primary_key=True))"
    )
    ok(upgrade(production))  # backs up the database at HEAD, with its row, first
    backed_up = sorted((production.path / "instance" / "backups").glob(f"*-{HEAD}.pgdump.gz"))
    assert len(backed_up) == 1
    # The archive is pg_restore's to read, as a whole.
    archive = tmp_path / "archive.pgdump"
    archive.write_bytes(gzip.decompress(backed_up[0].read_bytes()))
    assert subprocess.run(["pg_restore", "--list", str(archive)], capture_output=True).returncode == 0
    with database.app_connection() as app:
        app.execute("DELETE FROM users")
    listed = ok(production.invoke("db.backups", env=PRODUCTION)).out
    assert backed_up[0].name in listed
    restored = ok(
        production.invoke("db.restore", backed_up[0].name, stdin=f"{database.name}\n{PASSWORD}\n", env=PRODUCTION)
    )
    assert f"is restored from {backed_up[0].name}: it is at {HEAD} (add tags)" in restored.out
    assert database.version() == HEAD and "extra" not in database.tables()
    assert database.query("SELECT email, name FROM users") == (("o'brien@example.com", "O'Brien ünï 🎉"),)
    # The app role's grants came back with the tables.
    with database.app_connection() as app:
        assert app.execute("SELECT count(*) FROM posts").fetchone() == (0,)
    assert files_containing(tmp_path, PASSWORD) == []


def test_a_damaged_backup_is_refused_before_anything_changes(production, database):
    ok(upgrade(production))
    production.add_revision("r1", HEAD)
    ok(upgrade(production))
    (backup,) = (production.path / "instance" / "backups").glob(f"*-{HEAD}.pgdump.gz")
    data = gzip.decompress(backup.read_bytes())
    # Cut short inside a whole gzip stream, without its note (which would give the size away): only
    # pg_restore, reading the archive through, can tell.
    backup.write_bytes(gzip.compress(data[: len(data) // 2]))
    backup.with_name(backup.name + ".json").unlink()
    line = one_error_line(
        production.invoke("db.restore", backup.name, stdin=f"{database.name}\n{PASSWORD}\n", env=PRODUCTION)
    )
    assert f"{backup.name} is not a usable backup: pg_restore cannot read it" in line
    assert database.version() == "r1"


def test_the_password_leaves_no_trace_in_the_server_log_or_files(postgresql, production, database, tmp_path):
    ok(upgrade(production))
    ok(production.invoke("db.downgrade", stdin=f"{database.name}\n{PASSWORD}\n", env=PRODUCTION))
    for root in (tmp_path, postgresql.base_dir, postgresql.cluster_dir):
        assert files_containing(root, PASSWORD) == []


LINTED = """with op.get_context().autocommit_block():
        op.create_index('ix_posts_title', 'posts', ['title'], postgresql_concurrently=True)
    op.create_index('ix_posts_status', 'posts', ['status'])
    op.create_index('uq_posts_title_slug', 'posts', ['title', 'slug'], unique=True)
    op.create_check_constraint('ck_posts_title', 'posts', 'length(title) > 0', postgresql_not_valid=True)
    op.create_check_constraint('ck_posts_slug', 'posts', 'length(slug) > 0')
    op.alter_column('posts', 'slug', type_=sa.String(250), existing_type=sa.String(200))
    op.alter_column('posts', 'status', type_=sa.Text(), existing_type=sa.String(20))
    op.alter_column('posts', 'author_id', type_=sa.BigInteger(), existing_type=sa.Integer())"""


def test_the_lint_names_what_blocks_postgresql_and_the_reviewed_forms_run(production, database):
    ok(upgrade(production))
    production.add_revision("linted", HEAD, upgrade=LINTED)
    findings = production.invoke("db.lint", env=PRODUCTION)
    assert findings.code == 1, findings.output
    reasons = dict(line.split(": ", 2)[1:] for line in findings.out.splitlines() if line.startswith("linted: "))
    # The suite builds indexes CONCURRENTLY and validates constraints apart: nothing PostgreSQL blocks is left
    # to say of them, only what any database would do.
    assert "create_index posts.ix_posts_status" not in reasons
    assert reasons["create_index posts.uq_posts_title_slug"].startswith("fails if existing rows hold duplicates (")
    # But for one that follows another change of the revision: it runs in that change's transaction.
    assert "after other changes of its revision" in reasons["create_check_constraint posts.ck_posts_slug"]
    assert "rewrites the table" in reasons["alter_column posts.author_id type"]
    # Made NOT VALID by the author, or a string made no shorter: nothing blocks, nothing to say.
    assert "ix_posts_title" not in findings.out and "ck_posts_title" not in findings.out
    assert "rewrites" not in reasons["alter_column posts.slug type"] + reasons["alter_column posts.status type"]
    # The forms run on the server: indexes CONCURRENTLY outside the revision's transaction, the author's
    # NOT VALID kept as written, the other constraint checked as it is added.
    ok(upgrade(production, "--allow-risky"))
    indexes = database.query(
        "SELECT c.relname, i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = 'posts'::regclass"
    )
    assert {("ix_posts_title", True), ("ix_posts_status", True), ("uq_posts_title_slug", True)} <= set(indexes)
    validated = dict(database.query("SELECT conname, convalidated FROM pg_constraint WHERE conname LIKE 'ck_posts%'"))
    assert validated == {"ck_posts_title": False, "ck_posts_slug": True}


def test_backup_and_restore_hand_the_password_only_in_a_private_passfile(database, tmp_path, monkeypatch):
    from helpers import ProcSampler

    from deploy import backups

    url = make_url(database.migration_url).set(password=PASSWORD)
    database.server.execute(
        f'CREATE TABLE big (id int PRIMARY KEY, filler text); ALTER TABLE big OWNER TO "{database.migration_user}";'
        "INSERT INTO big SELECT n, repeat(md5(n::text), 3000) FROM generate_series(1, 40) AS n",
        database=database.name,
    )
    monkeypatch.setattr(backups, "PROGRESS_SECONDS", 0)
    monkeypatch.setenv("PGPASSWORD", "not the password")  # the passfile, not a stray variable, must win
    # Password files go to a folder of this test's own: the shared one may hold another worker's.
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    sampler = ProcSampler(PASSWORD, deadline=60)
    passfiles: list[tuple[Path, int, int]] = []

    def progress(done: int, fraction: float | None) -> None:
        """Hold the running tool until the sampler has read all of /proc twice meanwhile."""
        if not passfiles:
            for path in private_tmp.glob("deploy-pgpass-*/pgpass"):
                passfiles.append((path.parent, path.parent.stat().st_mode & 0o777, path.stat().st_mode & 0o777))
            rounds = sampler.rounds
            while sampler.rounds < rounds + 2 and sampler.is_alive():
                time.sleep(0.01)

    sampler.start()
    try:
        backup = backups.take(url, tmp_path / "backups", "abc123", keep=2, progress=progress)
        database.query("DROP TABLE big")
        backups.restore(url, backup.path, progress=progress)
    finally:
        sampler.stop.set()
        sampler.join()
    assert sampler.saw(b"pg_dump") and sampler.saw(b"pg_restore")
    assert not sampler.leaks, sampler.leaks
    assert passfiles and {(directory_mode, file_mode) for _, directory_mode, file_mode in passfiles} == {(0o700, 0o600)}
    assert database.query("SELECT count(*) FROM big") == ((40,),)
    assert files_containing(tmp_path, PASSWORD) == []
    assert not [directory for directory, *_ in passfiles if directory.exists()]  # removed when the tool ended


def test_the_guard_keeps_sqlalchemys_own_savepoints_and_restores_the_session(database):
    from deploy.database import connect
    from deploy.guards.timeouts import guard_session

    url = make_url(database.migration_url).set(password=PASSWORD)
    with connect(url) as connection:
        with guard_session(connection, lock_wait_timeout=1.5, retries=1, pause=0.1):
            assert connection.exec_driver_sql("SHOW lock_timeout").scalar() == "1500ms"
            connection.exec_driver_sql("CREATE TABLE kept (id int)")
            with connection.begin_nested():
                connection.exec_driver_sql("INSERT INTO kept VALUES (1)")
            nested = connection.begin_nested()
            connection.exec_driver_sql("INSERT INTO kept VALUES (2)")
            nested.rollback()
            connection.commit()
        assert not connection.engine.dialect.dispatch.do_execute
        assert connection.exec_driver_sql("SHOW lock_timeout").scalar() == "0"
    assert database.query("SELECT id FROM kept") == ((1,),)


def test_upgrade_sql_prints_postgresqls_sql_for_the_pending_range_and_changes_nothing(production, database):
    ok(production.invoke("db.stamp", POSTS, stdin=PASSWORD + "\n", env=PRODUCTION))
    before = database.schema(), database.version()
    # No stdin at all: a dry run asks for no password and no confirmation.
    result = ok(production.invoke("db.upgrade", "--sql", env=PRODUCTION))
    assert "CREATE TABLE tags (\n    id SERIAL NOT NULL" in result.out and "CREATE TABLE users" not in result.out
    assert f"UPDATE alembic_version SET version_num='{HEAD}'" in result.out
    assert "BEGIN;" in result.out and "COMMIT;" in result.out  # transactional DDL, in the script too
    assert (database.schema(), database.version()) == before
