"""Production safety, against the real servers: dry runs, confirmation, cancellation, the run log."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pexpect
from helpers import (
    BASE,
    BIN,
    HEAD,
    PASSWORD,
    POSTS,
    PRODUCTION,
    STDIN_PASSWORD,
    TYPED_PASSWORD,
    answer_at_a_terminal,
    environment,
    held_revision,
    held_until,
    live_only,
    one_error_line,
    refused,
    wait_until_running,
)


def test_upgrade_sql_prints_the_pending_range_and_changes_nothing(checkout, database):
    checkout.use_production(database)
    stamped = checkout.invoke("db.stamp", BASE, stdin=STDIN_PASSWORD, env=PRODUCTION)
    assert stamped.code == 0, stamped.output
    before = (database.version(), database.tables())
    # No stdin at all: a dry run asks for no password and no confirmation.
    result = checkout.invoke("db.upgrade", "--sql", env=PRODUCTION)
    assert result.code == 0, result.output
    assert "CREATE TABLE posts" in result.out and "CREATE TABLE tags" in result.out
    assert "CREATE TABLE users" not in result.out  # from the database's revision, not from base
    assert f"UPDATE alembic_version SET version_num='{HEAD}'" in result.out
    assert (database.version(), database.tables()) == before


def test_downgrade_sql_resolves_a_relative_target(checkout):
    checkout.invoke("db.reset")
    result = checkout.invoke("db.downgrade", "--sql", "--to=-1")
    assert result.code == 0, result.output
    assert "DROP TABLE post_tags" in result.out and "DROP TABLE posts" not in result.out
    assert checkout.invoke("db.current").out.startswith(HEAD)


def test_fab_upgrade_sql_changes_nothing_and_asks_nothing(remote):
    result = remote.fab("prod", "db.upgrade", "--sql")
    assert result.code == 0, result.output
    assert "CREATE TABLE users" in result.out and "Password" not in result.output
    assert remote.state() == (None, set())


def test_a_production_upgrade_in_a_pipeline_needs_yes(checkout, database):
    checkout.use_production(database)
    line = one_error_line(checkout.invoke("db.upgrade", stdin=STDIN_PASSWORD, env=PRODUCTION))
    assert "pass --yes" in line
    assert database.tables() == set()


def test_fab_upgrade_in_a_pipeline_needs_yes_and_asks_no_password_first(remote):
    result = remote.fab("prod", "db.upgrade", stdin=STDIN_PASSWORD)
    refused(result, "not confirmed", "pass --yes")
    assert "Password" not in result.output
    assert remote.state() == (None, set())


def test_fab_upgrade_answered_no_at_a_terminal_changes_nothing(remote):
    child = remote.spawn("prod", "db.upgrade")
    try:
        (plan,) = answer_at_a_terminal(child, ("Apply? [y/N] ", "n"))
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 1
    assert "not confirmed" in child.before and "Password" not in child.before
    assert all(revision in plan for revision in remote.local.revisions())
    assert remote.state() == (None, set())


def test_a_terminal_production_upgrade_shows_the_plan_before_asking(checkout, database):
    checkout.use_production(database)
    child = checkout.spawn("db.upgrade", env=environment(**PRODUCTION))
    try:
        _, plan = answer_at_a_terminal(child, TYPED_PASSWORD, ("Apply? [y/N] ", ""))  # Enter: the default is no
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 1 and "not confirmed" in child.before
    assert f"  {HEAD}  add tags" in plan
    assert database.tables() == set()


def wait_for_table(database, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while name not in database.tables():
        assert time.monotonic() < deadline, f"{name} never appeared"
        time.sleep(0.1)


# -- the guards, through invoke and fab ------------------------------------------------------------


def production_with(checkout, database, **safety) -> dict:
    """Production settings for `checkout`, and the environment setting Invoke's db.safety values."""
    checkout.use_production(database)
    return {**PRODUCTION, **{f"INVOKE_DB_SAFETY_{key.upper()}": str(value) for key, value in safety.items()}}


def slow_revision(checkout, name: str, down: str, release: Path) -> None:
    checkout.add_revision(
        name,
        down,
        f"op.create_table('{name}_started', sa.Column('id', sa.Integer))\n    " + live_only(held_until(release)),
    )


