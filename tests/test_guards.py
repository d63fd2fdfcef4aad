"""The migration lock and the lock-wait guard, against a real MariaDB and real SQLite files.

Times asserted here are bounds with a generous margin, not benchmarks."""

from __future__ import annotations

import os
import pwd
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from helpers import PASSWORD, REPO, Database, make_database
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL

from deploy.database import connect
from deploy.dialects.mariadb import lock_name
from deploy.errors import DeployError
from deploy.guards.lock import migration_lock
from deploy.guards.timeouts import GaveWay, Transaction, check_no_open_transactions, guard_session, open_transactions

ALTER = "ALTER TABLE post ADD COLUMN body TEXT"
WATCHDOG = 15  # s: longer than any test here waits for a lock

# Takes the lock, says so, and holds it until its standard input ends (or it is killed).
# The password comes on standard input: never in argv or the environment.
HOLDER = """
import sys
from sqlalchemy import make_url
from deploy.guards.lock import migration_lock
url = make_url(sys.argv[1])
password = sys.stdin.readline().rstrip("\\n")
with migration_lock(url.set(password=password) if password else url, None, wait=0):
    print("held", flush=True)
    sys.stdin.read()
"""


@dataclass
class Target:
    """A database to lock: `url` connects, `url_without_password` may be shown to a child process."""

    url: URL
    url_without_password: str
    password: str
    database: Database | None = None  # None: a SQLite file

    def holder_names(self, child: subprocess.Popen) -> list[str]:
        """What the refusal must say about the child holding the lock."""
        if self.database is None:
            return [f"pid {child.pid}", socket.gethostname(), pwd.getpwuid(os.geteuid()).pw_name]
        ((holder,),) = self.database.query(f"SELECT IS_USED_LOCK('{lock_name(self.database.name)}')")
        return [f"connection {holder}, {self.database.migration_user}@127.0.0.1:"]


def with_password(database: Database) -> URL:
    return make_url(database.migration_url).set(password=PASSWORD)


@pytest.fixture(params=["mariadb", "sqlite"])
def target(request, tmp_path) -> Target:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'blog.db'}"
        return Target(make_url(url), url, "")
    database = make_database(request.getfixturevalue("mariadb"))
    return Target(with_password(database), database.migration_url, PASSWORD, database)


@pytest.fixture
def holders():
    """Start a child process that holds the target's lock; any child still running is killed at the end."""
    children: list[subprocess.Popen] = []

    def hold(target: Target) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLDER, target.url_without_password],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        child.stdin.write(target.password + "\n")
        child.stdin.flush()
        assert child.stdout.readline() == "held\n"
        return child

    yield hold
    for child in children:
        child.kill()
        child.wait()


def refusal(url: URL, wait: float) -> tuple[str, float]:
    """The one-line refusal of a lock that stays taken, and how long it took to come."""
    started = time.monotonic()
    with pytest.raises(DeployError) as failure, migration_lock(url, None, wait):
        pass
    return str(failure.value), time.monotonic() - started


def test_a_second_migration_waits_then_names_the_holder_until_it_is_killed(target, holders):
    child = holders(target)
    message, waited = refusal(target.url, wait=1)
    assert 0.9 <= waited < 3
    assert message.startswith("another migration holds the lock on ") and "(waited 1 s)" in message
    assert all(name in message for name in target.holder_names(child)), message
    assert message.endswith("try again when it is done") and "\n" not in message
    assert not target.password or target.password not in message
    child.kill()  # SIGKILL: no cleanup of its own; the server (or the kernel) frees the lock
    child.wait()
    started = time.monotonic()
    with migration_lock(target.url, None, wait=5):
        assert time.monotonic() - started < 2


def test_the_lock_is_free_again_after_its_block_ends_or_raises(target):
    with migration_lock(target.url, None, wait=0):
        refusal(target.url, wait=0)  # a second connection (or open file) of this same process is refused
    with migration_lock(target.url, None, wait=0):
        pass
    for interruption in (RuntimeError("the migration failed"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)), migration_lock(target.url, None, wait=0):
            raise interruption
        # wait=0: released at once, not whenever the server gets round to ending the session
        with migration_lock(target.url, None, wait=0):
            pass


