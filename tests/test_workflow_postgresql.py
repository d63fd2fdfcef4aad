"""The branch workflow (deploy/checks.py) on the throwaway PostgreSQL, as test_workflow_mariadb.py does
on MariaDB: db.check --url, db.schema [--diff], db.detect (`fab prod db.detect` is in
test_postgresql_remote.py)."""

from urllib.parse import quote

from helpers import HEAD, PASSWORD, POSTS, PRODUCTION, STDIN_PASSWORD, make_pg_database, one_error_line
from test_workflow import add_bio


def scratch_url(database) -> str:
    """The migration role's URL with its password, percent-encoded as a URL wants it."""
    user, port = database.migration_user, database.server.port
    return f"postgresql+psycopg://{user}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/{database.name}"


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


def leftovers(database) -> tuple:
    """What the checks could leave behind in the schema besides tables: sequences, types, views."""
    return database.query(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' UNION ALL "
        "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c') AND t.typrelid = 0"
    )


def test_check_on_an_empty_postgresql_database_passes_then_finds_drift_and_drops_what_it_built(checkout, postgresql):
    database = make_pg_database(postgresql)
    url = scratch_url(database)
    result = checkout.invoke("db.check", "--url", url)
    assert result.code == 0, result.output
    assert f"on {database.migration_user}@127.0.0.1:{postgresql.port}/{database.name}: 3 round trips" in result.out
    assert result.out.rstrip().endswith("ok")
    assert PASSWORD not in result.output
    assert database.tables() == set() and leftovers(database) == ()

    add_bio(checkout)
    drifted = checkout.invoke("db.check", "--url", url)
    assert "FAILED drift" in drifted.out and "op.add_column('users', sa.Column('bio'" in drifted.out
    assert one_error_line(drifted) == "error: db.check failed: drift"
    assert database.tables() == set() and leftovers(database) == ()


def test_check_refuses_a_postgresql_database_that_is_not_empty(checkout, pg_database):
    pg_database.query(
        f'CREATE TABLE legacy (id int PRIMARY KEY); ALTER TABLE legacy OWNER TO "{pg_database.migration_user}"'
    )
    line = one_error_line(checkout.invoke("db.check", "--url", scratch_url(pg_database)))
    assert "is not empty (legacy)" in line and PASSWORD not in line
    assert pg_database.tables() == {"legacy"}


def test_schema_and_diff_read_a_production_postgresql_database(checkout, pg_database):
    upgrade(checkout, pg_database)
    result = checkout.invoke("db.schema", "--diff", env=PRODUCTION)
    assert result.code == 0, result.output
    # Read with the application's role: no password asked for.
    where = f"{pg_database.app_user}@127.0.0.1:{pg_database.server.port}/{pg_database.name}"
    assert f"{where} ({HEAD}): 4 tables" in result.out
    assert "table users\n  id INTEGER NOT NULL PRIMARY KEY DEFAULT nextval('users_id_seq'::regclass)\n" in result.out
    assert "  status VARCHAR(20) NOT NULL DEFAULT 'draft'::character varying\n" in result.out
    assert "fk_post_tags_post_id_posts (post_id) -> posts(id) ON DELETE CASCADE" in result.out
    # A unique constraint is an index too: listed once.
    assert result.out.count("uq_users_email") == 1, result.out
    assert result.out.rstrip().endswith("the models match the database")
    plain = checkout.invoke("db.schema", env=PRODUCTION)
    assert plain.code == 0 and "the models" not in plain.out, plain.output
    add_bio(checkout)
    drifted = checkout.invoke("db.schema", "--diff", env=PRODUCTION)
    assert "(1 operation):\n  op.add_column('users', sa.Column('bio', sa.Text(), nullable=True))" in drifted.out


def test_detect_stamps_the_revision_a_postgresql_database_matches(checkout, pg_database):
    checkout.use_production(pg_database)
    assert "has no tables" in one_error_line(checkout.invoke("db.detect", "--report", env=PRODUCTION))
    unstamped_at(checkout, pg_database, POSTS)
    report = checkout.invoke("db.detect", "--report", env=PRODUCTION)
    assert report.code == 0 and report.out.rstrip().splitlines()[-1] == f"match: {POSTS}", report.output
    unconfirmed = checkout.invoke("db.detect", stdin=STDIN_PASSWORD, env=PRODUCTION)
    assert f"matches revision {POSTS}" in unconfirmed.out
    assert "not confirmed" in one_error_line(unconfirmed)
    assert pg_database.version() is None
    result = checkout.invoke("db.detect", "--yes", stdin=STDIN_PASSWORD, env=PRODUCTION)
    assert result.code == 0, result.output
    assert f"stamped at {POSTS}" in result.out and PASSWORD not in result.output
    assert pg_database.version() == POSTS
    assert "stamped already" in one_error_line(checkout.invoke("db.detect", "--report", env=PRODUCTION))
