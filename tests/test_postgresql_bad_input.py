"""test_bad_input.py's cases that concern the database, against PostgreSQL: wrong or unencoded
passwords, databases that are missing or not granted, input that is not UTF-8, a migration's error
quoting the password; and the same failures from a server whose messages are not in English."""

from __future__ import annotations

from urllib.parse import quote

import psycopg
import pytest
from helpers import (
    APP_PASSWORD,
    HEAD,
    PASSWORD,
    PRODUCTION,
    STDIN_PASSWORD,
    PortForward,
    live_only,
    make_pg_database,
    one_error_line,
    refused,
)
from netns import OtherHost
from servers import PostgreSQL
from test_bad_input import HOSTILE_PASSWORD, LEAKY, NOT_UTF8, password_fragments


def upgrade(checkout, stdin: str | bytes | None = STDIN_PASSWORD):
    return checkout.invoke("db.upgrade", "--yes", stdin=stdin, env=PRODUCTION)


def where(database, name: str | None = None) -> str:
    return f"{database.migration_user}@127.0.0.1:{database.server.port}/{name or database.name}"


# -- the database's answers, one line each ---------------------------------------------------------


def test_a_wrong_password_and_an_unknown_role_are_access_denied(checkout, pg_database):
    checkout.use_production(pg_database)
    line = one_error_line(upgrade(checkout, stdin="not the password\n"))
    assert line == f"error: access denied for {where(pg_database)}: wrong user or password"
    checkout.write_settings(
        "production",
        SQLALCHEMY_DATABASE_URI=pg_database.app_url,
        SQLALCHEMY_ALEMBIC_URI=pg_database.migration_url.replace(pg_database.migration_user, "nobody", 1),
    )
    assert "error: access denied for nobody@127.0.0.1:" in one_error_line(upgrade(checkout))
    assert pg_database.tables() == set()


def test_a_database_the_role_may_not_connect_to_is_one_line(checkout, pg_database):
    pg_database.server.execute(f'REVOKE CONNECT ON DATABASE "{pg_database.name}" FROM PUBLIC')
    checkout.use_production(pg_database)
    # The app role reads the status first: refused before any password is asked.
    line = one_error_line(checkout.invoke("db.status", env=PRODUCTION))
    assert line == (
        f"error: {pg_database.app_user} may not use database '{pg_database.name}' "
        f"({pg_database.app_user}@127.0.0.1:{pg_database.server.port}/{pg_database.name}): is it granted?"
    )


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql+psycopg://app_blog:Tr0ub@dor?42xyz@127.0.0.1/blog",
        f"postgresql+psycopg://app_blog:{HOSTILE_PASSWORD}@127.0.0.1/blog",
        "postgresql+psycopg://app_blog:50%offSECRET@127.0.0.1/blog",
    ],
)
def test_an_unencoded_postgresql_password_is_refused_without_any_part_of_it(checkout, raw):
    checkout.write_settings("production", SQLALCHEMY_DATABASE_URI=raw)
    line = one_error_line(checkout.invoke("db.status", env=PRODUCTION))
    assert "quote(value, safe='')" in line
    password = raw.split("app_blog:", 1)[1].rsplit("@127.0.0.1", 1)[0]
    assert not [fragment for fragment in password_fragments(password) if fragment in line], line


def test_the_documented_encoding_works_for_every_character_on_postgresql(checkout, postgresql):
    database = make_pg_database(postgresql)
    postgresql.create_user("hostile", HOSTILE_PASSWORD, "SELECT", database.name)
    url = f"postgresql+psycopg://hostile:{quote(HOSTILE_PASSWORD, safe='')}@127.0.0.1:{postgresql.port}/{database.name}"
    checkout.use_production(database)
    checkout.write_settings("production", SQLALCHEMY_DATABASE_URI=url, SQLALCHEMY_ALEMBIC_URI=database.migration_url)
    result = checkout.invoke("db.current", env=PRODUCTION)
    assert result.code == 0, result.output
    assert result.out.strip() == "not stamped: empty database"


def test_a_password_that_is_not_utf8_is_one_line_on_postgresql(checkout, pg_database):
    checkout.use_production(pg_database)
    assert "standard input is not UTF-8" in one_error_line(upgrade(checkout, stdin=NOT_UTF8))
    assert pg_database.tables() == set()


