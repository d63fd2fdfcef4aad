"""Bad settings, bad input and faults, as an attacker or a careless operator would try them.

One place for the list of what has been tried: each case ends in one clear line, changes nothing
it should not, and shows no part of a password."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import quote

import pytest
from helpers import (
    APP_PASSWORD,
    BASE,
    HEAD,
    PASSWORD,
    STDIN_PASSWORD,
    Checkout,
    PortForward,
    Remote,
    live_only,
    make_database,
    one_error_line,
    refused,
    sqlite,
    tables,
)
from netns import OtherHost
from servers import MariaDB

NOT_UTF8 = b"\xff\xfepw\n"
# Each character the URL, the shell and ConfigParser treat specially, '+' (which quote_plus gets wrong) and a space.
HOSTILE_PASSWORD = "Tr0ub@dor?42xyz:/%#'+ end"


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


@pytest.fixture(scope="module")
def other_host(tmp_path_factory):
    """A MariaDB on "another machine": a network namespace of this test's own, over a veth pair."""
    with OtherHost(tmp_path_factory.mktemp("other-host")) as other:
        server = other.mariadb()
        server.create_database("blog")
        server.create_user("dev", "dev-pw", "ALL PRIVILEGES", "blog")
        server.execute("CREATE TABLE blog.keep (id INT PRIMARY KEY)")
        yield other, server


def redirect_by_engine_options(checkout, other, server):
    path = checkout.write_settings("development", SQLALCHEMY_DATABASE_URI="mysql+pymysql://dev:dev-pw@localhost/blog")
    options = {"connect_args": {"host": other.address, "port": server.port}}
    path.write_text(path.read_text() + f"SQLALCHEMY_ENGINE_OPTIONS = {options!r}\n")


def redirect_by_option_file(checkout, other, server):
    option_file = checkout.path / "instance" / "client.cnf"
    option_file.parent.mkdir(exist_ok=True)
    option_file.write_text(f"[client]\nhost = {other.address}\nport = {server.port}\n")
    url = f"mysql+pymysql://dev:dev-pw@/blog?read_default_file={quote(str(option_file), safe='')}"
    checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=url)


@pytest.mark.parametrize("redirect", [redirect_by_engine_options, redirect_by_option_file])
def test_reset_refuses_a_connection_that_goes_to_another_machine(checkout, other_host, redirect):
    other, server = other_host
    redirect(checkout, other, server)
    line = one_error_line(checkout.invoke("db.reset", "--force"))
    assert f"the connection went to {other.address}:{server.port}, not this machine" in line
    assert server.execute("SHOW TABLES FROM blog") == (("keep",),)


def test_reset_refuses_a_server_behind_a_loopback_port_forward(checkout, other_host):
    """ssh -L or socat: the socket goes to 127.0.0.1, the server is on another machine."""
    other, server = other_host
    with PortForward((other.address, server.port)) as forward:
        checkout.write_settings(
            "development", SQLALCHEMY_DATABASE_URI=f"mysql+pymysql://dev:dev-pw@127.0.0.1:{forward.port}/blog"
        )
        line = one_error_line(checkout.invoke("db.reset", "--force"))
    assert f"the connection goes to 127.0.0.1:{forward.port}, but " in line
    assert "a port forward to another machine looks the same" in line
    assert server.execute("SHOW TABLES FROM blog") == (("keep",),)


def test_reset_refuses_a_server_behind_a_unix_socket_forward(checkout, other_host, tmp_path):
    """socat UNIX-LISTEN:...,fork TCP:elsewhere: a Unix socket on this machine, the server on another."""
    other, server = other_host
    path = tmp_path / "forward.sock"
    with PortForward((other.address, server.port), unix_path=path):
        url = f"mysql+pymysql://dev:dev-pw@localhost/blog?unix_socket={quote(str(path), safe='')}"
        checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=url)
        line = one_error_line(checkout.invoke("db.reset", "--force"))
    assert f"the connection goes to Unix socket {path}, but the socket is held by process " in line
    assert server.execute("SHOW TABLES FROM blog") == (("keep",),)


