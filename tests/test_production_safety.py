"""Production safety, against the real servers: dry runs, confirmation, cancellation, the run log."""

from __future__ import annotations

import pexpect
from conftest import BIN, PASSWORD, environment, one_error_line
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