@pytest.mark.parametrize("leak", LEAKY.values(), ids=LEAKY.keys())
def test_a_migration_error_quoting_the_password_is_masked_on_postgresql(checkout, pg_database, leak):
    checkout.use_production(pg_database)
    assert upgrade(checkout).code == 0
    checkout.add_revision("leaky0000001", HEAD, upgrade=live_only(f"raise RuntimeError('connected as ' + {leak})"))
    line = one_error_line(upgrade(checkout))
    assert "revision leaky0000001" in line and "connected as " in line and "***" in line
    for form in (PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD), repr(PASSWORD)[1:-1]):
        assert form not in line
    assert pg_database.version() == HEAD


def test_fab_refuses_a_wrong_password_for_postgresql(pg_remote):
    result = pg_remote.fab("prod", "db.upgrade", "--yes", stdin="not the password\n")
    line = refused(result, "access denied", pg_remote.database.migration_user)
    assert line.endswith("wrong user or password")
    assert pg_remote.state() == (None, set())


@pytest.mark.parametrize(("signal_name", "number"), [("SIGKILL", 9)])
def test_a_server_process_that_dies_mid_revision_is_one_line_and_rolled_back(pg_remote, signal_name, number):
    pg_remote.upgrade()
    kill = f"import os, signal; os.kill(os.getpid(), signal.{signal_name})"
    pg_remote.add_revision(
        "dead00000001", upgrade="op.create_table('doomed', sa.Column('id', sa.Integer))\n    " + live_only(kill)
    )
    line = refused(pg_remote.fab("prod", "db.upgrade", "--yes", stdin=STDIN_PASSWORD), f"killed by signal {number}")
    assert "`fab prod db.status`" in line
    # The dead process's transaction went with its connection: nothing of the revision remains.
    assert pg_remote.database.version() == HEAD and "doomed" not in pg_remote.database.tables()


# -- a server that speaks German -------------------------------------------------------------------

LOCALE = "de_DE.UTF-8"


@pytest.fixture(scope="module")
def german(tmp_path_factory):
    """A throwaway PostgreSQL whose lc_messages is German (compiled into its directory if need be)."""
    server = PostgreSQL(tmp_path_factory.mktemp("postgresql-de"), lc_messages=LOCALE)
    server.start()
    yield server
    server.stop()


def test_the_german_server_really_answers_in_german(german):
    """The premise of the tests below: libpq's message is not one the English matching knows."""
    database = make_pg_database(german)
    with pytest.raises(psycopg.OperationalError) as failed:
        psycopg.connect(
            host="127.0.0.1", port=german.port, dbname=database.name, user=database.migration_user, password="wrong"
        )
    message = str(failed.value)
    assert "Passwort-Authentifizierung" in message and "password authentication" not in message
    assert failed.value.sqlstate is None  # what psycopg gives for a failure while connecting


def test_a_german_servers_connection_failures_are_one_clear_line(checkout, german):
    database = make_pg_database(german)
    checkout.use_production(database)
    assert one_error_line(upgrade(checkout, stdin="not the password\n")) == (
        f"error: access denied for {where(database)}: wrong user or password"
    )
    checkout.write_settings(
        "production",
        SQLALCHEMY_DATABASE_URI=database.app_url + "_missing",
        SQLALCHEMY_ALEMBIC_URI=database.migration_url + "_missing",
    )
    line = one_error_line(upgrade(checkout))
    assert line == (
        f"error: database '{database.name}_missing' does not exist on the server "
        f"({where(database, database.name + '_missing')})"
    )
    german.execute(f'REVOKE CONNECT ON DATABASE "{database.name}" FROM PUBLIC')
    checkout.use_production(database)
    line = one_error_line(checkout.invoke("db.status", env=PRODUCTION))
    assert line.startswith(f"error: {database.app_user} may not use database '{database.name}' (")
    assert line.endswith("): is it granted?")
    assert PASSWORD not in line and APP_PASSWORD not in line