@pytest.mark.parametrize("process", [False, True], ids=["without-PROCESS", "with-PROCESS"])
def test_a_holder_of_another_user_is_named_as_far_as_the_server_shows_it(mariadb, process):
    database = make_database(mariadb, process=False)
    if process:
        mariadb.execute("GRANT PROCESS ON *.* TO %s@'%%'", (database.migration_user,))
    root = make_url(database.migration_url).set(username="root", password="")
    with migration_lock(root, None, wait=0):
        ((holder,),) = database.query(f"SELECT IS_USED_LOCK('{lock_name(database.name)}')")
        message, _ = refusal(with_password(database), wait=0.3)
    assert f"connection {holder}" in message
    if process:
        assert f"connection {holder}, root@127.0.0.1:" in message
    else:
        assert "visible only with the PROCESS privilege" in message and "root" not in message


@pytest.fixture
def blog(mariadb) -> Database:
    """Without PROCESS: the tests that need it grant it, so the refusal without it is tested too."""
    database = make_database(mariadb, process=False)
    database.query("CREATE TABLE post (id INT PRIMARY KEY, title VARCHAR(50))")
    database.query("INSERT INTO post VALUES (1, 'hello')")
    return database


def grant_process(database: Database) -> None:
    database.server.execute("GRANT PROCESS ON *.* TO %s@'%%'", (database.migration_user,))


@contextmanager
def app_transaction(database: Database):
    """The application's connection, in a transaction that has read `post`: it holds the table's
    metadata lock until it ends. Yields the connection and its server-side id."""
    engine = create_engine(database.app_url)
    try:
        with engine.connect() as connection:
            connection_id = connection.scalar(text("SELECT CONNECTION_ID()"))
            # Should the guard not work, the ALTER would wait a day: ending the transaction fails the test instead.
            watchdog = threading.Timer(WATCHDOG, database.server.execute, [f"KILL {connection_id}"])
            watchdog.daemon = True
            watchdog.start()
            connection.execute(text("SELECT * FROM post")).all()
            try:
                yield connection, connection_id
            finally:
                watchdog.cancel()
    finally:
        engine.dispose()


def app_read_time(database: Database) -> float:
    """How long an application's read of `post` takes, connecting included."""
    started = time.monotonic()
    with app_transaction(database):
        return time.monotonic() - started


def test_an_alter_blocked_by_an_app_transaction_gives_way_and_names_it(blog):
    grant_process(blog)
    app_waits: list[float] = []
    reader = threading.Thread(target=lambda: (time.sleep(0.2), app_waits.append(app_read_time(blog))))
    with app_transaction(blog) as (_, blocker), connect(with_password(blog)) as migrator:
        with guard_session(migrator, lock_wait_timeout=1, retries=2, pause=0.3):
            started = time.monotonic()
            reader.start()
            with pytest.raises(GaveWay) as failure:
                migrator.exec_driver_sql(ALTER)
            elapsed = time.monotonic() - started
            reader.join()
        # The guard leaves nothing behind: no listener, the session's own timeouts.
        assert not migrator.engine.dialect.dispatch.do_execute
        assert migrator.exec_driver_sql("SELECT @@session.lock_wait_timeout").scalar() == 86400
    message = str(failure.value)
    assert message.startswith(f"`{ALTER}` gave way after 3 tries of 1 s: blocked by 1 open transaction: ")
    assert f"connection {blocker} ({blog.app_user}@127.0.0.1:" in message and "\n" not in message
    assert PASSWORD not in message
    assert 3 * 1 + 2 * 0.3 - 0.2 <= elapsed < 7
    # Queued behind the waiting ALTER (MariaDB's metadata-lock queue), but never for longer than one try.
    assert app_waits and app_waits[0] < 1 + 0.7