@pytest.mark.parametrize("scheme", ["mysql", "mariadb"])
def test_reset_of_a_local_mariadb_reports_the_address_used_and_the_proof(checkout, database, scheme):
    app_url, migration_url = (f"{scheme}{url[len('mysql') :]}" for url in (database.app_url, database.migration_url))
    checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=app_url, SQLALCHEMY_ALEMBIC_URI=migration_url)
    result = checkout.invoke("db.reset", "--force", stdin=STDIN_PASSWORD)
    assert result.code == 0, result.output
    proof = f"the server's process {database.server.pid} (mariadbd) holds the other end of this connection"
    assert f"via 127.0.0.1:{database.server.port}, as {proof}:" in result.out


# -- 2. unencoded URLs ---------------------------------------------------------------------------


def password_fragments(password: str) -> list[str]:
    """The pieces a parser could cut a password into: any of them shown is a leak."""
    pieces = [password]
    for separator in "@:/%#?' +":
        pieces = [part for piece in pieces for part in piece.split(separator)]
    return [piece for piece in pieces if len(piece) >= 3]


@pytest.mark.parametrize(
    "raw",
    [
        "mysql+pymysql://app_blog:Tr0ub@dor?42xyz@127.0.0.1/blog",
        f"mysql+pymysql://app_blog:{HOSTILE_PASSWORD}@127.0.0.1/blog",
        "mysql+pymysql://app_blog:50%offSECRET@127.0.0.1/blog",
    ],
)
def test_an_unencoded_password_is_refused_without_any_part_of_it(checkout, raw):
    checkout.write_settings("production", SQLALCHEMY_DATABASE_URI=raw)
    line = one_error_line(checkout.invoke("db.status", env={"FLASK_CONFIG": "production"}))
    assert "quote(value, safe='')" in line
    password = raw.split("app_blog:", 1)[1].rsplit("@127.0.0.1", 1)[0]
    assert not [fragment for fragment in password_fragments(password) if fragment in line], line


def test_the_documented_encoding_works_for_every_character(checkout, mariadb):
    database = make_database(mariadb)
    mariadb.create_user("hostile", HOSTILE_PASSWORD, "SELECT", database.name)
    url = f"mysql+pymysql://hostile:{quote(HOSTILE_PASSWORD, safe='')}@127.0.0.1:{mariadb.port}/{database.name}"
    env = production(checkout, database, SQLALCHEMY_DATABASE_URI=url)
    result = checkout.invoke("db.current", env=env)
    assert result.code == 0, result.output
    assert result.out.strip() == "not stamped: empty database"


# -- 3. bytes that are not UTF-8 on standard input -------------------------------------------------


def test_a_password_that_is_not_utf8_is_one_line(checkout, database):
    env = production(checkout, database)
    line = one_error_line(checkout.invoke("db.upgrade", "--yes", stdin=NOT_UTF8, env=env))
    assert "standard input is not UTF-8" in line
    assert database.tables() == set()


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


@pytest.mark.parametrize(("signal_name", "number"), [("SIGKILL", 9), ("SIGSEGV", 11)])
def test_a_server_process_that_dies_is_one_line_naming_the_signal(remote, signal_name, number):
    remote.upgrade()
    kill = f"import os, signal; os.kill(os.getpid(), signal.{signal_name})"
    remote.add_revision("dead00000001", upgrade=live_only(kill))
    line = refused(remote.fab("prod", "db.upgrade", "--yes", stdin=STDIN_PASSWORD), f"killed by signal {number}")
    assert "`fab prod db.status`" in line
    assert remote.database.version() == remote.local.revisions()[-2]


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
def test_a_migration_error_quoting_the_password_is_masked(checkout, database, leak):
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
