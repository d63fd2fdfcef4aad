"""`fab ENV db.*` against a real sshd and a real database: the server is a second checkout on this machine.
A test taking `any_remote` runs on MariaDB and PostgreSQL; those marked postgresql are PostgreSQL's own
(its transactional DDL, its pg_dump backups restored over fab) and fab's other commands on it."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pexpect
import pytest
from helpers import (
    APPLY,
    BIN,
    HEAD,
    PASSWORD,
    POSTS,
    STDIN_PASSWORD,
    TYPED_PASSWORD,
    ProcSampler,
    answer_at_a_terminal,
    environment,
    files_containing,
    held_revision,
    held_until,
    live_only,
    new_files_containing,
    ok,
    refused,
    wait_until_running,
)
from servers import SSH_KEYGEN, MariaDB, free_port

SLEEPY = "5133c0000001"  # a revision after head whose upgrade takes a while
BROKEN = "b0b0c0000001"  # a revision after head whose upgrade fails


# -- upgrades -----------------------------------------------------------------


def test_upgrade_at_a_terminal(any_remote):
    """The password is typed at a real terminal, unechoed; the plan and Alembic's steps show."""
    remote = any_remote
    env = environment()
    assert not any(PASSWORD in value for value in env.values())
    transcript = io.StringIO()
    child = remote.spawn("prod", "db.upgrade", dimensions=(50, 250))
    child.logfile_read = transcript
    try:
        plan, _ = answer_at_a_terminal(
            child, APPLY, (f"Password for {remote.database.migration_user}@127.0.0.1", PASSWORD)
        )
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    output = transcript.getvalue()
    assert child.exitstatus == 0, output
    assert all(revision in plan for revision in remote.local.revisions()), plan
    assert "3 pending" in plan, plan
    assert output.count("Running upgrade") == 3, output
    assert "verified" in output  # the backup, on the server, before anything changed
    assert f"is now at {remote.local.head()}" in output
    assert PASSWORD not in output
    assert remote.database.version() == remote.local.head() == HEAD
    assert remote.database.tables() == {"users", "posts", "tags", "post_tags", "alembic_version"}


def test_upgrade_with_the_password_on_stdin(remote):
    result = remote.upgrade()
    assert "Running upgrade" in result.err
    assert f"is now at {remote.local.head()}" in result.out
    assert PASSWORD not in result.output
    assert remote.database.version() == remote.local.head()


# Rows enough that the backup's dump runs a while, made the migration user's (as a migration's would be).
BIG_TABLE = {
    "mariadb": "CREATE TABLE big (id INT PRIMARY KEY, filler LONGTEXT);"
    "INSERT INTO big SELECT seq, REPEAT(MD5(seq), 3000) FROM seq_1_to_400",
    "postgresql": 'CREATE TABLE big (id int PRIMARY KEY, filler text); ALTER TABLE big OWNER TO "{owner}";'
    "INSERT INTO big SELECT n, repeat(md5(n::text), 3000) FROM generate_series(1, 400) AS n",
}
DUMP_TOOL = {"mariadb": b"mariadb-dump", "postgresql": b"pg_dump"}