def test_the_guarded_alter_succeeds_on_a_retry_once_the_blocker_commits(blog):
    with app_transaction(blog) as (blocker, _), connect(with_password(blog)) as migrator:
        release = threading.Timer(1.5, blocker.commit)
        with guard_session(migrator, lock_wait_timeout=1, retries=2, pause=0.3):
            started = time.monotonic()
            release.start()
            migrator.exec_driver_sql(ALTER)
            elapsed = time.monotonic() - started
        release.join()
    assert 1.4 <= elapsed < 3
    assert blog.query("SHOW COLUMNS FROM post LIKE 'body'")


def test_open_transactions_older_than_the_threshold_are_reported_and_refused(blog):
    grant_process(blog)
    with app_transaction(blog) as (_, old), connect(with_password(blog)) as migrator:
        time.sleep(2.2)
        with app_transaction(blog) as (_, young):
            migrator.execute(text("SELECT * FROM post")).all()  # its own transaction is not another's
            assert {found.connection_id for found in open_transactions(migrator, older_than=0)} == {old, young}
            found = open_transactions(migrator, older_than=1.5)
            with pytest.raises(DeployError) as failure:
                check_no_open_transactions(migrator, older_than=1.5)
            check_no_open_transactions(migrator, older_than=60)
    assert [(t.connection_id, t.user, t.statement) for t in found] == [(old, blog.app_user, None)]
    assert found[0].host.startswith("127.0.0.1:") and 2 <= found[0].seconds < 10
    message = str(failure.value)
    assert message.startswith(f"1 transaction open longer than 1.5 s: connection {old} ({blog.app_user}@127.0.0.1:")
    assert message.endswith(" s, idle); refusing: end it or pass --ignore-transactions")


def test_without_the_process_privilege_the_user_is_told_to_grant_it(blog):
    with connect(with_password(blog)) as migrator:
        with pytest.raises(DeployError) as failure:
            open_transactions(migrator, older_than=5)
        with app_transaction(blog), guard_session(migrator, lock_wait_timeout=1, retries=0, pause=0):
            with pytest.raises(GaveWay) as blocked:
                migrator.exec_driver_sql(ALTER)
    assert str(failure.value) == (
        "reading open transactions needs the PROCESS privilege: grant it to the migration user "
        f"(GRANT PROCESS ON *.* TO '{blog.migration_user}'@'%') or pass --ignore-transactions"
    )
    assert str(blocked.value) == (
        f"`{ALTER}` gave way after 1 try of 1 s: grant the migration user PROCESS to see what blocked it"
    )


def test_a_statement_that_may_carry_a_password_is_never_shown():
    running = Transaction(7, "admin", "10.0.0.1:5000", 3.0, f"ALTER USER app IDENTIFIED BY '{PASSWORD}'")
    assert str(running) == (
        "connection 7 (admin@10.0.0.1:5000, open 3 s, running `a statement that may hold a password`)"
    )


def test_sqlite_statements_retry_while_another_connection_writes(tmp_path):
    path = tmp_path / "blog.db"
    # Another writer: BEGIN IMMEDIATE holds SQLite's write lock until it ends.
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE post (id INTEGER PRIMARY KEY)")
    writer.execute("BEGIN IMMEDIATE")
    with connect(make_url(f"sqlite:///{path}")) as migrator:
        busy_timeout = migrator.exec_driver_sql("PRAGMA busy_timeout").scalar()
        with guard_session(migrator, lock_wait_timeout=0.2, retries=2, pause=0.1):
            started = time.monotonic()
            with pytest.raises(GaveWay) as failure:
                migrator.exec_driver_sql(ALTER)
            assert 3 * 0.2 + 2 * 0.1 - 0.1 <= time.monotonic() - started < 3
            threading.Timer(0.3, writer.execute, ["ROLLBACK"]).start()
            migrator.exec_driver_sql(ALTER)
        assert migrator.exec_driver_sql("PRAGMA busy_timeout").scalar() == busy_timeout
        assert not migrator.engine.dialect.dispatch.do_execute
    writer.close()
    assert str(failure.value) == (
        f"`{ALTER}` gave way after 3 tries of 0.2 s: another connection holds the lock on SQLite {path} "
        "(SQLite cannot tell which)"
    )
