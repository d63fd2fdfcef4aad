"""Bad settings, bad input and faults, as an attacker or a careless operator would try them.

One place for the list of what has been tried: each case ends in one clear line, changes nothing
it should not, and shows no part of a password. A test taking `server_kind` (or a fixture built on it)
runs on MariaDB and PostgreSQL; one marked by its kind tries what only that kind has: MariaDB's option
files and signals, PostgreSQL's roles, its ended sessions, and a server whose messages are not in English."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote

import psycopg
import pytest
from helpers import (
    APP_PASSWORD,
    BASE,
    HEAD,
    PASSWORD,
    PRODUCTION,
    STDIN_PASSWORD,
    Checkout,
    PortForward,
    Remote,
    live_only,
    make_database,
    make_pg_database,
    one_error_line,
    refused,
    sqlite,
    tables,
)
from netns import OtherHost
from servers import MariaDB, PostgreSQL

NOT_UTF8 = b"\xff\xfepw\n"
# Each character the URL, the shell and ConfigParser treat specially, '+' (which quote_plus gets wrong) and a space.
HOSTILE_PASSWORD = "Tr0ub@dor?42xyz:/%#'+ end"


def upgrade(checkout, stdin: str | bytes | None = STDIN_PASSWORD):
    return checkout.invoke("db.upgrade", "--yes", stdin=stdin, env=PRODUCTION)


def where(database, name: str | None = None) -> str:
    return f"{database.migration_user}@127.0.0.1:{database.server.port}/{name or database.name}"


def production(checkout, database, **settings) -> dict:
    checkout.use_production(database)
    if settings:
        checkout.write_settings("production", **settings)
    return {"FLASK_CONFIG": "production"}


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["db.upgrade", "--to", "zzz"], {}, "Can't locate revision identified by 'zzz'"),
        (["db.current"], {"FLASK_CONFIG": "nope"}, "unknown settings 'nope'"),
        (["db.upgrade"], {"FLASK_CONFIG": "production"}, "production.cfg is missing"),
        (["db.current"], {}, "no database at"),
    ],
)
def test_expected_failures_are_one_line(checkout, args, env, expected):
    assert expected in one_error_line(checkout.invoke(*args, env=env))


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("INVOKE_DB_SAFETY_LOCK_WAIT", "abc", "expects a number of seconds"),
        ("INVOKE_DB_SAFETY_RETRY_PAUSE", "-3", "expects a number of seconds"),
        ("INVOKE_DB_SAFETY_RETRIES", "five", "expects a whole number"),
        ("INVOKE_DB_RESET_SETTINGS", "production", "expects a list of settings names"),
    ],
)
def test_a_wrong_value_in_invokes_environment_config_is_one_line_naming_the_variable(
    checkout, variable, value, expected
):
    """Invoke casts its INVOKE_DB_* variables before any task runs: a bad one must still be one line."""
    assert checkout.invoke("db.upgrade").code == 0
    line = one_error_line(checkout.invoke("db.reset", env={variable: value}))
    assert line.startswith(f"error: {variable}={value!r}: {expected}")
    assert "posts" in tables(checkout)  # nothing was dropped


def test_a_wrong_key_or_value_in_invoke_yaml_is_one_line_naming_the_key(checkout):
    (checkout.path / "invoke.yaml").write_text("db:\n  safety:\n    lock_wiat: 30\n")
    assert "db.safety.lock_wiat is not a setting" in one_error_line(checkout.invoke("db.status"))
    (checkout.path / "invoke.yaml").write_text("db:\n  reset_settings: development\n")
    assert "db.reset_settings 'development' in Invoke's config (invoke.yaml): expects a list" in (
        one_error_line(checkout.invoke("db.status"))
    )


# -- 1. db.reset judges where the connection really goes --------------------------------------


@dataclass
class Elsewhere:
    """A database on "another machine" (a network namespace of this module's own, over a veth pair),
    holding one table, `keep`, that a reset must leave alone."""

    other: OtherHost
    server: MariaDB | PostgreSQL
    scheme: str
    user: str
    password: str
    name: str

    def url(self, host: str) -> str:
        return f"{self.scheme}://{self.user}:{quote(self.password, safe='')}@{host}/{self.name}"

    def tables(self) -> set[str]:
        if isinstance(self.server, MariaDB):
            return {row[0] for row in self.server.execute(f"SHOW TABLES FROM {self.name}")}
        return {
            row[0]
            for row in self.server.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database=self.name
            )
        }


@pytest.fixture(scope="module")
def other_mariadb_host(tmp_path_factory):
    with OtherHost(tmp_path_factory.mktemp("other-host")) as other:
        server = other.mariadb()
        server.create_database("blog")
        server.create_user("dev", "dev-pw", "ALL PRIVILEGES", "blog")
        server.execute("CREATE TABLE blog.keep (id INT PRIMARY KEY)")
        yield Elsewhere(other, server, "mysql+pymysql", "dev", "dev-pw", "blog")


@pytest.fixture(scope="module")
def other_postgresql_host(tmp_path_factory):
    with OtherHost(tmp_path_factory.mktemp("other-pg-host")) as other:
        server = other.postgresql()
        database = make_pg_database(server)
        database.query(f'CREATE TABLE keep (id int PRIMARY KEY); ALTER TABLE keep OWNER TO "{database.migration_user}"')
        yield Elsewhere(other, server, "postgresql+psycopg", database.migration_user, PASSWORD, database.name)


@pytest.fixture
def elsewhere(request) -> Elsewhere:
    """The other machine's database of the kind the test is parametrized with (indirect)."""
    return request.getfixturevalue(f"other_{request.param}_host")


def redirect_by_engine_options(checkout, elsewhere, key="host"):
    """The URL says localhost; the driver's own parameters in the engine options say otherwise."""
    path = checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=elsewhere.url("localhost"))
    options = {"connect_args": {key: elsewhere.other.address, "port": elsewhere.server.port}}
    path.write_text(path.read_text() + f"SQLALCHEMY_ENGINE_OPTIONS = {options!r}\n")