def test_upgrade_leaks_the_password_nowhere(any_remote, server_kind, tmp_path, sshd):
    """Piped as the first line; meanwhile no process's argv or environment holds it (fab, ssh, the
    server's invoke, the backup's dump tool), nor does any output or file."""
    remote, database = any_remote, any_remote.database
    remote.upgrade()
    for statement in BIG_TABLE[server_kind.name].format(owner=database.migration_user).split(";"):
        database.query(statement)
    # A revision that sleeps, so that the server's invoke is seen.
    remote.add_revision(SLEEPY, upgrade=live_only("__import__('time').sleep(2)"))
    started = time.time()
    sampler = ProcSampler(PASSWORD)
    sampler.start()
    try:
        process = subprocess.Popen(
            [*remote.argv, "prod", "db.upgrade", "--yes"],
            cwd=remote.local.path,
            env=environment(TMPDIR=str(tmp_path)),
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = process.communicate(STDIN_PASSWORD, timeout=120)
    finally:
        sampler.stop.set()
        sampler.join()
    assert process.returncode == 0, out + err
    assert database.version() == SLEEPY
    # The server's `python -m deploy.server db.upgrade` and the dump were seen alive: their argv and environ were read.
    assert sampler.saw(b"deploy.server\0db.upgrade\0") and sampler.saw(DUMP_TOOL[server_kind.name]), sampler.rounds
    assert not sampler.leaks, sampler.leaks
    assert PASSWORD not in out + err
    # tmp_path holds both checkouts, the fab config and fab's TMPDIR; PostgreSQL's files (its log too) are
    # read, MariaDB's datadir is left out.
    server = database.server
    data = () if isinstance(server, MariaDB) else (server.base_dir, server.cluster_dir)
    for root in (tmp_path, sshd.base_dir, *data):
        assert not files_containing(root, PASSWORD), root
    assert not new_files_containing(Path(tempfile.gettempdir()), PASSWORD, started)


def test_upgrade_with_nothing_pending_asks_for_nothing(remote):
    remote.upgrade()
    result = remote.fab("prod", "db.upgrade")
    assert result.code == 0, result.output
    assert "nothing to do" in result.out
    assert "Password" not in result.output
    assert remote.database.version() == remote.local.head()


def test_ctrl_c_after_the_abort_stops_waiting_for_a_server_that_does_not_end(remote, tmp_path):
    """Ctrl-C asks to stop, a second asks to abort; a server that does not end even then (its
    revision ignores the abort here) no longer holds the laptop: a third Ctrl-C leaves."""
    remote.upgrade()
    release = tmp_path / "release"
    ignore_abort = "__import__('signal').signal(__import__('signal').SIGINT, __import__('signal').SIG_IGN)"
    remote.add_revision(
        SLEEPY,
        "op.create_table('stuck_started', sa.Column('id', sa.Integer))\n    "
        + live_only(f"{ignore_abort}\n    {held_until(release)}"),
    )
    child = remote.spawn("prod", "db.upgrade", "--yes")
    try:
        answer_at_a_terminal(child, TYPED_PASSWORD)
        deadline = time.monotonic() + 120
        while "stuck_started" not in remote.database.tables():
            assert time.monotonic() < deadline and child.isalive(), child.before
            time.sleep(0.1)
        child.sendintr()
        child.expect_exact("Ctrl-C again to abort it")
        child.sendintr()
        child.expect_exact("Ctrl-C again to stop waiting")
        child.sendintr()
        left = child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=120) == 0
        output = child.before
    finally:
        release.touch()
        child.close(force=True)
    assert left, f"still waiting for the server after the third Ctrl-C: {output}"
    assert child.exitstatus == 130, output
    assert "no longer waiting for the server" in output and "Traceback" not in output, output
    # The server, released, finishes its revision on its own (its connection was lost: it stops after it).
    deadline = time.monotonic() + 120
    while remote.database.version() != SLEEPY:
        assert time.monotonic() < deadline, remote.database.version()
        time.sleep(0.2)


def test_a_failing_migration_names_itself_and_where_the_database_stopped(remote):
    head = remote.local.head()
    remote.add_revision(BROKEN, upgrade="op.execute('SELECT * FROM no_such_table')")
    # Raw SQL is a risk the lint cannot read: the operator accepts it.
    result = remote.fab("prod", "db.upgrade", "--yes", "--allow-risky", stdin=STDIN_PASSWORD)
    line = refused(result, BROKEN, f"the database is at {head}")
    assert "no_such_table" in line
    assert remote.database.version() == head


# -- refusals -----------------------------------------------------------------


