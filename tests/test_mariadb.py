"""`invoke db.*` against a real MariaDB set up as in production: the app user lacks ALTER,
migrations run as a privileged user whose password is typed at a prompt."""

import json

import pexpect
import pytest
from helpers import (
    APPLY,
    BIN,
    PASSWORD,
    answer_at_a_terminal,
    differences_from_the_models,
    files_containing,
    make_database,
    one_error_line,
)

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
        assert differences_from_the_models(url) == []


def test_password_typed_at_a_real_terminal(production, database):
    # A PATH with little more than the venv, as an SSH command may have.
    child = production.spawn("db.upgrade", env={"PATH": str(BIN), "FLASK_CONFIG": "production"})
    prompt = f"Password for {database.migration_user}@127.0.0.1:{database.server.port}/{database.name}: "
    _, plan = answer_at_a_terminal(child, (prompt, PASSWORD), APPLY)
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
    # What it left behind, as the run saw it, and the ways out: the backup taken first, or by hand.
    assert "revision broken is half applied: 1 operation applied (create_table extra)" in line
    assert "failed, so not applied: execute SELECT * FROM no_such_table" in line
    assert "`invoke db.restore " in line and "`invoke db.stamp broken`" in line
    assert f"`invoke db.stamp {HEAD}`" in line  # or undo what it applied and record the revision before


# -- a revision that fails part way ---------------------------------------------------------------

TWO_COLUMNS = (
    "op.add_column('posts', sa.Column('summary', sa.String(50))); "
    "op.add_column('posts', sa.Column('legacy', sa.String(20)))"
)


def upgrade_from_head(production, name: str, body: str):
    """The database upgraded to head, then upgraded again through revision `name` (its upgrade() is
    `body`), its risks accepted: raw SQL is one the lint cannot read."""
    assert upgrade(production).code == 0
    production.add_revision(name, HEAD, upgrade=body)
    return upgrade(production, "--allow-risky")


def half_applied(production, database) -> str:
    """A revision whose second add_column fails: its column existed before (added by hand, say).
    The first column is applied, the second is not, and no column proves otherwise."""
    assert upgrade(production).code == 0
    database.query("ALTER TABLE posts ADD COLUMN legacy VARCHAR(20)")
    production.add_revision("twocols", HEAD, upgrade=TWO_COLUMNS)
    # The column added by hand is drift the revision meets: allowed, to see the run fail on it.
    return one_error_line(upgrade(production, "--allow-drift"))


def test_a_revision_whose_failing_column_existed_before_is_half_applied_not_fully(production, database):
    line = half_applied(production, database)
    assert "revision twocols (twocols) failed: " in line and "Duplicate column name 'legacy'" in line
    assert (
        "revision twocols is half applied: 1 operation applied (add_column posts.summary); "
        "failed, so not applied: add_column posts.legacy" in line
    )
    assert "fully applied" not in line
    backup = sorted((production.path / "instance" / "backups").glob("*.sql.gz"))[-1].name
    assert f"ways out: restore the backup taken before it (`invoke db.restore {backup}`)" in line
    assert "`invoke db.stamp twocols`" in line and f"`invoke db.stamp {HEAD}`" in line
    assert database.version() == HEAD


def test_a_half_applied_revision_is_diagnosed_from_the_operation_that_raised(production, database):
    # A batch block runs its operations when it ends; the one that fails names the others as never run.
    line = one_error_line(
        upgrade_from_head(
            production,
            "batched",
            "op.create_table('notes', sa.Column('id', sa.Integer, primary_key=True))\n"
            "    with op.batch_alter_table('posts') as batch_op:\n"
            "        batch_op.drop_column('no_such_column')\n"
            "        batch_op.add_column(sa.Column('later', sa.Integer))\n"
            "    op.create_index('ix_notes_id', 'notes', ['id'])",
        )
    )
    assert (
        "revision batched is half applied: 1 operation applied (create_table notes); "
        "failed, so not applied: drop_column posts.no_such_column; "
        "never ran: add_column posts.later, create_index notes.ix_notes_id;" in line
    ), line


def test_nothing_applied_says_so_with_its_way_out(production, database):
    assert upgrade(production).code == 0
    database.query("ALTER TABLE posts ADD COLUMN summary VARCHAR(50)")
    production.add_revision("twocols", HEAD, upgrade=TWO_COLUMNS)
    line = one_error_line(upgrade(production, "--allow-drift"))
    assert (
        "revision twocols is not applied: 0 operations applied; failed, so not applied: add_column posts.summary"
        in line
    )
    assert "never ran: add_column posts.legacy" in line
    assert "nothing of it is in the database; fix it, then run `invoke db.upgrade` again" in line
    # Nothing half done: the next upgrade is not refused, it fails the same way.
    again = one_error_line(upgrade(production, "--allow-drift"))
    assert "Duplicate column name 'summary'" in again and "left half applied" not in again