def redirect_by_hostaddr(checkout, elsewhere):
    redirect_by_engine_options(checkout, elsewhere, key="hostaddr")  # libpq's numeric address


def redirect_by_option_file(checkout, elsewhere):
    option_file = checkout.path / "instance" / "client.cnf"
    option_file.parent.mkdir(exist_ok=True)
    option_file.write_text(f"[client]\nhost = {elsewhere.other.address}\nport = {elsewhere.server.port}\n")
    url = f"mysql+pymysql://dev:dev-pw@/blog?read_default_file={quote(str(option_file), safe='')}"
    checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=url)


@pytest.mark.parametrize(
    ("elsewhere", "redirect"),
    [
        ("mariadb", redirect_by_engine_options),
        ("mariadb", redirect_by_option_file),
        ("postgresql", redirect_by_engine_options),
        ("postgresql", redirect_by_hostaddr),
    ],
    indirect=["elsewhere"],
)
def test_reset_refuses_a_connection_that_goes_to_another_machine(checkout, elsewhere, redirect):
    redirect(checkout, elsewhere)
    line = one_error_line(checkout.invoke("db.reset", "--force"))
    assert f"the connection went to {elsewhere.other.address}:{elsewhere.server.port}, not this machine" in line
    assert elsewhere.password not in line and quote(elsewhere.password, safe="") not in line
    assert elsewhere.tables() == {"keep"}


@pytest.mark.parametrize("elsewhere", ["mariadb", "postgresql"], indirect=True)
def test_reset_refuses_a_server_behind_a_loopback_port_forward(checkout, elsewhere):
    """ssh -L or socat: the socket goes to 127.0.0.1, the server is on another machine."""
    with PortForward((elsewhere.other.address, elsewhere.server.port)) as forward:
        checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=elsewhere.url(f"127.0.0.1:{forward.port}"))
        line = one_error_line(checkout.invoke("db.reset", "--force"))
    assert f"the connection goes to 127.0.0.1:{forward.port}, but " in line
    assert "a port forward to another machine looks the same" in line
    assert elsewhere.password not in line
    assert elsewhere.tables() == {"keep"}


