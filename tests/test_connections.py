"""Connections against real servers: how many more the server accepts (the fleet keeps within it), and
MariaDB's TLS context, built once per process and inherited by a fleet's forked children."""

from __future__ import annotations

import os
import ssl

import pymysql
import pytest
from sqlalchemy import make_url

from deploy.database import connect, engine_options, warm_up
from deploy.dialects import dialect_for, mariadb

# Other tests' connections on the session's server may still be closing: a count they changed between
# two readings is read again, up to this many times.
TRIES = 20


def spare_with_one_more(url) -> tuple[int | None, int | None]:
    """spare_connections() just before, and while, one more connection is open."""
    with connect(url) as connection:
        dialect = dialect_for(connection)
        before = dialect.spare_connections(connection)
        with connect(url):
            during = dialect.spare_connections(connection)
    return before, during


def test_spare_connections_drop_by_one_when_one_more_connection_opens(any_database):
    # The application's user: no PROCESS, no pg_read_all_stats; it sees other roles' sessions too.
    url = make_url(any_database.app_url)
    readings = []
    for _ in range(TRIES):
        before, during = spare_with_one_more(url)
        readings.append((before, during))
        if during == before - 1:
            break
    else:
        pytest.fail(f"spare connections never dropped by exactly one: {readings}")
    assert 0 < during < before


def test_spare_connections_count_another_users_sessions(server_kind):
    """A session of another user (whose details this one may not see) still takes a slot."""
    mine, theirs = server_kind.database(), server_kind.database()
    url = make_url(mine.app_url)
    readings = []
    for _ in range(TRIES):
        with connect(url) as connection:
            dialect = dialect_for(connection)
            before = dialect.spare_connections(connection)
            with connect(make_url(theirs.app_url)):
                during = dialect.spare_connections(connection)
        readings.append((before, during))
        if during == before - 1:
            return
    pytest.fail(f"another user's connection was not counted: {readings}")


def test_sqlite_has_no_limit_to_tell(tmp_path):
    url = make_url(f"sqlite:///{tmp_path / 'app.db'}")
    with connect(url, create=True) as connection:
        assert dialect_for(connection).spare_connections(connection) is None


def tls_context_of(connection) -> ssl.SSLContext:
    return connection.connection.dbapi_connection.ctx


@pytest.mark.mariadb
def test_mariadb_connections_of_one_process_share_one_tls_context(database):
    url = make_url(database.app_url)
    with connect(url) as first:
        context = tls_context_of(first)
    with connect(url) as second:
        assert tls_context_of(second) is context
    # Verified exactly as PyMySQL's own default for the same URL (preferred TLS, no certificate check).
    own = pymysql.connect(host=url.host, port=url.port, user=url.username, password=url.password, defer_connect=True)
    assert own.ctx is not context
    assert (context.verify_mode, context.check_hostname, context.options, context.verify_flags) == (
        own.ctx.verify_mode,
        own.ctx.check_hostname,
        own.ctx.options,
        own.ctx.verify_flags,
    )


@pytest.mark.mariadb
def test_mariadb_tls_options_get_a_shared_context_of_their_own(database, monkeypatch):
    """Connections that ask to verify the server get PyMySQL's strict context, shared among them."""
    monkeypatch.setattr(mariadb, "_TLS_CONTEXTS", {})
    url = make_url(database.app_url)
    driver = engine_options(url)["module"]
    where = dict(host=url.host, port=url.port, user=url.username, defer_connect=True)
    verified = {"ca": ssl.get_default_verify_paths().openssl_cafile}
    preferred, required = driver.connect(**where).ctx, driver.connect(**where, ssl=verified).ctx
    assert required is not preferred and driver.connect(**where, ssl=dict(verified)).ctx is required
    assert (preferred.verify_mode, preferred.check_hostname) == (ssl.CERT_NONE, False)
    assert (required.verify_mode, required.check_hostname) == (ssl.CERT_REQUIRED, True)


@pytest.mark.mariadb
def test_a_forked_child_connects_with_the_context_its_parent_warmed_up(database, monkeypatch):
    monkeypatch.setattr(mariadb, "_TLS_CONTEXTS", {})
    url = make_url(database.app_url)
    warm_up(url)  # as a fleet's server process does before forking: no connection
    (warmed,) = mariadb._TLS_CONTEXTS.values()
    child = os.fork()
    if child == 0:
        try:
            with connect(url) as connection:
                os._exit(0 if tls_context_of(connection) is warmed else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "0: inherited, 1: built again, 2: failed"
