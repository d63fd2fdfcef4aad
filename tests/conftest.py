"""Fixtures: throwaway servers (servers.py), checkouts to work in, the fab setup; helpers.py has the rest."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import (
    DATABASE_MAKERS,
    Checkout,
    Database,
    PgDatabase,
    Remote,
    ServerKind,
    make_database,
    make_pg_database,
)
from servers import MariaDB, PostgreSQL, SSHServer, server_environment

# The run must not depend on the shell that starts it: every process the tests start, by any means,
# sees what CI gives them (no caller's locale, no PYTHONUNBUFFERED...).
_as_in_ci = server_environment()
os.environ.clear()
os.environ.update(_as_in_ci)

# Nor on how it was started: a shell without job control (a script's `cmd &`, some CI runners) starts
# its background commands with SIGINT ignored, every process started from them inherits that, and
# Python then never raises KeyboardInterrupt: a Ctrl-C sent to fab would do nothing, where at a user's
# terminal it ends the command. Handled here, the processes the tests start get SIGINT's default again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def no_remembered_passwords(monkeypatch):
    """Each test starts with no password remembered for masking: this process's set would otherwise
    carry an earlier in-process test's passwords into the next one (on the same xdist worker)."""
    from deploy import errors

    monkeypatch.setattr(errors, "_known_passwords", set())


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    """One throwaway MariaDB for the session; tests get their own database and users."""
    with MariaDB(tmp_path_factory.mktemp("mariadb")) as server:
        yield server


@pytest.fixture(scope="session")
def postgresql(tmp_path_factory):
    """One throwaway PostgreSQL for the session (initdb into a temporary directory, a free loopback port);
    tests get their own database and roles."""
    with PostgreSQL(tmp_path_factory.mktemp("postgresql")) as server:
        yield server


@pytest.fixture
def pg_database(postgresql) -> PgDatabase:
    return make_pg_database(postgresql)


@pytest.fixture
def database(mariadb) -> Database:
    return make_database(mariadb)


@pytest.fixture
def checkout(tmp_path) -> Checkout:
    return Checkout(tmp_path / "app")


@pytest.fixture
def sshd(tmp_path_factory):
    with SSHServer(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def production_remote(tmp_path, database, sshd) -> Remote:
    """A laptop checkout and a server checkout whose production settings point at `database`."""
    server = Checkout(tmp_path / "server")
    server.use_production(database)
    remote = Remote(Checkout(tmp_path / "local"), server, database, sshd, tmp_path / "fab.yaml")
    remote.configure()
    return remote


@pytest.fixture
def remote(tmp_path, database, sshd) -> Remote:
    return production_remote(tmp_path, database, sshd)


@pytest.fixture
def pg_remote(tmp_path, pg_database, sshd) -> Remote:
    """As `remote`, the server checkout's production settings pointing at a PostgreSQL database."""
    return production_remote(tmp_path, pg_database, sshd)


def pytest_configure(config):
    for kind in DATABASE_MAKERS:
        config.addinivalue_line("markers", f"{kind}: a test of what only a {kind} server does")


def pytest_collection_modifyitems(items):
    """A test run on each kind carries its kind's mark too: `-m postgresql` selects all of PostgreSQL's."""
    for item in items:
        params = getattr(item, "callspec", None) and item.callspec.params
        kind = params and (params.get("server_kind") or params.get("elsewhere"))
        if kind in DATABASE_MAKERS:
            item.add_marker(kind)


@pytest.fixture(params=list(DATABASE_MAKERS))
def server_kind(request) -> ServerKind:
    """Each kind of database server in turn (test ids end in [mariadb] or [postgresql]); only the kind's
    own session server is started."""
    return ServerKind(request.param, request.getfixturevalue(request.param))


@pytest.fixture
def any_database(server_kind) -> Database | PgDatabase:
    """`database` or `pg_database`, by `server_kind`."""
    return server_kind.database()


@pytest.fixture
def any_remote(tmp_path, any_database, sshd) -> Remote:
    """`remote` or `pg_remote`, by `server_kind`."""
    return production_remote(tmp_path, any_database, sshd)