def test_a_half_applied_revision_blocks_upgrade_and_downgrade_until_resolved(production, database):
    half_applied(production, database)
    env = {"FLASK_CONFIG": "production"}
    # Refused before any question: no name, no password, nothing changed.
    for args in (("db.upgrade", "--yes"), ("db.downgrade",), ("db.downgrade", "--confirmed")):
        line = one_error_line(production.invoke(*args, env=env))
        assert "has a revision left half applied by db.upgrade" in line, line
        assert "revision twocols is half applied: 1 operation applied (add_column posts.summary)" in line
        assert "nothing is migrated until that is resolved: ways out: restore the backup" in line
        assert "(any of these resolves it)" in line and "db.reset" not in line  # not in production
    assert database.version() == HEAD and "summary" in columns(database, "posts")
    status = production.invoke("db.status", env=env)
    assert "unresolved: upgrades and downgrades refuse until a restore or a stamp" in status.out, status.output
    # --sql changes nothing: it still shows what finishing by hand would run.
    assert "ALTER TABLE posts ADD COLUMN legacy" in production.invoke("db.upgrade", "--sql", env=env).out
    # Undone by hand, then recorded: the stamp resolves it, and the fixed revision goes through.
    database.query("ALTER TABLE posts DROP COLUMN summary")
    stamped = production.invoke("db.stamp", HEAD, stdin=PASSWORD + "\n", env=env)
    assert stamped.code == 0, stamped.output
    production.add_revision("twocols", HEAD, upgrade="op.add_column('posts', sa.Column('summary', sa.String(50)))")
    result = upgrade(production)
    assert result.code == 0, result.output
    assert database.version() == "twocols"


def test_a_restore_resolves_a_half_applied_revision(production, database):
    line = half_applied(production, database)
    backup = line.split("`invoke db.restore ", 1)[1].split("`", 1)[0]
    env = {"FLASK_CONFIG": "production"}
    restored = production.invoke("db.restore", backup, stdin=f"{database.name}\n{PASSWORD}\n", env=env)
    assert restored.code == 0, restored.output
    assert "summary" not in columns(database, "posts")
    assert "unresolved" not in production.invoke("db.status", env=env).out
    production.add_revision("twocols", HEAD, upgrade="op.add_column('posts', sa.Column('summary', sa.String(50)))")
    assert upgrade(production).code == 0
    assert database.version() == "twocols"


def test_an_upgrade_with_nothing_to_do_asks_no_password(production, database):
    assert upgrade(production).code == 0
    # No standard input at all: the status is read with the application's user first, as fab does.
    result = production.invoke("db.upgrade", env={"FLASK_CONFIG": "production"})
    assert result.code == 0, result.output
    assert (
        f"{database.migration_user}@127.0.0.1:{database.server.port}/{database.name} is already at {HEAD}" in result.out
    )
    assert "nothing to do" in result.out and "Password" not in result.output


def columns(database, table: str) -> set[str]:
    return {row[0] for row in database.query(f"SHOW COLUMNS FROM {table}")}


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


def test_a_password_in_a_failing_operations_name_is_masked_in_the_error_and_the_run_log(production, database):
    result = upgrade_from_head(
        production,
        "leaky",
        "op.add_column('posts', sa.Column('summary', sa.String(50)))\n    "
        f"op.execute({f'SELECT {PASSWORD!r} FROM no_such_table'!r})",
    )
    line = one_error_line(result)
    assert "revision leaky is half applied: 1 operation applied (add_column posts.summary)" in line
    assert 'failed, so not applied: execute SELECT "***" FROM no_such_table' in line, line
    assert PASSWORD not in result.err  # (the lint's warning on stdout quotes the script as it is)
    log = (production.path / "instance" / "migration-runs.jsonl").read_text()
    assert PASSWORD not in log
    (left,) = [run["left"] for run in map(json.loads, log.splitlines()) if run["left"]]
    assert 'failed, so not applied: execute SELECT "***" FROM no_such_table' in left["summary"]
    refusal = one_error_line(upgrade(production))
    assert "has a revision left half applied" in refusal and PASSWORD not in refusal