def test_refuses_an_unstamped_database_with_tables(remote):
    remote.database.query("CREATE TABLE legacy (id INT PRIMARY KEY)")
    remote.refuses(f"`fab prod db.stamp {remote.local.revisions()[0]}`")
    assert remote.state() == (None, {"legacy"})


def test_refuses_several_heads_on_the_server(remote):
    remote.server.add_revision("0b1a0c000001", remote.server.revisions()[0])
    remote.refuses("merge")


def test_refuses_a_server_behind_the_local_checkout_unless_given_a_target(remote):
    server_head = remote.server.head()
    remote.local.add_revision("10ca10000001", server_head)
    differ = f"the server's migrations end at {server_head} but yours end at 10ca10000001: deploy the code first"
    remote.refuses(differ)
    # `--to=head` is the default spelled out, not a way round the check.
    remote.refuses(differ, args=("prod", "db.upgrade", "--to=head"))
    remote.upgrade(f"--to={server_head}")
    assert remote.database.version() == server_head
    base = remote.server.revisions()[0]
    remote.refuses(
        f"{base} is behind", f"fab prod db.downgrade --to={base}", args=("prod", "db.upgrade", f"--to={base}")
    )


def test_refuses_a_wrong_password(any_remote):
    result = any_remote.fab("prod", "db.upgrade", "--yes", stdin="not the password\n")
    line = refused(result, "access denied", any_remote.database.migration_user)
    assert line.endswith("wrong user or password")
    assert any_remote.state() == (None, set())


def unreachable(remote, tmp_path):
    port = free_port()
    return {"host": f"{remote.sshd.user}@127.0.0.1:{port}"}, ["cannot reach", f"127.0.0.1:{port}"]


def unknown_key(remote, tmp_path):
    key = tmp_path / "stranger_ed25519"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return {"key": key}, ["authentication"]


def missing_app_dir(remote, tmp_path):
    return {"app_dir": str(tmp_path / "nowhere")}, ["app_dir", "does not exist", str(tmp_path / "nowhere")]


def missing_python(remote, tmp_path):
    python = str(tmp_path / "nowhere" / "python")
    return {"python": python}, ["no Python", python]


def unknown_host(remote, tmp_path):
    return {"known": False}, ["not in known_hosts", f"127.0.0.1:{remote.sshd.port}"]


def not_a_host_string(remote, tmp_path):
    return {"host": "deploy@db:notaport"}, ["environments.prod.host is not a host string"]


@pytest.mark.parametrize(
    "environment", [unreachable, unknown_key, unknown_host, not_a_host_string, missing_app_dir, missing_python]
)
def test_refuses_a_broken_environment(remote, tmp_path, environment):
    settings, fragments = environment(remote, tmp_path)
    remote.configure(**settings)
    remote.refuses(*fragments)


def unset_python(remote) -> None:
    """The environment without `python` (null over fabric.yaml's): the interpreter is looked for in app_dir."""
    settings = json.loads(remote.config.read_text())
    settings["environments"]["prod"]["python"] = None
    remote.config.write_text(json.dumps(settings))


@pytest.mark.parametrize(
    "command",
    [("db.status",), ("db.backups",), ("db.schema",), ("db.lint",), ("db.upgrade",), ("db.downgrade", "--to=-1")],
)
def test_every_command_says_what_the_server_lacks(remote, tmp_path, command):
    """Read-only or not, every command gives the same one line for a server that is not set up."""
    remote.configure(app_dir=str(tmp_path / "nowhere"))
    remote.refuses("app_dir", str(tmp_path / "nowhere"), "does not exist", args=("prod", *command))
    remote.configure(python=str(tmp_path / "nowhere" / "python"))
    remote.refuses(
        "no Python at", str(tmp_path / "nowhere" / "python"), "environments.prod.python", args=("prod", *command)
    )
    unset_python(remote)
    tried = [f"{remote.server.path}/{venv}/bin/python" for venv in (".venv", "venv")]
    remote.refuses(f"no Python at {tried[0]} or {tried[1]}", args=("prod", *command))