def test_a_german_servers_statement_errors_keep_their_code_and_its_words(checkout, german):
    database = make_pg_database(german)
    checkout.use_production(database)
    assert upgrade(checkout).code == 0
    checkout.add_revision("addcol", HEAD, upgrade="op.add_column('posts', sa.Column('extra', sa.Text()))")
    checkout.write_settings("production", SQLALCHEMY_DATABASE_URI=database.app_url)  # the app role migrates
    line = one_error_line(checkout.invoke("db.upgrade", "--yes", "--no-backup", env=PRODUCTION))
    assert f"failed: {database.app_user} lacks a privilege on " in line
    assert "Eigentümer der Tabelle posts" in line  # the server's own words, in its language


def test_a_session_ended_mid_revision_over_fab_is_one_line_saying_where_the_database_is(pg_remote):
    """The server ends the migration's session in the middle of a revision (an administrator's
    pg_terminate_backend): one line naming the revision, the server's reason, and the database's revision
    read again on a new connection; the revision's transaction went with the session."""
    pg_remote.upgrade()
    end_session = "op.get_bind().exec_driver_sql('SELECT pg_terminate_backend(pg_backend_pid())')"
    pg_remote.add_revision(
        "lost00000001", "op.create_table('doomed', sa.Column('id', sa.Integer))\n    " + live_only(end_session)
    )
    refused(
        pg_remote.fab("prod", "db.upgrade", "--yes", stdin=STDIN_PASSWORD),
        "revision lost00000001 (lost00000001) failed: the database server ended the connection to ",
        "(terminating connection due to administrator command)",
        f"the database is at {HEAD} (add tags)",
        "rolled back whole",
    )
    assert pg_remote.database.version() == HEAD and "doomed" not in pg_remote.database.tables()


# -- db.reset judges where the connection really goes -----------------------------------------------


@pytest.fixture(scope="module")
def other_pg_host(tmp_path_factory):
    """A PostgreSQL on "another machine": a network namespace of this module's own, over a veth pair."""
    with OtherHost(tmp_path_factory.mktemp("other-pg-host")) as other:
        server = other.postgresql()
        database = make_pg_database(server)
        database.query(f'CREATE TABLE keep (id int PRIMARY KEY); ALTER TABLE keep OWNER TO "{database.migration_user}"')
        yield other, server, database


@pytest.mark.parametrize("key", ["host", "hostaddr"])
def test_reset_refuses_a_postgresql_connection_that_goes_to_another_machine(checkout, other_pg_host, key):
    """The URL says localhost; libpq's own parameters in the engine options say otherwise."""
    other, server, database = other_pg_host
    url = f"postgresql+psycopg://{database.migration_user}:{quote(PASSWORD, safe='')}@localhost/{database.name}"
    path = checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=url)
    options = {"connect_args": {key: other.address, "port": server.port}}
    path.write_text(path.read_text() + f"SQLALCHEMY_ENGINE_OPTIONS = {options!r}\n")
    line = one_error_line(checkout.invoke("db.reset", "--force"))
    assert f"the connection went to {other.address}:{server.port}, not this machine" in line
    assert PASSWORD not in line and quote(PASSWORD, safe="") not in line
    assert database.tables() == {"keep"}


def test_reset_refuses_a_postgresql_server_behind_a_loopback_port_forward(checkout, other_pg_host):
    """ssh -L or socat: the socket goes to 127.0.0.1, the server is on another machine."""
    other, server, database = other_pg_host
    with PortForward((other.address, server.port)) as forward:
        credentials = f"{database.migration_user}:{quote(PASSWORD, safe='')}"
        url = f"postgresql+psycopg://{credentials}@127.0.0.1:{forward.port}/{database.name}"
        checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=url)
        line = one_error_line(checkout.invoke("db.reset", "--force"))
    assert f"the connection goes to 127.0.0.1:{forward.port}, but " in line
    assert "a port forward to another machine looks the same" in line
    assert PASSWORD not in line
    assert database.tables() == {"keep"}


def test_reset_of_a_local_postgresql_says_how_it_knows_the_server_is_here(checkout, pg_database):
    checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=pg_database.migration_url)
    result = checkout.invoke("db.reset", "--force", stdin=STDIN_PASSWORD)
    assert result.code == 0, result.output
    assert f"via 127.0.0.1:{pg_database.server.port}, as the server's process " in result.out
    assert "(postgres) holds the other end of this connection:" in result.out
