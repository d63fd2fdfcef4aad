"""A fleet: one environment, several real MariaDB (or PostgreSQL) databases, one per tenant's settings,
on two host aliases of the loopback sshd, so each database is reached twice and must be migrated once."""

from __future__ import annotations

import io
import re
import subprocess
import time
from datetime import datetime

import pexpect
import pytest
from helpers import (
    APP_PASSWORD,
    BIN,
    HEAD,
    PASSWORD,
    Checkout,
    Database,
    Remote,
    Result,
    environment,
    held_until,
    make_database,
    make_pg_database,
    refused,
    why_still_running,
)

TENANTS = ("tenant_a", "tenant_b", "tenant_c")
SLOW = "f1ee70000001"
OTHER_PASSWORD = "other pw:/@%"


def fleet_remote(tmp_path, sshd, databases: dict, aliases: tuple[str, ...] = ("127.0.0.1",)) -> Remote:
    """The `tenants` environment: every tenant's settings on every host alias of the sshd, two at a time."""
    server = Checkout(tmp_path / "server")
    # Every tenant runs the production config class; its instance/<tenant>.cfg names its database.
    ini = server.path / "alembic.ini"
    ini.write_text(ini.read_text().replace("exampleapp.config:configs", "exampleapp.config:ProductionConfig"))
    for name, database in databases.items():
        server.write_settings(
            name, SQLALCHEMY_DATABASE_URI=database.app_url, SQLALCHEMY_ALEMBIC_URI=database.migration_url
        )
    (server.path / "invoke.yaml").write_text("db:\n  safety:\n    lock_wait: 1\n")
    local = Checkout(tmp_path / "local")
    # fabric.yaml declares the environment (which gives it a task); the -f file says where it is.
    with (local.path / "fabric.yaml").open("a") as declared:
        declared.write("  tenants: {}\n")
    remote = Remote(local, server, next(iter(databases.values())), sshd, tmp_path / "fab.yaml")
    hosts = [f"{sshd.user}@{alias}:{sshd.port}" for alias in aliases]
    tenants = {"hosts": hosts, "app_dir": str(server.path), "python": str(BIN / "python"), "settings": list(databases)}
    remote.configure(fabric={"environments": {"tenants": {**tenants, "concurrency": 2}}})
    # Each alias is a host of its own to SSH: its key must be known under that name too.
    with (remote.config.parent / "known_hosts").open("a") as known:
        for alias in aliases[1:]:
            known.write(sshd.known_hosts_line().replace("[127.0.0.1]", f"[{alias}]") + "\n")
    return remote


@pytest.fixture
def fleet(tmp_path, mariadb, sshd) -> tuple[Remote, dict[str, Database]]:
    """Two host aliases; tenant_a and tenant_b share one migration user; tenant_c has its own, with
    another password."""
    shared = make_database(mariadb)
    databases = {
        "tenant_a": shared,
        "tenant_b": make_database(mariadb),
        "tenant_c": make_database(mariadb, OTHER_PASSWORD),
    }
    b = databases["tenant_b"]
    mariadb.execute(f"GRANT ALL PRIVILEGES ON `{b.name}`.* TO %s@'%%'", (shared.migration_user,))
    databases["tenant_b"] = Database(mariadb, b.name, b.app_user, shared.migration_user)
    return fleet_remote(tmp_path, sshd, databases, ("127.0.0.1", "localhost")), databases


def add_slow_revision(remote: Remote) -> None:
    """A revision that records when it ran in its own database, to see how many ran at once."""
    remote.add_revision(
        SLOW,
        "op.execute('CREATE TABLE ran (started DATETIME(6), ended DATETIME(6))')\n    "
        "op.execute('INSERT INTO ran SELECT NOW(6), NULL')\n    "
        "op.execute('DO SLEEP(2)')\n    "
        "op.execute('UPDATE ran SET ended = NOW(6)')",
    )


def most_at_once(databases) -> int:
    windows = [database.query("SELECT started, ended FROM ran")[0] for database in databases]
    moments: list[tuple[datetime, int]] = [(start, 1) for start, _ in windows] + [(end, -1) for _, end in windows]
    running = most = 0
    for _, step in sorted(moments):
        running += step
        most = max(most, running)
    return most