@pytest.mark.mariadb
def test_reset_refuses_a_server_behind_a_unix_socket_forward(checkout, other_mariadb_host, tmp_path):
    """socat UNIX-LISTEN:...,fork TCP:elsewhere: a Unix socket on this machine, the server on another."""
    elsewhere = other_mariadb_host
    path = tmp_path / "forward.sock"
    with PortForward((elsewhere.other.address, elsewhere.server.port), unix_path=path):
        url = f"mysql+pymysql://dev:dev-pw@localhost/blog?unix_socket={quote(str(path), safe='')}"
        checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=url)
        line = one_error_line(checkout.invoke("db.reset", "--force"))
    assert f"the connection goes to Unix socket {path}, but the socket is held by process " in line
    assert elsewhere.tables() == {"keep"}


# The name of the server's process that holds the other end of a local connection.
SERVER_PROCESS = {"mariadb": "mariadbd", "postgresql": "postgres"}


@pytest.mark.parametrize(
    ("server_kind", "scheme"),
    [("mariadb", "mysql"), ("mariadb", "mariadb"), ("postgresql", "postgresql")],
    indirect=["server_kind"],
)
def test_reset_of_a_local_server_reports_the_address_used_and_the_proof(checkout, server_kind, any_database, scheme):
    database = any_database
    app_url, migration_url = (f"{scheme}{url[url.index('+') :]}" for url in (database.app_url, database.migration_url))
    checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=app_url, SQLALCHEMY_ALEMBIC_URI=migration_url)
    result = checkout.invoke("db.reset", "--force", stdin=STDIN_PASSWORD)
    assert result.code == 0, result.output
    port, process = database.server.port, SERVER_PROCESS[server_kind.name]
    proof = (
        rf"via 127\.0\.0\.1:{port}, as the server's process (\d+) \({process}\) holds the other end of this connection:"
    )
    found = re.search(proof, result.out)
    assert found, result.out
    if server_kind.name == "mariadb":  # PostgreSQL's is the connection's own backend, forked for it
        assert found[1] == str(database.server.pid)


# -- 2. unencoded URLs ---------------------------------------------------------------------------


def password_fragments(password: str) -> list[str]:
    """The pieces a parser could cut a password into: any of them shown is a leak."""
    pieces = [password]
    for separator in "@:/%#?' +":
        pieces = [part for piece in pieces for part in piece.split(separator)]
    return [piece for piece in pieces if len(piece) >= 3]


@pytest.mark.parametrize("scheme", ["mysql+pymysql", "postgresql+psycopg"])
@pytest.mark.parametrize(
    "credentials",
    ["app_blog:Tr0ub@dor?42xyz", f"app_blog:{HOSTILE_PASSWORD}", "app_blog:50%offSECRET"],
)
def test_an_unencoded_password_is_refused_without_any_part_of_it(checkout, scheme, credentials):
    raw = f"{scheme}://{credentials}@127.0.0.1/blog"
    checkout.write_settings("production", SQLALCHEMY_DATABASE_URI=raw)
    line = one_error_line(checkout.invoke("db.status", env={"FLASK_CONFIG": "production"}))
    assert "quote(value, safe='')" in line
    password = raw.split("app_blog:", 1)[1].rsplit("@127.0.0.1", 1)[0]
    assert not [fragment for fragment in password_fragments(password) if fragment in line], line


def test_the_documented_encoding_works_for_every_character(checkout, server_kind, any_database):
    database, server = any_database, server_kind.server
    server.create_user("hostile", HOSTILE_PASSWORD, "SELECT", database.name)
    scheme = database.app_url.split("://", 1)[0]
    url = f"{scheme}://hostile:{quote(HOSTILE_PASSWORD, safe='')}@127.0.0.1:{server.port}/{database.name}"
    env = production(checkout, database, SQLALCHEMY_DATABASE_URI=url, SQLALCHEMY_ALEMBIC_URI=database.migration_url)
    result = checkout.invoke("db.current", env=env)
    assert result.code == 0, result.output
    assert result.out.strip() == "not stamped: empty database"