def test_two_upgrades_at_once_the_second_waits_then_names_the_first(checkout, database, tmp_path):
    env = production_with(checkout, database, lock_wait=1)
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env).code == 0
    release = tmp_path / "release"
    slow_revision(checkout, "slow00000001", HEAD, release)
    first = subprocess.Popen(
        [str(BIN / "python"), "-m", "invoke", "db.upgrade", "--yes"],
        cwd=checkout.path,
        env=environment(**env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        first.stdin.write(STDIN_PASSWORD.encode())
        first.stdin.flush()
        wait_for_table(database, "slow00000001_started")
        second = checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env)
    finally:
        release.touch()  # the first holds the lock until the second has had its answer, however slow the machine
        out, _ = first.communicate(timeout=120)
    line = one_error_line(second)
    assert "another migration holds the lock" in line and database.migration_user in line
    assert first.returncode == 0, out.decode()
    assert database.version() == "slow00000001"  # the first finished; the history is intact


def test_an_alter_blocked_by_an_application_transaction_gives_way(checkout, database):
    env = production_with(checkout, database, lock_wait_timeout=1, retries=1, retry_pause=0.2)
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env).code == 0
    checkout.add_revision("alter0000001", HEAD, "op.add_column('users', sa.Column('nickname', sa.String(40)))")
    application = database.server.admin(database=database.name, autocommit=False)
    try:
        with application.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT * FROM users")  # an open transaction holds the table's metadata lock
            result = checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env)
    finally:
        application.rollback()
        application.close()
    line = one_error_line(result)
    # Two waits of the 1 s asked for, not MariaDB's default 50 s each: the line says how long each try waited.
    assert "gave way after 2 tries of 1 s" in line and "blocked by 1 open transaction" in line
    assert f"the database is at {HEAD}" in line
    assert database.version() == HEAD


def test_an_old_open_transaction_is_refused_unless_ignored(checkout, database):
    env = production_with(checkout, database, open_transactions_after=1)
    # The first revision (users), then one that leaves users alone, so an ignored transaction blocks nothing.
    for path in checkout.versions.glob("*.py"):
        if BASE not in path.name:
            path.unlink()
    checkout.add_revision("quiet0000001", BASE, "op.create_table('quiet', sa.Column('id', sa.Integer))")
    assert checkout.invoke("db.upgrade", "--yes", f"--to={BASE}", stdin=STDIN_PASSWORD, env=env).code == 0
    application = database.server.admin(database=database.name, autocommit=False)
    try:
        with application.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT * FROM users")  # an InnoDB read: the transaction now shows in INNODB_TRX
        time.sleep(2.2)
        line = one_error_line(checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env))
        assert "open longer than 1 s" in line and "--ignore-transactions" in line
        assert database.version() == BASE
        ignored = checkout.invoke("db.upgrade", "--yes", "--ignore-transactions", stdin=STDIN_PASSWORD, env=env)
        assert ignored.code == 0, ignored.output
    finally:
        application.rollback()
        application.close()


def test_a_production_upgrade_is_backed_up_and_restores_to_the_same_rows(checkout, database):
    env = production_with(checkout, database)
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env).code == 0
    database.query("INSERT INTO users (id, email, name) VALUES (1, 'a@example.com', 'Ann ''the first''')")
    checkout.add_revision("notes0000001", HEAD, "op.create_table('notes', sa.Column('id', sa.Integer))")
    upgraded = checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env)
    assert upgraded.code == 0 and "verified" in upgraded.out, upgraded.output
    listed = checkout.invoke("db.backups", env=env)
    newest = listed.out.splitlines()[0]
    assert HEAD in newest, listed.out  # the revision at the time is recorded
    name = newest.split()[-1].rsplit("/", 1)[-1]
    database.query("DELETE FROM users")
    wrong = checkout.invoke("db.restore", name, stdin=f"nope\n{PASSWORD}\n", env=env)
    assert "not confirmed" in one_error_line(wrong)
    restored = checkout.invoke("db.restore", name, stdin=f"{database.name}\n{PASSWORD}\n", env=env)
    assert restored.code == 0, restored.output
    assert database.query("SELECT id, email, name FROM users") == ((1, "a@example.com", "Ann 'the first'"),)
    assert database.version() == HEAD and "notes" not in database.tables()
    assert PASSWORD not in listed.output + restored.output


def test_a_damaged_backup_is_refused_before_any_question(checkout, database):
    env = production_with(checkout, database)
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env).code == 0
    checkout.add_revision("notes0000001", HEAD, "op.create_table('notes', sa.Column('id', sa.Integer))")
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env).code == 0
    backup = sorted((checkout.path / "instance" / "backups").glob("*.sql.gz"))[-1]  # the newest
    backup.write_bytes(backup.read_bytes()[: backup.stat().st_size // 2])
    line = one_error_line(checkout.invoke("db.restore", backup.name, env=env))
    assert "is not a usable backup" in line
    assert database.version() == "notes0000001"


def test_no_backup_says_loudly_what_it_skips(checkout, database):
    env = production_with(checkout, database)
    result = checkout.invoke("db.upgrade", "--yes", "--no-backup", stdin=STDIN_PASSWORD, env=env)
    assert result.code == 0, result.output
    assert "warning: --no-backup: no backup" in result.out
    assert not (checkout.path / "instance" / "backups").exists()


DROP_BODY = "with op.batch_alter_table('posts') as batch_op:\n        batch_op.drop_column('body')"


def test_a_risky_revision_is_refused_in_production_until_reviewed(checkout, database):
    env = production_with(checkout, database)
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env).code == 0
    script = checkout.add_revision("drop00000001", HEAD, DROP_BODY)
    line = one_error_line(checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env))
    assert "drop_column posts.body" in line and "--allow-risky" in line
    assert database.version() == HEAD
    assert "drop_column posts.body" in checkout.invoke("db.lint", env=env).out
    script.write_text(script.read_text() + "\nreviewed_risks = {'drop_column posts.body': 'unread since v3'}\n")
    assert checkout.invoke("db.lint", env=env).code == 0
    result = checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env)
    assert result.code == 0, result.output
    assert database.version() == "drop00000001"


