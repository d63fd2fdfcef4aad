"""Tests proving that the throwaway servers in servers.py really work."""

from __future__ import annotations

import pathlib
import signal
import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pytest
import servers
from servers import MariaDB, PostgreSQL, ServerStartError, SSHServer, free_port

# Every character that breaks naive DSN/URL/shell/SQL quoting, plus a trailing space.
ODD_PASSWORD = "p@ss:w/rd %x #y ?z 'q "
APP_PASSWORD = "app-secret"
ER_TABLEACCESS_DENIED_ERROR = 1142
ER_ACCESS_DENIED_ERROR = 1045
CR_CONN_HOST_ERROR = 2003


def _connect(db: MariaDB, user: str, password: str, database: str | None = None) -> pymysql.connections.Connection:
    return pymysql.connect(
        host=db.host, port=db.port, user=user, password=password, database=database, autocommit=True, connect_timeout=5
    )


def _query(conn: pymysql.connections.Connection, sql: str) -> tuple:
    with conn.cursor() as cur:
        cur.execute(sql)
        return tuple(cur.fetchall())


def _port_open(host: str, port: int) -> bool:
    try:
        sock = socket.create_connection((host, port), timeout=2)
    except OSError:
        return False
    with sock:
        # Free ports come from the ephemeral range, so with no listener Linux can (rarely) pick
        # the same port as the source and connect the socket to itself: that is not "open".
        return sock.getsockname() != sock.getpeername()


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# -- MariaDB -------------------------------------------------------------------


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """One server shared by the tests that only create users and tables."""
    with MariaDB(tmp_path_factory.mktemp("mariadb")) as server:
        yield server


@pytest.fixture
def fresh_mariadb(tmp_path: pathlib.Path) -> Iterator[MariaDB]:
    """A private server for tests that stop, kill or restart it."""
    with MariaDB(tmp_path / "mariadb") as server:
        yield server


def test_mariadb_starts(mariadb: MariaDB) -> None:
    assert mariadb.is_running()
    assert mariadb.pid == mariadb.process.pid
    assert mariadb.host == "127.0.0.1"
    assert mariadb.port not in (0, 3306)
    ((version, port, datadir, charset),) = mariadb.execute(
        "SELECT VERSION(), @@port, @@datadir, @@character_set_server"
    )
    assert "MariaDB" in version
    assert port == mariadb.port
    assert pathlib.Path(datadir).resolve() == mariadb.datadir
    assert charset == "utf8mb4"
    assert mariadb.datadir.is_relative_to(mariadb.base_dir)
    assert mariadb.socket_path.is_socket()


def test_app_user_can_use_data_but_not_change_schema(mariadb: MariaDB) -> None:
    mariadb.create_database("appdb")
    mariadb.execute("CREATE TABLE appdb.items (id INT PRIMARY KEY, name VARCHAR(50))")
    mariadb.create_user("app", APP_PASSWORD, "SELECT, INSERT, UPDATE, DELETE", "appdb")

    with _connect(mariadb, "app", APP_PASSWORD, "appdb") as conn:
        _query(conn, "INSERT INTO items VALUES (1, 'one')")
        _query(conn, "UPDATE items SET name = 'uno' WHERE id = 1")
        assert _query(conn, "SELECT id, name FROM items") == ((1, "uno"),)
        for ddl in ("CREATE TABLE other (id INT)", "ALTER TABLE items ADD COLUMN extra INT"):
            with pytest.raises(pymysql.err.OperationalError) as excinfo:
                _query(conn, ddl)
            assert excinfo.value.args[0] == ER_TABLEACCESS_DENIED_ERROR, ddl


