"""Production safety, against the real servers: dry runs, confirmation, cancellation, the run log."""

from __future__ import annotations

import subprocess
import time

import pexpect
from conftest import BIN, PASSWORD, environment, live_only, one_error_line
from test_local_sqlite import BASE, HEAD
from test_remote import STDIN_PASSWORD, refused
from test_remote import remote as remote  # noqa: F401  (a fixture, used by name)

PRODUCTION = {"FLASK_CONFIG": "production"}


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
    child = pexpect.spawn(
        remote.argv[0],
        [*remote.argv[1:], "prod", "db.upgrade"],
        cwd=str(remote.local.path),
        env=environment(),
        encoding="utf-8",
        timeout=120,
    )
    try:
        child.expect_exact("Apply? [y/N] ")
        plan = child.before
        child.sendline("n")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 1
    assert "not confirmed" in child.before and "Password" not in child.before
    assert all(revision in plan for revision in remote.local.revisions())
    assert remote.state() == (None, set())


def test_a_terminal_production_upgrade_shows_the_plan_before_asking(checkout, database):
    checkout.use_production(database)
    child = pexpect.spawn(
        str(BIN / "python"),
        ["-m", "invoke", "db.upgrade"],
        cwd=str(checkout.path),
        env=environment(**PRODUCTION),
        encoding="utf-8",
        timeout=120,
    )
    try:
        child.expect("Password for ")
        child.sendline(PASSWORD)
        child.expect_exact("Apply? [y/N] ")
        plan = child.before
        child.sendline("")  # Enter: the default is no
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 1 and "not confirmed" in child.before
    assert f"  {HEAD}  add tags" in plan
    assert database.tables() == set()


# -- cancellation and the run log ------------------------------------------------------------------

SLOW, AFTER = "5105e0000001", "af7e20000001"


def add_slow_then_fast(remote, seconds: int = 4) -> None:
    """Two revisions after head: the first takes a while (and marks its start in a table), the second is quick."""
    remote.upgrade()
    slow = live_only(f"__import__('time').sleep({seconds})")
    remote.add_revision(SLOW, f"op.create_table('slow_started', sa.Column('id', sa.Integer))\n    {slow}")
    for checkout in (remote.local, remote.server):
        checkout.add_revision(AFTER, SLOW, upgrade="op.create_table('after_slow', sa.Column('id', sa.Integer))")


def wait_for_table(database, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while name not in database.tables():
        assert time.monotonic() < deadline, f"{name} never appeared"
        time.sleep(0.1)


def test_ctrl_c_on_the_laptop_finishes_the_revision_and_stops_before_the_next(remote):
    add_slow_then_fast(remote)
    child = pexpect.spawn(
        remote.argv[0],
        [*remote.argv[1:], "prod", "db.upgrade"],
        cwd=str(remote.local.path),
        env=environment(),
        encoding="utf-8",
        timeout=120,
    )
    try:
        child.expect_exact("Apply? [y/N] ")
        child.sendline("y")
        child.expect("Password for ")
        child.sendline(PASSWORD)
        wait_for_table(remote.database, "slow_started")
        child.sendintr()  # Ctrl-C, once, while the slow revision runs
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    output = child.before
    assert child.exitstatus == 1, output
    assert "stopped (stopped from the laptop) after 1 of 2 revisions" in output, output
    assert f"is at {SLOW}" in output
    assert remote.database.version() == SLOW  # the revision in progress completed...
    assert "after_slow" not in remote.database.tables()  # ...and the next one never started
    status = remote.fab("prod", "db.status")
    assert "last run:" in status.out and "stopped after 1 of 2 (stopped from the laptop)" in status.out


def test_a_lost_ssh_connection_finishes_the_revision_and_stops_before_the_next(remote, tmp_path):
    add_slow_then_fast(remote)
    laptop = subprocess.Popen(
        [*remote.argv, "prod", "db.upgrade", "--yes"],
        cwd=remote.local.path,
        env=environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        laptop.stdin.write(STDIN_PASSWORD.encode())
        laptop.stdin.flush()
        wait_for_table(remote.database, "slow_started")
        laptop.kill()  # the laptop vanishes mid-revision: its SSH connection drops with it
    finally:
        laptop.wait(timeout=30)
    log = remote.server.path / "instance" / "migration-runs.jsonl"
    deadline = time.monotonic() + 60
    while '"outcome": "stopped' not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no run log"
        time.sleep(0.2)
    assert remote.database.version() == SLOW
    assert "after_slow" not in remote.database.tables()
    status = remote.fab("prod", "db.status")
    assert "stopped after 1 of 2 (the SSH connection was lost)" in status.out, status.out
    # Nothing was left half done: the next upgrade simply goes on.
    remote.upgrade()
    assert remote.database.version() == AFTER