def test_fab_shows_the_risks_before_asking_and_passes_allow_risky(remote):
    remote.upgrade()
    remote.add_revision("drop00000001", DROP_BODY)
    refused(remote.fab("prod", "db.upgrade", "--yes", stdin=STDIN_PASSWORD), "1 risky operation", "--allow-risky")
    assert "Password" not in remote.fab("prod", "db.upgrade", "--yes").output
    result = remote.fab("prod", "db.upgrade", "--yes", "--allow-risky", stdin=STDIN_PASSWORD)
    assert result.code == 0, result.output
    assert "risk: drop00000001: drop_column posts.body" in result.out
    assert remote.database.version() == "drop00000001"
    listed = remote.fab("prod", "db.backups")
    assert listed.code == 0 and remote.local.revisions()[-2] in listed.out, listed.output


def test_fab_restore_asks_for_the_name_then_restores(remote):
    remote.upgrade()
    remote.add_revision("notes0000001", "op.create_table('notes', sa.Column('id', sa.Integer))")
    remote.upgrade()
    name = remote.fab("prod", "db.backups").out.splitlines()[0].split()[-1].rsplit("/", 1)[-1]  # the newest
    refused(remote.fab("prod", "db.restore", name, stdin=f"nope\n{PASSWORD}\n"), "not confirmed")
    result = remote.fab("prod", "db.restore", name, stdin=f"{remote.database.name}\n{PASSWORD}\n")
    assert result.code == 0, result.output
    assert remote.database.version() == remote.local.revisions()[-2]
    assert "notes" not in remote.database.tables()


def test_ctrl_c_at_a_local_terminal_stops_between_revisions_and_frees_the_lock(checkout, any_database, tmp_path):
    database = any_database
    env = production_with(checkout, database)
    first = checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env)
    assert first.code == 0 and PASSWORD not in first.output, first.output
    release = tmp_path / "release"
    checkout.add_revision("slow00000001", HEAD, held_revision("slow00000001", release))
    checkout.add_revision("next00000001", "slow00000001", "op.create_table('next', sa.Column('id', sa.Integer))")
    child = checkout.spawn("db.upgrade", "--yes", env=environment(**env))
    try:
        answer_at_a_terminal(child, TYPED_PASSWORD)
        wait_until_running(release, "slow00000001")
        child.sendintr()
        child.expect_exact("Ctrl-C again to abort it")  # the stop is taken: the revision may end
        release.touch()
        child.expect(pexpect.EOF)
    finally:
        release.touch()
        child.close(force=True)
    assert child.exitstatus == 1, child.before
    assert "stopped (SIGINT received) after 1 of 2 revisions" in child.before
    assert database.version() == "slow00000001" and "next" not in database.tables()
    # The lock went with the run: the next upgrade starts at once and goes on.
    again = checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env={**env, "INVOKE_DB_SAFETY_LOCK_WAIT": "0"})
    assert again.code == 0 and PASSWORD not in again.output, again.output
    assert database.version() == "next00000001"


# -- the typed confirmation ------------------------------------------------------------------------


def test_the_typed_name_confirms_only_when_exact_at_a_real_terminal(checkout, database):
    env = production_with(checkout, database)
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env).code == 0
    prompt = f"Type the database name ({database.name}) to confirm: "
    # Near misses, not unrelated words: another case, and a stray space on either side.
    for answer in (database.name.upper(), f" {database.name}", f"{database.name} "):
        child = checkout.spawn("db.downgrade", env=environment(**env))
        try:
            answer_at_a_terminal(child, (prompt, answer))
            # Accepted, it would ask for the password next: fail at once rather than wait for an end.
            accepted = child.expect([pexpect.EOF, "Password for "]) == 1
        finally:
            child.close(force=True)
        assert not accepted, f"{answer!r} was taken for {database.name!r}"
        assert child.exitstatus == 1 and "not confirmed: nothing changed" in child.before, (answer, child.before)
        assert database.version() == HEAD
    child = checkout.spawn("db.downgrade", env=environment(**env))
    try:
        answer_at_a_terminal(child, (prompt, database.name), TYPED_PASSWORD)
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    assert database.version() == POSTS


