"""`invoke db.*` against a real MariaDB set up as in production: the app user lacks ALTER,
migrations run as a privileged user whose password is typed at a prompt."""

import pexpect
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from helpers import BIN, PASSWORD, files_containing, make_database, one_error_line
from sqlalchemy import create_engine

from exampleapp.models import db as models

HEAD = "776f3cb23823"


@pytest.fixture
def production(checkout, database):
    checkout.use_production(database)
    return checkout


def upgrade(checkout, *args, stdin=PASSWORD + "\n"):
    """A production upgrade in a pipeline: the password on stdin, --yes for the [y/N]."""
    return checkout.invoke("db.upgrade", "--yes", *args, stdin=stdin, env={"FLASK_CONFIG": "production"})


def test_history_reproduces_the_models_exactly_on_mariadb_and_sqlite(production, database):
    assert upgrade(production).code == 0
    sqlite_checkout = production.path / "instance" / "development.db"
    assert production.invoke("db.upgrade").code == 0
    for url in (database.app_url, f"sqlite:///{sqlite_checkout}"):
        with create_engine(url).connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), models.metadata) == []


def test_password_typed_at_a_real_terminal(production, database):
    # A PATH with little more than the venv, as an SSH command may have.
    child = production.spawn("db.upgrade", env={"PATH": str(BIN), "FLASK_CONFIG": "production"})
    child.expect_exact(f"Password for {database.migration_user}@127.0.0.1:{database.server.port}/{database.name}: ")
    child.sendline(PASSWORD)
    child.expect_exact("Apply? [y/N] ")
    plan = child.before
    child.sendline("y")
    child.expect(pexpect.EOF)
    child.close()
    transcript = plan + child.before
    assert child.exitstatus == 0, transcript
    assert "Running upgrade" in transcript and f"is now at {HEAD}" in transcript
    assert PASSWORD not in transcript  # getpass turned echo off
    assert database.version() == HEAD


@pytest.mark.parametrize("char", list("@:/%#?' "))
def test_each_special_character_in_the_password(checkout, mariadb, char):
    password = f"pw{char}x{char}"
    database = make_database(mariadb, password)
    checkout.use_production(database)
    result = upgrade(checkout, stdin=password + "\n")
    assert result.code == 0, result.output
    assert database.version() == HEAD
    assert password not in result.output


def test_wrong_password_changes_nothing(production, database):
    line = one_error_line(upgrade(production, stdin="not the password\n"))
    assert f"access denied for {database.migration_user}@127.0.0.1" in line
    assert database.tables() == set()


def test_no_password_on_stdin(production, database):
    assert "no password on standard input" in one_error_line(upgrade(production, stdin=""))


def test_the_app_user_cannot_alter_so_migrations_need_the_privileged_one(production, database):
    production.write_settings("production", SQLALCHEMY_DATABASE_URI=database.app_url)
    line = one_error_line(upgrade(production, "--ignore-transactions", "--no-backup", stdin=None))
    assert f"{database.app_user} lacks a privilege" in line
    assert "command denied" in line


def test_read_only_commands_use_the_app_user_without_a_prompt(production, database):
    upgrade(production)
    result = production.invoke("db.current", env={"FLASK_CONFIG": "production"})
    assert result.out.strip() == f"{HEAD} (add tags) (head)"


def test_password_never_leaves_a_trace(production, database, tmp_path):
    results = [upgrade(production)]
    results.append(
        production.invoke("db.downgrade", stdin=f"{database.name}\n{PASSWORD}\n", env={"FLASK_CONFIG": "production"})
    )
    assert all(result.code == 0 for result in results), [r.output for r in results]
    for result in results:
        assert PASSWORD not in result.output
    assert files_containing(tmp_path, PASSWORD) == []


def test_unknown_database(production, database):
    production.write_settings(
        "production",
        SQLALCHEMY_DATABASE_URI=database.app_url + "_missing",
        SQLALCHEMY_ALEMBIC_URI=database.migration_url + "_missing",
    )
    assert f"may not use database '{database.name}_missing'" in one_error_line(upgrade(production))


def test_reset_of_a_local_mariadb_needs_force(checkout, database):
    checkout.write_settings(
        "development", SQLALCHEMY_DATABASE_URI=database.app_url, SQLALCHEMY_ALEMBIC_URI=database.migration_url
    )
    line = one_error_line(checkout.invoke("db.reset", stdin=PASSWORD + "\n"))
    assert "add --force" in line
    result = checkout.invoke("db.reset", "--force", stdin=PASSWORD + "\n")
    assert result.code == 0, result.output
    assert database.tables() == {"users", "posts", "tags", "post_tags", "alembic_version"}
    assert database.version() == HEAD


def test_a_stopped_server_is_one_clear_line(checkout, tmp_path):
    from servers import MariaDB

    server = MariaDB(tmp_path / "doomed")
    server.start()
    database = make_database(server)
    checkout.use_production(database)
    server.kill()
    line = one_error_line(upgrade(checkout))
    assert "cannot reach the database server" in line


def test_failing_migration_on_mariadb_reports_where_it_stopped(production, database):
    production.add_revision(
        "broken",
        HEAD,
        # Half of it runs: MariaDB cannot roll back the CREATE TABLE.
        upgrade="op.create_table('extra', sa.Column('id', sa.Integer, primary_key=True)); "
        "op.execute('SELECT * FROM no_such_table')",
    )
    # Raw SQL is a risk the lint cannot read: the operator accepts it.
    line = one_error_line(upgrade(production, "--allow-risky"))
    assert "revision broken" in line and f"the database is at {HEAD} (add tags)" in line
    assert database.version() == HEAD
    # What it left behind, from the live schema, and the ways out: the backup taken first, or by hand.
    assert "create_table extra" in line and "in the live schema" in line
    assert "`invoke db.restore " in line and "`invoke db.stamp broken`" in line


def test_a_production_downgrade_wants_the_database_name(production, database):
    upgrade(production)
    wrong = production.invoke("db.downgrade", stdin=f"nope\n{PASSWORD}\n", env={"FLASK_CONFIG": "production"})
    assert "not confirmed" in one_error_line(wrong)
    assert database.version() == HEAD
    confirmed = production.invoke(
        "db.downgrade", "--confirmed", stdin=PASSWORD + "\n", env={"FLASK_CONFIG": "production"}
    )
    assert confirmed.code == 0, confirmed.output
    assert database.version() != HEAD