def test_user_with_awkward_password_can_log_in_and_create_tables(mariadb: MariaDB) -> None:
    mariadb.create_database("ownerdb")
    mariadb.create_user("owner", ODD_PASSWORD, "ALL PRIVILEGES", "ownerdb")

    with _connect(mariadb, "owner", ODD_PASSWORD, "ownerdb") as conn:
        _query(conn, "CREATE TABLE t (id INT)")
        _query(conn, "INSERT INTO t VALUES (42)")
        assert _query(conn, "SELECT id FROM t") == ((42,),)

    # The password really is checked: a near miss (no trailing space) fails.
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        _connect(mariadb, "owner", ODD_PASSWORD.rstrip(), "ownerdb")
    assert excinfo.value.args[0] == ER_ACCESS_DENIED_ERROR

    # ...and it was never written to the server's logs.
    for log in (mariadb.log_path, mariadb.console_log_path, mariadb.install_log_path):
        assert ODD_PASSWORD.strip() not in log.read_text(errors="replace")


def test_create_user_rejects_injected_privileges(mariadb: MariaDB) -> None:
    with pytest.raises(ValueError):
        mariadb.create_user("evil", "x", "SELECT ON *.* TO root; --", "appdb")


def test_mariadb_stop_and_restart_keeps_data(fresh_mariadb: MariaDB) -> None:
    db = fresh_mariadb
    db.create_database("keep")
    db.execute("CREATE TABLE keep.t (v VARCHAR(20))")
    db.execute("INSERT INTO keep.t VALUES (%s)", ("survives",))
    db.create_user("owner", ODD_PASSWORD, "ALL PRIVILEGES", "keep")
    pid, port = db.pid, db.port

    db.stop()
    assert not db.is_running()
    assert db.process.returncode == 0  # graceful shutdown, not killed
    db.stop()  # idempotent
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        _connect(db, "root", "")
    assert excinfo.value.args[0] == CR_CONN_HOST_ERROR

    db.start()
    assert db.is_running()
    assert db.pid != pid
    assert db.port == port  # the old port is reused when still free
    assert db.execute("SELECT v FROM keep.t") == (("survives",),)
    with _connect(db, "owner", ODD_PASSWORD, "keep") as conn:
        assert _query(conn, "SELECT COUNT(*) FROM t") == ((1,),)


def test_mariadb_kill(fresh_mariadb: MariaDB) -> None:
    db = fresh_mariadb
    db.create_database("crash")
    db.execute("CREATE TABLE crash.t (id INT)")
    db.execute("INSERT INTO crash.t VALUES (7)")

    db.kill()
    assert not db.is_running()
    assert db.process.returncode == -signal.SIGKILL
    assert not _port_open(db.host, db.port)
    db.kill()  # idempotent

    # Committed data survives a crash of the server process.
    db.start()
    assert db.execute("SELECT id FROM crash.t") == ((7,),)


def test_mariadb_context_manager_with_long_base_dir(tmp_path: pathlib.Path) -> None:
    # Longer than the 107-byte AF_UNIX limit for the socket path.
    base_dir = tmp_path / ("long-directory-name-" * 6)
    with MariaDB(base_dir) as db:
        assert len(str(db.socket_path)) > 107
        assert db.is_running()
        assert db.execute("SELECT 1") == ((1,),)
        assert db.socket_path.is_socket()
    assert not db.is_running()


def test_mariadb_failure_raises_with_log(tmp_path: pathlib.Path) -> None:
    db = MariaDB(tmp_path / "broken")
    db.base_dir.mkdir()
    # Pretend the datadir was initialised, but make it a plain file.
    db._initialised_marker.touch()
    db.datadir.write_text("not a directory")
    with pytest.raises(ServerStartError, match="mariadbd exited with code"):
        db.start(timeout=30)
    assert not db.is_running()


# -- SSHServer -------------------------------------------------------------------


@pytest.fixture
def sshd(tmp_path: pathlib.Path) -> Iterator[SSHServer]:
    with SSHServer(tmp_path / "sshd") as server:
        yield server