# -- 3. bytes that are not UTF-8 on standard input -------------------------------------------------


def test_a_password_that_is_not_utf8_is_one_line(checkout, any_database):
    env = production(checkout, any_database)
    line = one_error_line(checkout.invoke("db.upgrade", "--yes", stdin=NOT_UTF8, env=env))
    assert "standard input is not UTF-8" in line
    assert any_database.tables() == set()


def test_a_database_name_that_is_not_utf8_is_one_line(checkout, database):
    env = production(checkout, database)
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env).code == 0
    line = one_error_line(checkout.invoke("db.downgrade", stdin=NOT_UTF8 + STDIN_PASSWORD.encode(), env=env))
    assert "standard input is not UTF-8" in line
    assert database.version() == HEAD


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (("prod", "db.upgrade", "--yes"), NOT_UTF8),
        (("prod", "db.downgrade", f"--to={BASE}"), NOT_UTF8 + STDIN_PASSWORD.encode()),
    ],
    # Named, not derived from the values: pytest puts a test's id in PYTEST_CURRENT_TEST, where a
    # parallel test's leak check would find the password.
    ids=["upgrade", "downgrade"],
)
def test_fab_with_input_that_is_not_utf8_ends_in_one_line(remote, args, stdin):
    if args[1] == "db.downgrade":
        remote.upgrade()
    before = remote.state()
    line = refused(remote.fab(*args, stdin=stdin), "standard input is not UTF-8")
    assert line.startswith("error: standard input")
    assert remote.state() == before


# -- 4. SSH transport: peers that do not speak SSH -------------------------------------------------


class FakePeer(threading.Thread):
    """A loopback listener that accepts SSH clients and never answers as SSH does."""

    def __init__(self, reply: bytes | None):
        super().__init__(daemon=True)
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))  # the kernel picks a free port: no race
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []

    def run(self) -> None:
        while True:
            try:
                peer, _ = self.listener.accept()
            except OSError:
                return
            if self.reply is None:
                self.held.append(peer)  # silent: never a banner
            else:
                peer.sendall(self.reply)
                peer.close()

    def close(self) -> None:
        self.listener.close()
        for peer in self.held:
            peer.close()