def test_a_fleet_is_upgraded_in_parallel_once_per_database_with_one_password_per_user(fleet):
    remote, databases = fleet
    status = remote.fab("tenants", "db.status")
    assert status.code == 0, status.output
    rows = status.out.splitlines()[1:]
    assert len(rows) == 6 and all("3 pending" in row for row in rows), status.out

    add_slow_revision(remote)
    transcript = io.StringIO()
    child = remote.spawn("tenants", "db.upgrade", "--allow-risky", dimensions=(50, 250))
    child.logfile_read = transcript
    try:
        child.expect_exact("Apply? [y/N] ")
        child.sendline("y")
        prompts = []
        for _ in range(2):
            child.expect(r"Password for (\S+) \((\d) of the databases\): ")
            prompts.append((child.match.group(1), child.match.group(2)))
            user = prompts[-1][0].split("@")[0]
            child.sendline(OTHER_PASSWORD if user == databases["tenant_c"].migration_user else PASSWORD)
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    output = transcript.getvalue()
    assert child.exitstatus == 0, output
    # One prompt per migration user: tenant_a's user serves two databases.
    assert sorted((user.split("@")[0], count) for user, count in prompts) == sorted(
        [(databases["tenant_a"].migration_user, "2"), (databases["tenant_c"].migration_user, "1")]
    ), prompts
    assert output.count("Password for") == 2
    assert PASSWORD not in output and OTHER_PASSWORD not in output
    for database in databases.values():
        assert database.version() == SLOW
    # Each database once, whichever host reached it first; the other host's target says so.
    assert output.count("same database as") == 3, output
    assert len(re.findall(r"upgraded to " + SLOW, output)) == 3, output
    # Three databases with concurrency 2: two ran together, never three.
    assert most_at_once(databases.values()) == 2
    # The live progress names its target on every line.
    assert re.search(r"^127\.0\.0\.1:\d+/tenant_\w \| .*Running upgrade", output, re.M) or re.search(
        r"^localhost:\d+/tenant_\w \| .*Running upgrade", output, re.M
    ), output


def test_a_failing_target_does_not_stop_the_others(fleet):
    remote, databases = fleet
    held = databases["tenant_b"]
    # Another migration holds tenant_b's lock all along (a session of its own, as ours would).
    locker = held.server.admin(database=held.name)
    try:
        with locker.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 0)", (f"migration-lock:{held.name}",))
        result = remote.fab("tenants", "db.upgrade", "--yes", stdin=f"{PASSWORD}\n{OTHER_PASSWORD}\n")
    finally:
        locker.close()
    line = refused(result, "targets failed", "tenant_b")
    assert "1 of 6" in line or "2 of 6" in line, line
    assert "another migration holds the lock" in result.output
    assert held.version() is None
    assert databases["tenant_a"].version() == HEAD and databases["tenant_c"].version() == HEAD
    # The next run finishes the job, and only asks for what is left.
    again = remote.fab("tenants", "db.upgrade", "--yes", stdin=f"{PASSWORD}\n")
    assert again.code == 0, again.output
    assert held.version() == HEAD
    assert again.output.count("up to date") >= 2, again.output


def test_commands_for_one_database_want_one_target(fleet):
    remote, databases = fleet
    refused(remote.fab("tenants", "db.downgrade", "--to=-1"), "tenants has 6 targets", "--only")
    refused(remote.fab("tenants", "--only", "nowhere", "db.status"), "tenants has no target nowhere")
    only = remote.fab("tenants", "--only", f"127.0.0.1:{remote.sshd.port}/tenant_c", "db.status")
    assert only.code == 0, only.output
    assert databases["tenant_c"].name in only.out and databases["tenant_a"].name not in only.out


def sleeping(databases) -> bool:
    """A slow revision still runs somewhere, or a run still holds its lock."""
    query = "SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE 'DO SLEEP%'"
    held = "SELECT IS_FREE_LOCK('migration-lock:{}') = 0"
    return any(
        database.query(query)[0][0] or database.query(held.format(database.name))[0][0]
        for database in databases.values()
    )