def _ssh_client(server: SSHServer, tmp_path: pathlib.Path) -> Any:
    """A paramiko client that trusts only ``server.known_hosts_line()``."""
    import paramiko  # only the tests need it, not servers.py

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(server.known_hosts_line() + "\n")
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    # Reject anything not in known_hosts: proves known_hosts_line() is right.
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def _ssh_connect(server: SSHServer, tmp_path: pathlib.Path, **credentials: Any) -> Any:
    """Connect as ``server.user``, by default with the server's client key."""
    client = _ssh_client(server, tmp_path)
    credentials = credentials or {"key_filename": str(server.client_key)}
    try:
        client.connect(
            server.host,
            port=server.port,
            username=server.user,
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
            **credentials,
        )
    except Exception:
        client.close()
        raise
    return client


def test_sshd_runs_command_with_client_key(sshd: SSHServer, tmp_path: pathlib.Path) -> None:
    assert sshd.is_running()
    assert sshd.port not in (0, 22)
    assert sshd.known_hosts_line().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")

    client = _ssh_connect(sshd, tmp_path)
    try:
        _, stdout, _ = client.exec_command("echo hello", timeout=10)
        assert stdout.read().decode().strip() == "hello"
        assert stdout.channel.recv_exit_status() == 0
    finally:
        client.close()


def test_sshd_rejects_other_keys(sshd: SSHServer, tmp_path: pathlib.Path) -> None:
    import paramiko

    with pytest.raises(paramiko.AuthenticationException):
        _ssh_connect(sshd, tmp_path, pkey=paramiko.RSAKey.generate(2048))


def test_sshd_stop_closes_port(sshd: SSHServer) -> None:
    assert _port_open(sshd.host, sshd.port)
    sshd.stop()
    assert not sshd.is_running()
    assert not _port_open(sshd.host, sshd.port)
    sshd.stop()  # idempotent


def test_sshd_kill_and_restart(sshd: SSHServer, tmp_path: pathlib.Path) -> None:
    line = sshd.known_hosts_line()
    sshd.kill()
    assert not sshd.is_running()
    assert sshd.process.returncode == -signal.SIGKILL
    assert not _port_open(sshd.host, sshd.port)

    sshd.start()
    assert sshd.known_hosts_line() == line  # same host key and port
    client = _ssh_connect(sshd, tmp_path)
    client.close()


@pytest.mark.parametrize(
    "caller_locale",
    [{"LANGUAGE": "en"}, {"LC_ALL": "C"}, {"LANG": "C", "LC_MESSAGES": "C"}],
    ids=["LANGUAGE", "LC_ALL", "LANG"],
)
def test_a_postgresql_speaks_its_own_lc_messages_whatever_the_callers_locale(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caller_locale: dict[str, str]
) -> None:
    """The run must not depend on who starts it: a German server answers in German, umlauts intact."""
    for name in ("LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES", "LC_CTYPE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in caller_locale.items():
        monkeypatch.setenv(name, value)
    with PostgreSQL(tmp_path / "de", lc_messages="de_DE.UTF-8") as server:
        server.create_user("reader", APP_PASSWORD)
        server.execute("CREATE TABLE posts (id int)")
        with (
            psycopg.connect(
                host=server.host, port=server.port, user="reader", password=APP_PASSWORD, dbname="postgres"
            ) as connection,
            pytest.raises(psycopg.errors.InsufficientPrivilege) as refused,
        ):
            connection.execute("ALTER TABLE posts ADD COLUMN extra text")
    assert "Eigentümer der Tabelle posts" in str(refused.value)


@pytest.mark.parametrize("kind", [SSHServer, PostgreSQL, MariaDB])
def test_a_port_taken_before_the_server_binds_it_is_traded_for_another(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, kind: type
) -> None:
    """free_port() is free when asked, not when the server binds it (another worker's server, any
    connection's ephemeral port): the server moves to another port instead of failing the test."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        ports = iter([port])
        real_free_port = servers.free_port
        monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or real_free_port())
        with kind(tmp_path / "server") as server:
            assert server.port not in (0, port) and server.is_running()