# -- a half-applied revision, through fab ----------------------------------------------------------


def test_fab_relays_the_servers_refusal_to_migrate_over_a_half_applied_revision(remote):
    remote.upgrade()
    remote.database.query("ALTER TABLE posts ADD COLUMN legacy VARCHAR(20)")  # there before the revision
    remote.add_revision(
        "twocols00001",
        "op.add_column('posts', sa.Column('summary', sa.String(50)))\n    "
        "op.add_column('posts', sa.Column('legacy', sa.String(20)))",
    )
    # The column added by hand is drift the revision meets: allowed, to see the run fail on it.
    allowed = remote.fab("prod", "db.upgrade", "--yes", "--allow-drift", stdin=STDIN_PASSWORD)
    failed = refused(allowed, "Duplicate column name")
    assert "1 operation applied (add_column posts.summary); failed, so not applied: add_column posts.legacy" in failed
    assert "`fab prod db.restore " in failed and "`fab prod db.stamp twocols00001`" in failed
    # The server refuses before its status: no question is asked here, nothing changes there.
    for args in (("prod", "db.upgrade", "--yes"), ("prod", "db.downgrade", "--to=-1")):
        line = remote.refuses("has a revision left half applied by db.upgrade", args=args)
        assert line.startswith("error: prod: ") and "`fab prod db.restore " in line
        assert "`fab prod db.stamp twocols00001`" in line and f"`fab prod db.stamp {HEAD}`" in line
    status = remote.fab("prod", "db.status")
    assert "unresolved: upgrades and downgrades refuse until a restore or a stamp" in status.out, status.output
    # Finished by hand, then recorded: the stamp resolves it.
    remote.database.query("ALTER TABLE posts MODIFY legacy VARCHAR(20)")
    stamped = remote.fab("prod", "db.stamp", "twocols00001", stdin=f"{remote.database.name}\n{PASSWORD}\n")
    assert stamped.code == 0, stamped.output
    assert "unresolved" not in remote.fab("prod", "db.status").out
    assert "is already at twocols00001" in remote.upgrade().out


def test_an_aborted_revision_is_told_from_the_run_and_blocks_the_next_migration(checkout, database, tmp_path):
    env = production_with(checkout, database)
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env).code == 0
    release = tmp_path / "release"
    checkout.add_revision(
        "slow00000001",
        HEAD,
        "op.create_table('slow_started', sa.Column('id', sa.Integer))\n    "
        + live_only(held_until(release))
        + "\n    op.create_table('after_slow', sa.Column('id', sa.Integer))",
    )
    child = checkout.spawn("db.upgrade", "--yes", env=environment(**env))
    try:
        answer_at_a_terminal(child, TYPED_PASSWORD)
        wait_for_table(database, "slow_started")
        child.sendintr()
        child.expect_exact("Ctrl-C again to abort it")
        child.sendintr()  # the second: abort the revision in progress
        child.expect(pexpect.EOF)
    finally:
        release.touch()
        child.close(force=True)
    output = " ".join(child.before.split())  # the terminal wraps the long line
    assert child.exitstatus == 1, output
    assert f"revision slow00000001 (slow00000001) was aborted; the database is at {HEAD}" in output
    assert "1 operation applied (create_table slow_started); never ran: create_table after_slow" in output
    assert "`invoke db.stamp slow00000001`" in output
    line = one_error_line(checkout.invoke("db.upgrade", "--yes", env=env))
    assert "has a revision left half applied by db.upgrade" in line and "nothing is migrated until" in line
    assert database.version() == HEAD and "after_slow" not in database.tables()


def test_in_development_a_reset_resolves_a_half_applied_revision(checkout):
    assert checkout.invoke("db.upgrade").code == 0
    checkout.add_revision(
        "broken000001",
        HEAD,
        "op.create_table('extra', sa.Column('id', sa.Integer))\n    op.execute('SELECT * FROM no_such_table')",
    )
    failed = one_error_line(checkout.invoke("db.upgrade"))
    assert "revision broken000001 is half applied: 1 operation applied (create_table extra)" in failed
    assert "or start over: `invoke db.reset`" in failed
    line = one_error_line(checkout.invoke("db.upgrade"))
    assert "has a revision left half applied" in line and "or start over: `invoke db.reset`" in line
    reset = checkout.invoke("db.reset")
    assert reset.code == 0, reset.output
    assert "unresolved" not in checkout.invoke("db.status").out
    checkout.add_revision("broken000001", HEAD, "op.create_table('extra', sa.Column('id', sa.Integer))")
    assert "is already at broken000001" in checkout.invoke("db.upgrade").out  # the reset stamped the new head