def test_a_lost_connection_stops_every_target_between_revisions(fleet):
    """The laptop vanishes while the fleet migrates: each database finishes its revision in progress,
    starts no other, and frees its lock; the run log of each tells its own run."""
    remote, databases = fleet
    first = remote.fab("tenants", "db.upgrade", "--yes", stdin=f"{PASSWORD}\n{OTHER_PASSWORD}\n")
    assert first.code == 0, first.output
    add_slow_revision(remote)
    after = "af7e20000002"
    for checkout in (remote.local, remote.server):
        checkout.add_revision(after, SLOW, upgrade="op.create_table('after_slow', sa.Column('id', sa.Integer))")
    laptop = subprocess.Popen(
        [*remote.argv, "tenants", "db.upgrade", "--yes", "--allow-risky"],
        cwd=remote.local.path,
        env=environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        laptop.stdin.write(f"{PASSWORD}\n{OTHER_PASSWORD}\n".encode())
        laptop.stdin.flush()
        deadline = time.monotonic() + 60
        while not any("ran" in database.tables() for database in databases.values()):
            assert time.monotonic() < deadline, "no slow revision started"
            time.sleep(0.1)
        laptop.kill()
    finally:
        laptop.wait(timeout=30)
    # Each child finishes its revision in progress, records the stop, and ends.
    log = remote.server.path / "instance" / "migration-runs.jsonl"
    deadline = time.monotonic() + 60
    while '"outcome": "stopped' not in (log.read_text() if log.exists() else "") or sleeping(databases):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no run log"
        time.sleep(0.2)
    versions = {database.version() for database in databases.values()}
    assert versions <= {HEAD, SLOW}, versions  # a revision boundary everywhere, none past the slow one
    assert all("after_slow" not in database.tables() for database in databases.values())
    status = remote.fab("tenants", "--only", f"127.0.0.1:{remote.sshd.port}/tenant_a", "db.status")
    if databases["tenant_a"].version() == SLOW:
        assert "the SSH connection was lost" in status.out, status.out
    # Every lock went with its run: the next upgrade finishes the job.
    again = remote.fab("tenants", "db.upgrade", "--yes", "--allow-risky", stdin=f"{PASSWORD}\n{OTHER_PASSWORD}\n")
    assert again.code == 0, again.output
    assert {database.version() for database in databases.values()} == {after}


def test_a_postgresql_fleet_is_upgraded_in_parallel_and_a_failing_target_is_told(tmp_path, postgresql, sshd):
    """As on MariaDB: each tenant's own database and migration role, one prompt per role; the role
    whose password is typed wrong fails its target alone."""
    databases = {name: make_pg_database(postgresql) for name in TENANTS}
    remote = fleet_remote(tmp_path, sshd, databases)
    status = remote.fab("tenants", "db.status")
    assert status.code == 0 and status.out.count("3 pending") == 3, status.output
    result = remote.fab("tenants", "db.upgrade", "--yes", stdin=f"{PASSWORD}\n{PASSWORD}\nnot the password\n")
    refused(result, "1 of 3 targets failed: tenant_c")
    assert "tenant_c" in result.out and "wrong user or password" in result.out, result.out
    assert [databases[name].version() for name in TENANTS] == [HEAD, HEAD, None]
    assert result.out.count("upgraded to") == 2


def test_one_user_name_on_two_servers_is_two_passwords(tmp_path, mariadb, postgresql, sshd):
    """The same migration user name on two database servers is two users: one prompt each, and
    neither server is sent the other's password."""
    on_postgresql = make_pg_database(postgresql, PASSWORD)
    mariadb_database = make_database(mariadb, OTHER_PASSWORD)
    same_name = on_postgresql.migration_user
    mariadb.create_user(same_name, OTHER_PASSWORD, "ALL PRIVILEGES", mariadb_database.name)
    mariadb.execute("GRANT PROCESS ON *.* TO %s@'%%'", (same_name,))
    databases = {
        "tenant_a": on_postgresql,
        "tenant_b": Database(mariadb, mariadb_database.name, mariadb_database.app_user, same_name),
    }
    remote = fleet_remote(tmp_path, sshd, databases)
    # Without a terminal, one line of standard input per prompt, in the order asked: tenant_a's first.
    result = remote.fab("tenants", "db.upgrade", "--yes", stdin=f"{PASSWORD}\n{OTHER_PASSWORD}\n")
    assert result.code == 0, result.output
    assert [database.version() for database in databases.values()] == [HEAD, HEAD]


# A hang detector, not a speed limit: a run that has not ended by then never will.
HANG = 120


def fab_or_hang(remote: Remote, *args: str, stdin: str) -> Result:
    """`fab ARGS` without a terminal, failing the test if it hangs."""
    try:
        done = subprocess.run(
            [*remote.argv, *args],
            cwd=remote.local.path,
            input=stdin.encode(),
            capture_output=True,
            env=environment(),
            timeout=HANG,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`fab {' '.join(args)}` still ran after {HANG} s: it hangs")
    return Result(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


def test_targets_that_fail_before_their_status_are_named_and_the_others_upgrade(tmp_path, mariadb, sshd):
    """A wrong application password, a missing database, a missing settings file: each fails before
    its server process says where its database stands; the fleet upgrade still ends, the healthy
    target upgraded, each broken one named with its own reason."""
    names = ("tenant_a", "tenant_b", "tenant_c", "tenant_d")
    databases = {name: make_database(mariadb) for name in names}
    remote = fleet_remote(tmp_path, sshd, databases)
    wrong = databases["tenant_b"]
    remote.server.write_settings(
        "tenant_b",
        SQLALCHEMY_DATABASE_URI=wrong.app_url.replace(f":{APP_PASSWORD}@", ":not-the-app-pw@"),
        SQLALCHEMY_ALEMBIC_URI=wrong.migration_url,
    )
    (remote.server.path / "instance" / "tenant_c.cfg").unlink()
    mariadb.execute(f"DROP DATABASE `{databases['tenant_d'].name}`")
    result = fab_or_hang(remote, "tenants", "db.upgrade", "--yes", stdin=f"{PASSWORD}\n")
    refused(result, "3 of 4 targets failed: tenant_b, tenant_c, tenant_d")
    rows = {line.split()[0]: line for line in result.out.splitlines() if line.startswith("tenant_")}
    assert "wrong user or password" in rows["tenant_b"], result.out
    assert "tenant_c.cfg is missing" in rows["tenant_c"], result.out
    assert f"database '{databases['tenant_d'].name}' does not exist" in rows["tenant_d"], result.out
    assert f"upgraded to {HEAD}" in rows["tenant_a"], result.out
    assert databases["tenant_a"].version() == HEAD
    assert [databases[name].version() for name in ("tenant_b", "tenant_c")] == [None, None]


def test_a_server_line_outside_the_fleet_protocol_does_not_hold_the_fleet(tmp_path, mariadb, sshd):
    """Settings that print as they load: the line the server prints before it forks its children is
    not one of theirs; every target's status still comes, and the command ends."""
    databases = {name: make_database(mariadb) for name in TENANTS}
    remote = fleet_remote(tmp_path, sshd, databases)
    chatty = remote.server.path / "instance" / "tenant_a.cfg"
    chatty.write_text("print('loading the tenant_a settings')\n" + chatty.read_text())
    result = fab_or_hang(remote, "tenants", "db.status", stdin="")
    assert result.code == 0, result.output
    assert result.out.count("3 pending") == 3, result.out


def test_ctrl_c_ends_a_fleet_upgrade_whose_target_never_answers(tmp_path, mariadb, sshd):
    """A target whose server process is stuck before its status (its settings wait on something):
    Ctrl-C on the laptop ends the command at once, nothing asked and nothing changed."""
    databases = {name: make_database(mariadb) for name in TENANTS}
    remote = fleet_remote(tmp_path, sshd, databases)
    reached, release = tmp_path / "reached", tmp_path / "release"
    stuck = remote.server.path / "instance" / "tenant_b.cfg"
    stuck.write_text(
        f"import os, time\nopen({str(reached)!r}, 'w').close()\n"
        + held_until(release, HANG + 60).replace("\n    ", "\n")
        + "\n"
        + stuck.read_text()
    )
    # If it outlives the Ctrl-C, the failure shows its signal masks and every thread's stack.
    child = remote.spawn("tenants", "db.upgrade", env={"PYTHONFAULTHANDLER": "1"})
    try:
        deadline = time.monotonic() + HANG
        while not reached.exists():
            assert time.monotonic() < deadline and child.isalive(), child.before
            time.sleep(0.1)
        child.sendintr()
        index = child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=HANG)
        output = child.before
        why = why_still_running(child) if index else ""
        child.close(force=True)
        assert index == 0, f"still running {HANG} s after Ctrl-C: {output}\n{why}"
    finally:
        release.touch()
        child.close(force=True)
    assert child.exitstatus == 130, output
    assert "interrupted" in output and "Traceback" not in output, output
    assert "Password" not in output and "Apply?" not in output, output
    assert all(database.version() is None for database in databases.values())