@pytest.mark.parametrize("reply", [None, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"])
def test_a_peer_that_does_not_speak_ssh_is_one_line_within_the_connect_timeout(remote, reply):
    peer = FakePeer(reply)
    peer.start()
    try:
        remote.configure(host=f"{remote.sshd.user}@127.0.0.1:{peer.port}", fabric={"timeouts": {"connect": 2}})
        started = time.monotonic()
        line = remote.refuses("cannot reach", f"127.0.0.1:{peer.port}")
        waited = time.monotonic() - started
    finally:
        peer.close()
    assert "no SSH server answered within 2 s" in line
    # timeouts.connect (2 s) bounds the wait, not paramiko's 15 s or our default of 10.
    assert waited < 8, waited


# -- 5. a server-side process that dies --------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_kind", "signal_name", "number"),
    [("mariadb", "SIGKILL", 9), ("mariadb", "SIGSEGV", 11), ("postgresql", "SIGKILL", 9)],
    indirect=["server_kind"],
)
def test_a_server_process_that_dies_is_one_line_naming_the_signal(any_remote, signal_name, number):
    remote = any_remote
    remote.upgrade()
    kill = f"import os, signal; os.kill(os.getpid(), signal.{signal_name})"
    remote.add_revision(
        "dead00000001", upgrade="op.create_table('doomed', sa.Column('id', sa.Integer))\n    " + live_only(kill)
    )
    line = refused(remote.fab("prod", "db.upgrade", "--yes", stdin=STDIN_PASSWORD), f"killed by signal {number}")
    assert "`fab prod db.status`" in line
    assert remote.database.version() == remote.local.revisions()[-2] == HEAD
    # PostgreSQL's DDL is transactional: the dead process's transaction went with its connection, and
    # nothing of the revision remains. MariaDB commits each CREATE TABLE as it runs.
    assert ("doomed" in remote.database.tables()) == isinstance(remote.database.server, MariaDB)


# -- 6. status cannot plan with several heads ------------------------------------------------------


def test_status_with_two_unapplied_heads_does_not_claim_up_to_date(checkout):
    checkout.invoke("db.reset")
    checkout.add_revision("branch000001", BASE)
    result = checkout.invoke("db.status")
    assert result.code == 0, result.output
    assert "several heads" in result.out
    assert "up to date" not in result.out and "pending:    unknown" in result.out
    machine = json.loads(checkout.invoke("db.status", "--json").out)
    assert machine["pending"] is None and len(machine["heads"]) == 2


# -- 7. plain `alembic` refuses what the tasks refuse ----------------------------------------------


def failed_lines(result) -> list[str]:
    """Plain `alembic` says why it failed in one `FAILED:` line (on stdout)."""
    return [line for line in result.output.splitlines() if line.startswith("FAILED:")]


def test_plain_alembic_refuses_an_unstamped_database_with_tables(checkout):
    (checkout.path / "instance").mkdir()
    with sqlite(checkout) as db:
        db.execute("create table users (id integer primary key)")
    result = checkout.alembic("upgrade", "head")
    assert result.code != 0 and "Traceback" not in result.output, result.output
    failed = failed_lines(result)
    assert len(failed) == 1 and f"`alembic stamp {BASE}`" in failed[0], result.output
    assert tables(checkout) == {"users"}
    # What the refusal says to do works: stamp, then upgrade.
    assert checkout.alembic("stamp", BASE).code == 0
    assert checkout.alembic("upgrade", "head").code == 0


def test_plain_alembic_refuses_several_heads(checkout):
    checkout.add_revision("branch000001", BASE)
    result = checkout.alembic("upgrade", "heads")
    failed = failed_lines(result)
    assert result.code != 0 and len(failed) == 1 and "2 heads" in failed[0], result.output
    assert "Traceback" not in result.output
    assert not (checkout.path / "instance" / "development.db").exists() or tables(checkout) == set()


# -- 8. hints name the command the user can run where they are -------------------------------------


def test_a_database_crash_mid_upgrade_points_at_fab_status(tmp_path, sshd):
    server = MariaDB(tmp_path / "crashing")
    server.start()
    try:
        database = make_database(server)
        remote = Remote(
            Checkout(tmp_path / "local"), Checkout(tmp_path / "server"), database, sshd, tmp_path / "f.yaml"
        )
        remote.server.use_production(database)
        remote.configure()
        # The revision brings the database server down under itself: a crash, mid-upgrade.
        crash = live_only(f"__import__('os').kill({server.pid}, 9)\n    op.execute('SELECT 1')")
        remote.add_revision("crash0000001", upgrade=crash)
        line = refused(remote.fab("prod", "db.upgrade", "--yes", stdin=STDIN_PASSWORD), "`fab prod db.status`")
        assert "invoke" not in line
    finally:
        server.kill()


def test_local_hints_name_invoke(checkout):
    checkout.invoke("db.reset")
    line = one_error_line(checkout.invoke("db.upgrade", f"--to={BASE}"))
    assert f"`invoke db.downgrade --to={BASE}`" in line


# -- 9. a migration's own error text quoting the password ----------------------------------------

LEAKY = {
    "raw": "op.get_bind().engine.url.password",
    "as SQLAlchemy renders the URL": "op.get_bind().engine.url.render_as_string(hide_password=False)",
    "repr": "repr(op.get_bind().engine.url.password)",
    "quote_plus": "__import__('urllib.parse').parse.quote_plus(op.get_bind().engine.url.password)",
}


@pytest.mark.parametrize("leak", LEAKY.values(), ids=LEAKY.keys())
def test_a_migration_error_quoting_the_password_is_masked(checkout, any_database, leak):
    database = any_database
    env = production(checkout, database)
    checkout.add_revision("leaky0000001", HEAD, upgrade=live_only(f"raise RuntimeError('connected as ' + {leak})"))
    line = one_error_line(checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env))
    assert "revision leaky0000001" in line and "connected as " in line and "***" in line
    for form in (PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD), repr(PASSWORD)[1:-1]):
        assert form not in line
    assert database.version() == HEAD