def test_without_python_set_the_servers_venv_or_dotvenv_runs_and_is_named(remote):
    """Flask apps keep their virtual environment in venv/ as often as in .venv/: either is found."""
    unset_python(remote)
    for venv in ("venv", ".venv"):
        python = remote.server.path / venv / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text(f'#!/bin/sh\nexec {BIN / "python"} "$@"\n')
        python.chmod(0o755)
        status = remote.fab("prod", "db.status")
        assert status.code == 0, status.output
        assert f"python: {python}\n" in status.err, status.err
    upgraded = remote.upgrade()  # .venv is tried first
    assert f"python: {remote.server.path}/.venv/bin/python\n" in upgraded.err, upgraded.err


KNOWN_HOSTS_NOISE = [
    b"otherhost ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI",  # cut short: not base64
    b"otherhost ssh-rsa",  # no key
    b"|1|bad|salt ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ4bQ4XDWn3iEwbmvbqUm2nVDdnVYYkF08RsvYbvbq4+",  # hashed, bad salt
    b"\xff\xfe ssh-ed25519 \xff",  # not UTF-8
]


def test_malformed_known_hosts_lines_are_skipped_with_a_warning(remote):
    """As OpenSSH: each bad line is named and skipped, whichever host it is for; the good ones verify."""
    known_hosts = remote.config.parent / "known_hosts"
    good = remote.sshd.known_hosts_line().encode()
    known_hosts.write_bytes(b"\n".join([b"# comment", *KNOWN_HOSTS_NOISE[:2], good, *KNOWN_HOSTS_NOISE[2:]]) + b"\n")
    result = remote.fab("prod", "db.status")
    assert result.code == 0, result.output
    assert "Traceback" not in result.output
    warnings = [line for line in result.err.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {known_hosts}, line {n}: not a known_hosts entry, skipped" for n in (2, 3, 5, 6)]
    # A file that cannot be read is named and skipped too; the next one verifies.
    ssh_config = remote.config.parent / "ssh_config"
    ssh_config.write_text(f"Host *\n    UserKnownHostsFile {remote.config.parent} {known_hosts}\n")
    result = remote.fab("prod", "db.status")
    assert result.code == 0, result.output
    assert f"warning: cannot read {remote.config.parent}: Is a directory, skipped" in result.err, result.err
    # Without its good line, the host is unknown: the bad lines verify nothing.
    known_hosts.write_bytes(b"\n".join([*KNOWN_HOSTS_NOISE, good.replace(b"[127.0.0.1]", b"[elsewhere]")]) + b"\n")
    remote.refuses("not in known_hosts", args=("prod", "db.status"))


def test_a_host_key_marked_revoked_is_refused(remote):
    known_hosts = remote.config.parent / "known_hosts"
    with known_hosts.open("a") as known:
        known.write("@revoked * " + remote.sshd.known_hosts_line().split(" ", 1)[1] + "\n")
    remote.refuses("marked @revoked", f"{known_hosts}, line 2", args=("prod", "db.status"))


def test_refuses_a_server_without_its_settings_file(remote):
    (remote.server.path / "instance" / "production.cfg").unlink()
    remote.refuses("production.cfg")


def test_refuses_without_an_environment(remote):
    # `qa` exists only in the -f file: it has no task, so it is not offered.
    remote.configure()
    settings = json.loads(remote.config.read_text())
    settings["environments"]["qa"] = dict(settings["environments"]["prod"])
    remote.config.write_text(json.dumps(settings))
    line = remote.refuses("no environment selected", "(environments: prod, staging)", args=("db.upgrade",))
    assert "qa" not in line


# -- status, stamp, downgrade ---------------------------------------------------


def test_status_shows_head_current_and_pending(remote):
    result = remote.fab("prod", "db.status")
    assert result.code == 0, result.output
    head, all_revisions = remote.local.head(), remote.local.revisions()
    assert f"head {head}" in result.out
    assert "current:    not stamped" in result.out
    pending = result.out.split("pending:", 1)[1].splitlines()
    assert pending[0].strip() == str(len(all_revisions))
    assert [line.split()[0] for line in pending[1:] if line.strip()] == all_revisions


def test_stamp_then_status_shows_the_stamped_revision(remote):
    base = remote.local.revisions()[0]
    remote.database.query("CREATE TABLE legacy (id INT PRIMARY KEY)")
    result = remote.fab("prod", "db.stamp", base, stdin=STDIN_PASSWORD)
    assert result.code == 0, result.output
    assert PASSWORD not in result.output
    assert remote.state() == (base, {"legacy", "alembic_version"})
    status = remote.fab("prod", "db.status")
    assert status.code == 0, status.output
    assert f"current:    {base}" in status.out


def test_downgrade_to_an_unknown_revision_fails_before_any_question(remote):
    remote.upgrade()
    remote.refuses("Can't locate revision identified by 'nowhere'", args=("prod", "db.downgrade", "--to=nowhere"))


def test_stamp_with_a_typo_fails_before_any_question_and_changes_nothing(remote):
    remote.database.query("CREATE TABLE legacy (id INT PRIMARY KEY)")
    remote.refuses("Can't locate revision identified by 'typo'", args=("prod", "db.stamp", "typo"))
    # Still refused as unstamped: a failed stamp must not leave an empty alembic_version behind.
    remote.refuses("`fab prod db.stamp")


def test_restamping_needs_the_database_name_typed(remote):
    base, head = remote.local.revisions()[0], remote.local.head()
    remote.upgrade()
    wrong = remote.fab("prod", "db.stamp", base, stdin=f"nope\n{PASSWORD}\n")
    refused(wrong, "not confirmed")
    assert remote.database.version() == head
    result = remote.fab("prod", "db.stamp", base, stdin=f"{remote.database.name}\n{PASSWORD}\n")
    assert result.code == 0, result.output
    assert remote.database.version() == base


def test_downgrade_needs_the_database_name_typed(remote):
    base, head = remote.local.revisions()[0], remote.local.head()
    remote.upgrade()
    before = remote.state()
    wrong = remote.fab("prod", "db.downgrade", f"--to={base}", stdin=f"not-{remote.database.name}\n{PASSWORD}\n")
    refused(wrong, "not confirmed")
    assert remote.state() == before
    assert before[0] == head
    result = remote.fab("prod", "db.downgrade", f"--to={base}", stdin=f"{remote.database.name}\n{PASSWORD}\n")
    assert result.code == 0, result.output
    assert PASSWORD not in result.output
    assert remote.database.version() == base


def test_a_server_whose_status_protocol_differs_is_refused_in_one_line(remote):
    status_module = remote.server.path / "deploy" / "status.py"
    status_module.write_text(re.sub(r"^PROTOCOL = \d+$", "PROTOCOL = 0", status_module.read_text(), flags=re.M))
    remote.refuses("the server's suite is older than yours", "deploy it first")


# -- PostgreSQL's own: fab's other commands, its transactional DDL; then each kind's lock ------------

SLOW, AFTER = "5105e0000001", "af7e20000001"


def slow_then_after(remote, tmp_path) -> Path:
    """The database at head, then two revisions to come: SLOW, a held_revision held until the returned
    path exists, and AFTER, which creates after_slow."""
    remote.upgrade()
    release = tmp_path / "release"
    remote.add_revision(SLOW, held_revision(SLOW, release))
    for checkout in (remote.local, remote.server):
        checkout.add_revision(AFTER, SLOW, upgrade="op.create_table('after_slow', sa.Column('id', sa.Integer))")
    return release


def fab_upgrade_in_the_background(remote) -> subprocess.Popen:
    """`fab prod db.upgrade --yes` started, its password sent, while the test goes on."""
    laptop = subprocess.Popen(
        [*remote.argv, "prod", "db.upgrade", "--yes"],
        cwd=remote.local.path,
        env=environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    laptop.stdin.write(STDIN_PASSWORD.encode())
    laptop.stdin.flush()
    return laptop


def advisory_locks(database) -> int:
    ((count,),) = database.query(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return count


def used_locks(database) -> int:
    from deploy.dialects.mariadb import lock_name

    ((holder,),) = database.query(f"SELECT IS_USED_LOCK('{lock_name(database.name)}')")
    return int(holder is not None)


# How many migration locks each kind's server holds on a database, and how its refusal names their holder.
MIGRATION_LOCKS = {"mariadb": used_locks, "postgresql": advisory_locks}
LOCK_HOLDER = {"mariadb": "connection ", "postgresql": "backend pid "}


# -- status, stamp, detect, downgrade, backups, restore ----------------------------------------------


@pytest.mark.postgresql
def test_fab_status_detect_and_stamp_on_postgresql(pg_remote):
    status = ok(pg_remote.fab("prod", "db.status"))
    assert f"head {HEAD}" in status.out and "current:    not stamped" in status.out
    ok(pg_remote.fab("prod", "db.upgrade", "--yes", f"--to={POSTS}", stdin=STDIN_PASSWORD))
    pg_remote.database.query("DROP TABLE alembic_version")  # a database that predates the migrations
    before = pg_remote.state()
    # No terminal and no --yes: the answer is no, before any password is read.
    unconfirmed = pg_remote.fab("prod", "db.detect", stdin=STDIN_PASSWORD)
    assert f"matches revision {POSTS}" in unconfirmed.out
    refused(unconfirmed, "not confirmed")
    assert pg_remote.state() == before
    detected = ok(pg_remote.fab("prod", "db.detect", "--yes", stdin=STDIN_PASSWORD))
    assert f"stamped at {POSTS}" in detected.out
    assert pg_remote.state() == (POSTS, before[1] | {"alembic_version"})
    # Restamping asks for the database's name first.
    refused(pg_remote.fab("prod", "db.stamp", HEAD, stdin=f"nope\n{PASSWORD}\n"), "not confirmed")
    assert pg_remote.database.version() == POSTS
    ok(pg_remote.fab("prod", "db.stamp", HEAD, stdin=f"{pg_remote.database.name}\n{PASSWORD}\n"))
    assert pg_remote.database.version() == HEAD


@pytest.mark.postgresql
def test_fab_downgrade_backups_and_restore_on_postgresql(pg_remote):
    database = pg_remote.database
    pg_remote.upgrade()
    with database.app_connection() as app:
        app.execute("INSERT INTO users (email, name) VALUES (%s, %s)", ("a@example.com", "Ann 'the first' ünï"))
    for checkout in (pg_remote.local, pg_remote.server):
        checkout.add_revision(
            "notes0000001",
            HEAD,
            upgrade="op.create_table('notes', sa.Column('id', sa.Integer))",
            downgrade="op.drop_table('notes')",
        )
    pg_remote.upgrade()  # backed up at HEAD, with Ann, first
    listed = ok(pg_remote.fab("prod", "db.backups"))
    newest = listed.out.splitlines()[0]
    assert HEAD in newest and newest.endswith(".pgdump.gz"), listed.out
    name = newest.split()[-1].rsplit("/", 1)[-1]

    wrong = pg_remote.fab("prod", "db.downgrade", f"--to={HEAD}", stdin=f"not-{database.name}\n{PASSWORD}\n")
    refused(wrong, "not confirmed")
    assert database.version() == "notes0000001"
    ok(pg_remote.fab("prod", "db.downgrade", f"--to={HEAD}", stdin=f"{database.name}\n{PASSWORD}\n"))
    assert database.version() == HEAD and "notes" not in database.tables()

    with database.app_connection() as app:
        app.execute("DELETE FROM users")
    refused(pg_remote.fab("prod", "db.restore", name, stdin=f"nope\n{PASSWORD}\n"), "not confirmed")
    assert database.query("SELECT count(*) FROM users") == ((0,),)
    ok(pg_remote.fab("prod", "db.restore", name, stdin=f"{database.name}\n{PASSWORD}\n"))
    assert database.version() == HEAD and "notes" not in database.tables()
    assert database.query("SELECT email, name FROM users") == (("a@example.com", "Ann 'the first' ünï"),)
    with database.app_connection() as app:  # the app role's grants came back with the tables
        assert app.execute("SELECT count(*) FROM users").fetchone() == (1,)


# -- dry runs, schema, lint ---------------------------------------------------------------------------

# The suite builds an index CONCURRENTLY by itself; a type change that rewrites the table stays the lint's.
REWRITING = "op.alter_column('posts', 'author_id', type_=sa.BigInteger(), existing_type=sa.Integer())"


@pytest.mark.postgresql
def test_fab_sql_schema_and_lint_on_postgresql(pg_remote):
    dry = ok(pg_remote.fab("prod", "db.upgrade", "--sql"))
    assert "CREATE TABLE users (\n    id SERIAL NOT NULL" in dry.out and "Password" not in dry.output
    assert pg_remote.state() == (None, set())
    pg_remote.upgrade()
    schema = ok(pg_remote.fab("prod", "db.schema", "--diff"))
    database = pg_remote.database
    assert f"{database.app_user}@127.0.0.1:{database.server.port}/{database.name} ({HEAD}): 4 tables" in schema.out
    assert "table users\n  id INTEGER NOT NULL PRIMARY KEY" in schema.out
    assert schema.out.rstrip().endswith("the models match the database") and "Password" not in schema.output

    pg_remote.add_revision("rewrite00001", REWRITING)
    lint = pg_remote.fab("prod", "db.lint")
    assert lint.code == 1, lint.output
    assert "rewrite00001: alter_column posts.author_id type: changes the type" in lint.out
    assert "; PostgreSQL rewrites the table under an ACCESS EXCLUSIVE lock" in lint.out
    refused(pg_remote.fab("prod", "db.upgrade", "--yes", stdin=STDIN_PASSWORD), "1 risky operation", "--allow-risky")
    assert database.version() == HEAD
    result = ok(pg_remote.fab("prod", "db.upgrade", "--yes", "--allow-risky", stdin=STDIN_PASSWORD))
    assert "risk: rewrite00001: alter_column posts.author_id type" in result.out
    assert database.version() == "rewrite00001"


BROKEN_DDL = (
    "op.create_table('extra', sa.Column('id', sa.Integer, primary_key=True))\n    "
    "op.add_column('posts', sa.Column('subtitle', sa.String(50)))\n    "
    "op.create_index('ix_posts_title', 'posts', ['title'])\n    "
    "op.execute('SELECT * FROM no_such_table')"
)


@pytest.mark.postgresql
def test_a_revision_failing_over_fab_leaves_the_postgresql_schema_exactly_as_before(pg_remote):
    pg_remote.upgrade()
    before = pg_remote.database.schema()
    pg_remote.add_revision("broken", BROKEN_DDL)
    line = refused(
        pg_remote.fab("prod", "db.upgrade", "--yes", "--allow-risky", stdin=STDIN_PASSWORD),
        "revision broken (broken) failed: ",
        'relation "no_such_table" does not exist',
        f"the database is at {HEAD}",
        "rolled back whole",
    )
    assert "invoke" not in line
    assert pg_remote.database.schema() == before and pg_remote.database.version() == HEAD


# -- cancellation and the lock -----------------------------------------------------------------------


def test_ctrl_c_on_the_laptop_finishes_the_revision_and_stops_before_the_next(any_remote, server_kind, tmp_path):
    remote, database, locks = any_remote, any_remote.database, MIGRATION_LOCKS[server_kind.name]
    release = slow_then_after(remote, tmp_path)
    child = remote.spawn("prod", "db.upgrade")
    try:
        answer_at_a_terminal(child, APPLY, TYPED_PASSWORD)
        wait_until_running(release, SLOW)
        assert locks(database) == 1  # the run holds its lock
        child.sendintr()  # Ctrl-C, once, while the slow revision runs
        time.sleep(1.5)  # the stop crosses the SSH channel; then the revision may end
        release.touch()
        child.expect(pexpect.EOF)
    finally:
        release.touch()
        child.close(force=True)
    output = child.before
    assert child.exitstatus == 1, output
    assert "stopped (stopped from the laptop) after 1 of 2 revisions" in output, output
    assert f"is at {SLOW}" in output
    # The revision in progress completed, and the next one never started.
    assert database.version() == SLOW and f"{SLOW}_started" in database.tables()
    assert "after_slow" not in database.tables()
    status = remote.fab("prod", "db.status")
    assert "last run:" in status.out and "stopped after 1 of 2 (stopped from the laptop)" in status.out, status.output
    # The lock went with the run: the next upgrade takes it at once and goes on.
    assert locks(database) == 0
    (remote.server.path / "invoke.yaml").write_text("db:\n  safety:\n    lock_wait: 0\n")
    remote.upgrade()
    assert database.version() == AFTER


def test_two_fab_upgrades_at_once_the_second_names_the_first(any_remote, server_kind, tmp_path):
    remote = any_remote
    # The server's own Invoke config sets the guards for fab runs: here a short wait for the lock.
    (remote.server.path / "invoke.yaml").write_text("db:\n  safety:\n    lock_wait: 1\n")
    remote.upgrade()
    # Held until the second is done: a fixed sleep lost the race to a loaded machine's slow second fab.
    release = tmp_path / "release"
    remote.add_revision("slow00000001", held_revision("slow00000001", release))
    first = fab_upgrade_in_the_background(remote)
    try:
        wait_until_running(release, "slow00000001", first)
        second = remote.fab("prod", "db.upgrade", "--yes", stdin=STDIN_PASSWORD)
    finally:
        release.touch()
        out, _ = first.communicate(timeout=120)
    holder = LOCK_HOLDER[server_kind.name]
    refused(second, "another migration holds the lock", holder, remote.database.migration_user)
    assert first.returncode == 0, out.decode()
    assert remote.database.version() == "slow00000001"


def test_a_lost_ssh_connection_finishes_the_revision_and_stops_before_the_next(any_remote, server_kind, tmp_path):
    remote, database = any_remote, any_remote.database
    release = slow_then_after(remote, tmp_path)
    laptop = fab_upgrade_in_the_background(remote)
    try:
        wait_until_running(release, SLOW, laptop)
        laptop.kill()  # the laptop vanishes mid-revision: its SSH connection drops with it
        laptop.wait(timeout=30)
        time.sleep(1)  # the server sees its control channel end; then the revision may finish
    finally:
        release.touch()
        laptop.wait(timeout=30)
    log = remote.server.path / "instance" / "migration-runs.jsonl"
    deadline = time.monotonic() + 60
    while '"outcome": "stopped' not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no run log"
        time.sleep(0.2)
    assert database.version() == SLOW and "after_slow" not in database.tables()
    # The server-side run ends (its log is written under the lock, just before the release), its lock with it.
    deadline = time.monotonic() + 10
    while MIGRATION_LOCKS[server_kind.name](database):
        assert time.monotonic() < deadline, "the lock outlived the run"
        time.sleep(0.1)
    status = remote.fab("prod", "db.status")
    assert "stopped after 1 of 2 (the SSH connection was lost)" in status.out, status.output
    # Nothing was left half done: the next upgrade simply goes on.
    remote.upgrade()
    assert database.version() == AFTER
