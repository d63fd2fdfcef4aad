"""The branch workflow (deploy/checks.py) on the real throwaway MariaDB: db.check --url, db.schema,
db.detect, and `fab prod db.detect` through the loopback sshd."""

from urllib.parse import quote

from helpers import HEAD, PASSWORD, POSTS, STDIN_PASSWORD, make_database, one_error_line, refused
from test_workflow import add_bio

PRODUCTION = {"FLASK_CONFIG": "production"}


def scratch_url(database) -> str:
    """The migration user's URL with its password, percent-encoded as a URL wants it."""
    user, port = database.migration_user, database.server.port
    return f"mysql+pymysql://{user}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/{database.name}"


def upgrade(checkout, database, to: str = "head") -> None:
    checkout.use_production(database)
    result = checkout.invoke("db.upgrade", "--yes", f"--to={to}", stdin=STDIN_PASSWORD, env=PRODUCTION)
    assert result.code == 0, result.output
    assert database.version() == (HEAD if to == "head" else to)


def unstamped_at(checkout, database, revision: str) -> None:
    """A database that predates the migrations: revision's schema, no alembic_version."""
    upgrade(checkout, database, revision)
    database.query("DROP TABLE alembic_version")
    assert database.version() is None and database.tables()


def test_check_on_an_empty_mariadb_database_passes_then_finds_drift_and_drops_what_it_built(checkout, mariadb):
    database = make_database(mariadb)
    url = scratch_url(database)
    result = checkout.invoke("db.check", "--url", url)
    assert result.code == 0, result.output
    assert f"on {database.migration_user}@127.0.0.1:{mariadb.port}/{database.name}: 3 round trips" in result.out
    assert result.out.rstrip().endswith("ok")
    assert PASSWORD not in result.output
    assert database.tables() == set()

    add_bio(checkout)
    drifted = checkout.invoke("db.check", "--url", url)
    assert "FAILED drift" in drifted.out and "op.add_column('users', sa.Column('bio'" in drifted.out
    assert one_error_line(drifted) == "error: db.check failed: drift"
    assert database.tables() == set()


def test_check_refuses_a_mariadb_database_that_is_not_empty(checkout, database):
    database.query("CREATE TABLE legacy (id INT PRIMARY KEY)")
    line = one_error_line(checkout.invoke("db.check", "--url", scratch_url(database)))
    assert "is not empty (legacy)" in line and PASSWORD not in line
    assert database.tables() == {"legacy"}


def test_schema_and_diff_read_a_production_mariadb_database(checkout, database):
    upgrade(checkout, database)
    result = checkout.invoke("db.schema", "--diff", env=PRODUCTION)
    assert result.code == 0, result.output
    # Read with the application's user: no password asked for.
    assert f"{database.app_user}@127.0.0.1:{database.server.port}/{database.name} ({HEAD}): 4 tables" in result.out
    assert "table users\n  id INTEGER NOT NULL PRIMARY KEY\n" in result.out
    assert "fk_post_tags_post_id_posts (post_id) -> posts(id) ON DELETE CASCADE" in result.out
    # A unique constraint is an index too: listed once.
    assert result.out.count("uq_users_email") == 1, result.out
    assert result.out.rstrip().endswith("the models match the database")
    plain = checkout.invoke("db.schema", env=PRODUCTION)
    assert plain.code == 0 and "the models" not in plain.out, plain.output
    add_bio(checkout)
    drifted = checkout.invoke("db.schema", "--diff", env=PRODUCTION)
    assert "(1 operation):\n  op.add_column('users', sa.Column('bio', sa.Text(), nullable=True))" in drifted.out


def test_detect_stamps_the_revision_a_mariadb_database_matches(checkout, database):
    unstamped_at(checkout, database, POSTS)
    unconfirmed = checkout.invoke("db.detect", stdin=STDIN_PASSWORD, env=PRODUCTION)
    assert f"matches revision {POSTS}" in unconfirmed.out
    assert "not confirmed" in one_error_line(unconfirmed)
    assert database.version() is None
    result = checkout.invoke("db.detect", "--yes", stdin=STDIN_PASSWORD, env=PRODUCTION)
    assert result.code == 0, result.output
    assert f"matches revision {POSTS}" in result.out and f"stamped at {POSTS}" in result.out
    assert PASSWORD not in result.output
    assert database.version() == POSTS
    assert "stamped already" in one_error_line(checkout.invoke("db.detect", "--report", env=PRODUCTION))


def test_detect_report_reads_without_a_password_and_stamps_nothing(checkout, database):
    checkout.use_production(database)
    assert "has no tables" in one_error_line(checkout.invoke("db.detect", "--report", env=PRODUCTION))
    unstamped_at(checkout, database, POSTS)
    result = checkout.invoke("db.detect", "--report", env=PRODUCTION)
    assert result.code == 0, result.output
    assert result.out.rstrip().splitlines()[-1] == f"match: {POSTS}"
    assert database.version() is None


def test_fab_detect_stamps_the_servers_database_after_confirmation(remote):
    unstamped_at(remote.server, remote.database, POSTS)
    before = remote.state()
    # No terminal and no --yes: the answer is no, before any password is read.
    unconfirmed = remote.fab("prod", "db.detect", stdin=STDIN_PASSWORD)
    assert f"matches revision {POSTS}" in unconfirmed.out
    refused(unconfirmed, "not confirmed")
    assert remote.state() == before

    result = remote.fab("prod", "db.detect", "--yes", stdin=STDIN_PASSWORD)
    assert result.code == 0, result.output
    assert f"matches revision {POSTS}" in result.out and f"stamped at {POSTS}" in result.out
    assert f"match: {POSTS}" not in result.out
    assert PASSWORD not in result.output
    assert remote.state() == (POSTS, before[1] | {"alembic_version"})
    refused(remote.fab("prod", "db.detect", "--yes", stdin=STDIN_PASSWORD), "stamped already")


def test_fab_detect_stamps_nothing_without_a_single_match(remote):
    remote.database.query("CREATE TABLE legacy (id INT PRIMARY KEY)")
    remote.refuses("no single revision matches", args=("prod", "db.detect", "--yes"))