def test_a_password_that_is_a_word_of_the_suites_own_message_leaves_the_message_whole(checkout, database):
    """Masking is for what is relayed: an application password `wrong` (and wrong) leaves "wrong user
    or password" whole."""
    env = production(checkout, database, SQLALCHEMY_DATABASE_URI=database.app_url.replace(APP_PASSWORD, "wrong"))
    line = one_error_line(checkout.invoke("db.status", env=env))
    where = f"{database.app_user}@127.0.0.1:{database.server.port}/{database.name}"
    assert line == f"error: access denied for {where}: wrong user or password"


def test_the_servers_words_relayed_in_the_suites_message_are_still_masked(checkout, database):
    env = production(checkout, database)
    # PyMySQL formats the statement with %: a password's % is doubled to reach the server as one.
    table = "op.get_bind().engine.url.password.replace('%', '%%')"
    query = f"op.get_bind().exec_driver_sql('SELECT 1 FROM `' + {table} + '`')"
    checkout.add_revision("leaky0000002", HEAD, upgrade=live_only(query))
    line = one_error_line(checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env))
    assert f"database error on {database.migration_user}@127.0.0.1:" in line and "***" in line
    for fragment in password_fragments(PASSWORD):
        assert fragment not in line


def test_a_migration_error_quoting_the_password_is_masked_over_fab(remote):
    remote.add_revision("leaky0000001", upgrade=live_only(f"raise RuntimeError('connected as ' + {LEAKY['raw']})"))
    line = refused(remote.fab("prod", "db.upgrade", "--yes", stdin=STDIN_PASSWORD), "connected as ***")
    assert APP_PASSWORD not in line


# -- 10. PostgreSQL's own: roles, ended sessions, a server that speaks German ----------------------


@pytest.mark.postgresql
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


@pytest.mark.postgresql
def test_a_database_the_role_may_not_connect_to_is_one_line(checkout, pg_database):
    pg_database.server.execute(f'REVOKE CONNECT ON DATABASE "{pg_database.name}" FROM PUBLIC')
    checkout.use_production(pg_database)
    # The app role reads the status first: refused before any password is asked.
    line = one_error_line(checkout.invoke("db.status", env=PRODUCTION))
    assert line == (
        f"error: {pg_database.app_user} may not use database '{pg_database.name}' "
        f"({pg_database.app_user}@127.0.0.1:{pg_database.server.port}/{pg_database.name}): is it granted?"
    )


LOCALE = "de_DE.UTF-8"


@pytest.fixture(scope="module")
def german(tmp_path_factory):
    """A throwaway PostgreSQL whose lc_messages is German (compiled into its directory if need be)."""
    server = PostgreSQL(tmp_path_factory.mktemp("postgresql-de"), lc_messages=LOCALE)
    server.start()
    yield server
    server.stop()


@pytest.mark.postgresql
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


@pytest.mark.postgresql
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


@pytest.mark.postgresql
def test_a_german_servers_statement_errors_keep_their_code_and_its_words(checkout, german):
    database = make_pg_database(german)
    checkout.use_production(database)
    assert upgrade(checkout).code == 0
    checkout.add_revision("addcol", HEAD, upgrade="op.add_column('posts', sa.Column('extra', sa.Text()))")
    checkout.write_settings("production", SQLALCHEMY_DATABASE_URI=database.app_url)  # the app role migrates
    line = one_error_line(checkout.invoke("db.upgrade", "--yes", "--no-backup", env=PRODUCTION))
    assert f"failed: {database.app_user} lacks a privilege on " in line
    assert "Eigentümer der Tabelle posts" in line  # the server's own words, in its language


@pytest.mark.postgresql
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
