"""What the tests share: running the tools, checkouts, databases as in production, the fab setup,
and the checks every expected failure must pass. Fixtures live in conftest.py; this is a plain module."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pexpect
from servers import MariaDB, PostgreSQL, SSHServer, server_environment

from deploy.database import SUITE_TABLES, VERSION_TABLE

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Every character a password may hold that breaks something, and a space: URL-, shell-, ConfigParser- and SQL-hostile.
PASSWORD = "r00t@pw:/%#?' x"
APP_PASSWORD = "app-pw"
# tests/ stays behind: it holds the test password, which the leak checks look for.
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "tests", "instance", "__pycache__", ".pytest_cache", "*.pyc")
_names = itertools.count(1)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


def environment(**extra: str) -> dict[str, str]:
    """This process's environment for a tool under test, plus `extra`.

    The settings switch comes from the test alone, never from the developer's shell; so does the
    locale, in which the tools (and the clients they run) word and encode their messages."""
    return {**{key: value for key, value in server_environment().items() if key != "FLASK_CONFIG"}, **extra}


def run(argv: list[str], cwd: Path, stdin: str | bytes | None = None, env: dict | None = None) -> Result:
    """A command with no terminal: stdin is `stdin` (text, or raw bytes) or nothing at all."""
    merged = environment(**(env or {}))
    done = subprocess.run(
        argv,
        cwd=cwd,
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        env=merged,
        timeout=300,
    )
    return Result(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


@dataclass
class ProductionDatabase:
    """A database as in production, whatever the kind: an app user that only reads and writes rows, and
    a privileged migration user whose password is typed at run time."""

    server: MariaDB | PostgreSQL
    name: str
    app_user: str
    migration_user: str
    # The SQLAlchemy driver of the kind, for its URLs.
    driver: ClassVar[str]

    @property
    def app_url(self) -> str:
        return f"{self.driver}://{self.app_user}:{APP_PASSWORD}@127.0.0.1:{self.server.port}/{self.name}"

    @property
    def migration_url(self) -> str:
        """The production convention: a user and an empty password, asked for at run time."""
        return f"{self.driver}://{self.migration_user}:@127.0.0.1:{self.server.port}/{self.name}"

    def query(self, statement: str) -> tuple:
        raise NotImplementedError

    def tables(self) -> set[str]:
        raise NotImplementedError

    def version(self) -> str | None:
        if "alembic_version" not in self.tables():
            return None
        rows = self.query("SELECT version_num FROM alembic_version")
        return rows[0][0] if rows else None


@dataclass
class Database(ProductionDatabase):
    """A MariaDB database as in production: the app user lacks ALTER."""

    server: MariaDB
    driver: ClassVar[str] = "mysql+pymysql"

    def query(self, sql: str) -> tuple:
        connection = self.server.admin(database=self.name)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()
        finally:
            connection.close()

    def tables(self) -> set[str]:
        return application_and_version({row[0] for row in self.query("SHOW TABLES")})


def make_database(server: MariaDB, password: str = PASSWORD, process: bool = True) -> Database:
    """A database with its two users; the migration user has PROCESS, as the README asks, unless not `process`."""
    n = next(_names)
    database = Database(server, f"blog{n}", f"app{n}", f"migrator{n}")
    server.create_database(database.name)
    server.create_user(database.app_user, APP_PASSWORD, "SELECT, INSERT, UPDATE, DELETE", database.name)
    server.create_user(database.migration_user, password, "ALL PRIVILEGES", database.name)
    if process:
        # Global, so not part of create_user's per-database grant: it shows other sessions' transactions.
        server.execute("GRANT PROCESS ON *.* TO %s@'%%'", (database.migration_user,))
    return database


@dataclass
class PgDatabase(ProductionDatabase):
    """A PostgreSQL database as in production: owned by the migration role (whose password is typed),
    the app role only reads and writes rows. The same questions as Database answers, so Remote takes it."""

    server: PostgreSQL
    driver: ClassVar[str] = "postgresql+psycopg"

    def query(self, statement: str, args=None) -> tuple:
        return self.server.execute(statement, args, database=self.name)

    def tables(self) -> set[str]:
        return application_and_version(
            {row[0] for row in self.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        )

    def app_connection(self):
        """A connection as the application's role (psycopg's own, not SQLAlchemy's)."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.server.port, dbname=self.name, user=self.app_user, password=APP_PASSWORD
        )

    def schema(self) -> dict:
        """Everything reflection sees, table by table: what a half-applied revision would change."""
        from sqlalchemy import create_engine, inspect

        engine = create_engine(self.app_url)
        try:
            with engine.connect() as connection:
                found = inspect(connection)
                return {
                    table: (
                        [(c["name"], str(c["type"]), c["nullable"], c["default"]) for c in found.get_columns(table)],
                        found.get_pk_constraint(table),
                        sorted(found.get_foreign_keys(table), key=str),
                        sorted(found.get_indexes(table), key=str),
                        sorted(found.get_unique_constraints(table), key=str),
                        sorted(found.get_check_constraints(table), key=str),
                    )
                    for table in found.get_table_names()
                }
        finally:
            engine.dispose()


def make_pg_database(server: PostgreSQL, password: str = PASSWORD) -> PgDatabase:
    """A database owned by its migration role, an app role with rows only, and pg_read_all_stats for the
    migration role (as MariaDB's PROCESS: to see the application's open transactions)."""
    n = next(_names)
    database = PgDatabase(server, f"blog{n}", f"app{n}", f"migrator{n}")
    server.create_user(database.migration_user, password)
    server.create_database(database.name, owner=database.migration_user)
    server.create_user(database.app_user, APP_PASSWORD, "SELECT, INSERT, UPDATE, DELETE", database.name)
    server.execute(f'GRANT pg_read_all_stats TO "{database.migration_user}"')
    return database


class Checkout:
    """A copy of this repository to run the tools in, so tests never touch the real one."""

    def __init__(self, path: Path):
        self.path = path
        shutil.copytree(REPO, path, ignore=COPY_IGNORE)

    @property
    def versions(self) -> Path:
        return self.path / "migrations" / "versions"

    def invoke(self, *args: str, stdin: str | bytes | None = None, env: dict | None = None) -> Result:
        return run([str(BIN / "python"), "-m", "invoke", *args], self.path, stdin, env)

    def spawn(self, *args: str, env: dict[str, str]) -> pexpect.spawn:
        """`invoke ARGS` at a real terminal (a pexpect pty), with exactly the environment `env`."""
        return pexpect.spawn(
            str(BIN / "python"), ["-m", "invoke", *args], cwd=str(self.path), env=env, encoding="utf-8", timeout=120
        )

    def alembic(self, *args: str, stdin: str | None = None, env: dict | None = None) -> Result:
        return run([str(BIN / "alembic"), *args], self.path, stdin, env)

    def write_settings(self, name: str, **values: str) -> Path:
        path = self.path / "instance" / f"{name}.cfg"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(f"{key} = {value!r}\n" for key, value in values.items()))
        return path

    def use_production(self, database: Database) -> None:
        self.write_settings(
            "production",
            SQLALCHEMY_DATABASE_URI=database.app_url,
            SQLALCHEMY_ALEMBIC_URI=database.migration_url,
        )

    def add_revision(self, name: str, down_revision: str, upgrade: str = "pass", downgrade: str = "pass") -> Path:
        path = self.versions / f"{name}.py"
        path.write_text(
            f'"""{name}"""\nfrom alembic import op\nimport sqlalchemy as sa\n\n'
            f"revision = {name!r}\ndown_revision = {down_revision!r}\nbranch_labels = None\ndepends_on = None\n\n\n"
            f"def upgrade():\n    {upgrade}\n\n\ndef downgrade():\n    {downgrade}\n"
        )
        return path

    def scripts(self):
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(Config(str(self.path / "alembic.ini")))

    def head(self) -> str:
        return self.scripts().get_current_head()

    def revisions(self) -> list[str]:
        """The checkout's revisions, base first."""
        return [script.revision for script in reversed(list(self.scripts().walk_revisions()))]

    def files_containing(self, secret: str) -> list[Path]:
        return files_containing(self.path, secret)


def git(checkout, *args: str) -> str:
    """git in `checkout`, as a test's own author; its output, stripped."""
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=checkout.path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def release(checkout, message: str) -> str:
    """Everything in `checkout` committed: the release's commit."""
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", message)
    return git(checkout, "rev-parse", "HEAD")


def live_only(code: str) -> str:
    """A test revision's upgrade body whose side effects (sleeping, killing, raising) happen only when it
    really runs: the lint and --sql run each upgrade() offline too, as `alembic upgrade --sql` does."""
    return "if not op.get_context().as_sql:\n        " + code.replace("\n    ", "\n        ")


def why_still_running(child: pexpect.spawn) -> str:
    """For a process at a terminal that outlived what should have ended it: its signal masks (is SIGINT
    blocked, ignored, caught?) and, when it runs with PYTHONFAULTHANDLER=1, every thread's stack."""
    try:
        status = Path(f"/proc/{child.pid}/status").read_text()
    except OSError:
        return "(it has ended)"
    masks = [line for line in status.splitlines() if line.startswith(("SigBlk", "SigIgn", "SigCgt", "Threads"))]
    os.kill(child.pid, signal.SIGABRT)
    child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=10)
    return "\n".join([*masks, child.before or ""])


def held_until(release: Path, limit: float = 120) -> str:
    """Code for a test revision's upgrade body (wrap it in live_only) that waits until `release` exists,
    at most `limit` s: a slow revision that the test ends once it has seen what it wanted, where a fixed
    sleep would race a loaded machine."""
    return (
        f"deadline = __import__('time').monotonic() + {limit}\n    "
        f"while not __import__('os').path.exists({str(release)!r}) and __import__('time').monotonic() < deadline:\n"
        "        __import__('time').sleep(0.05)"
    )


def running(release: Path, name: str) -> Path:
    """The file that revision `name`, a held_revision held by `release`, creates once it runs."""
    return release.with_name(f"{name}.running")


def held_revision(name: str, release: Path) -> str:
    """A test revision's upgrade body: it creates table {name}_started, then, when it really runs, says
    so in a file (`running`) and is held until `release` exists. A file is seen at once whatever the
    database (not a table it makes: PostgreSQL's DDL is transactional; not its session's last query: the
    guard's savepoints follow it); no fixed sleep, so a loaded machine cannot outrun it."""
    started = f"open({str(running(release, name))!r}, 'w').close()\n    "
    return f"op.create_table('{name}_started', sa.Column('id', sa.Integer))\n    " + live_only(
        started + held_until(release)
    )


def wait_until_running(release: Path, name: str, process: subprocess.Popen | None = None, timeout: float = 60) -> None:
    """Until revision `name` (a held_revision) runs; a `process` (fab, invoke) that ends first fails the
    wait at once, with what it said."""
    deadline = time.monotonic() + timeout
    while not running(release, name).exists():
        if process is not None and process.poll() is not None:
            said = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise AssertionError(f"it ended with {process.returncode} before revision {name} started:\n{said}")
        assert time.monotonic() < deadline, f"revision {name} never started"
        time.sleep(0.05)


def files_containing(root: Path, secret: str) -> list[Path]:
    needle = secret.encode()
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                pass
    return found


def ok(result: Result) -> Result:
    """Assert the command succeeded and showed no password; return its result."""
    assert result.code == 0, result.output
    assert PASSWORD not in result.output
    return result


def one_error_line(result: Result) -> str:
    """Assert the failure shape every expected error must have; return the line."""
    assert result.code != 0, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.err
    return lines[0]


# The settings a production run selects.
PRODUCTION = {"FLASK_CONFIG": "production"}
# The example app's revisions, base first.
BASE, POSTS, HEAD = "747f7d2e75b9", "06bd3f51a453", "776f3cb23823"


def sqlite(checkout, name="development"):
    return sqlite3.connect(checkout.path / "instance" / f"{name}.db")


def all_tables(checkout) -> set[str]:
    with sqlite(checkout) as db:
        return {row[0] for row in db.execute("select name from sqlite_master where type='table'")}


def tables(checkout) -> set[str]:
    return application_and_version(all_tables(checkout))


def application_and_version(names: set[str]) -> set[str]:
    """The application's tables and alembic_version: the suite's bookkeeping beside them (revision
    checksums, backfill progress) is what its own tests look at."""
    return names - (SUITE_TABLES - {VERSION_TABLE})


def version(checkout):
    with sqlite(checkout) as db:
        return [row[0] for row in db.execute("select version_num from alembic_version")]


# -- at a real terminal ----------------------------------------------------------------------------

# The questions a migration asks at a terminal, each with the answer that lets it go on.
APPLY = ("Apply? [y/N] ", "y")
TYPED_PASSWORD = ("Password for ", PASSWORD)


def answer_at_a_terminal(child: pexpect.spawn, *answers: tuple[str, str]) -> list[str]:
    """Waits at `child`'s terminal for each prompt of `answers` in turn (as written, not a pattern) and
    types its answer; returns what the terminal showed before each prompt."""
    shown = []
    for prompt, answer in answers:
        child.expect_exact(prompt)
        shown.append(child.before)
        child.sendline(answer)
    return shown


# -- fab through the loopback sshd ----------------------------------------------------------------

STDIN_PASSWORD = PASSWORD + "\n"


@dataclass
class Remote:
    """A local checkout to run `fab` in, a server checkout reached through sshd, and its database."""

    local: Checkout
    server: Checkout
    database: Database | PgDatabase
    sshd: SSHServer
    config: Path

    def configure(
        self, key: Path | None = None, known: bool = True, fabric: dict | None = None, **environment: str
    ) -> None:
        """Write the Fabric runtime config (`fab -f`): environments.prod points at the sshd,
        whose host key is in the known_hosts file that ssh_config names (unless not `known`);
        `fabric`: more of Fabric's own settings."""
        known_hosts = self.config.parent / "known_hosts"
        known_hosts.write_text(self.sshd.known_hosts_line() + "\n" if known else "")
        ssh_config = self.config.parent / "ssh_config"
        ssh_config.write_text(f"Host *\n    UserKnownHostsFile {known_hosts}\n")
        prod = {
            "host": f"{self.sshd.user}@127.0.0.1:{self.sshd.port}",
            "app_dir": str(self.server.path),
            "python": str(BIN / "python"),
            **environment,
        }
        settings = {
            "load_ssh_configs": False,
            "ssh_config_path": str(ssh_config),
            "connect_kwargs": {
                "key_filename": str(key or self.sshd.client_key),
                "look_for_keys": False,
                "allow_agent": False,
            },
            "environments": {"prod": prod},
            **(fabric or {}),
        }
        # JSON is YAML: no quoting to get wrong.
        self.config.write_text(json.dumps(settings, indent=2))

    @property
    def argv(self) -> list[str]:
        return [str(BIN / "fab"), "-f", str(self.config)]

    def fab(self, *args: str, stdin: str | bytes | None = None) -> Result:
        return run([*self.argv, *args], self.local.path, stdin)

    def spawn(self, *args: str, env: dict[str, str] | None = None, **options) -> pexpect.spawn:
        """`fab ARGS` at a real terminal (a pexpect pty), in the local checkout."""
        return pexpect.spawn(
            self.argv[0],
            [*self.argv[1:], *args],
            cwd=str(self.local.path),
            env=environment(**(env or {})),
            encoding="utf-8",
            timeout=120,
            **options,
        )

    def upgrade(self, *args: str) -> Result:
        """`fab prod db.upgrade`, the password on stdin, expected to succeed."""
        result = self.fab("prod", "db.upgrade", "--yes", *args, stdin=STDIN_PASSWORD)
        assert result.code == 0, result.output
        return result

    def add_revision(self, name: str, upgrade: str) -> None:
        """The same revision after head in both checkouts: the code was deployed."""
        down = self.local.head()
        for checkout in (self.local, self.server):
            checkout.add_revision(name, down, upgrade=upgrade)

    def state(self) -> tuple[str | None, set[str]]:
        """The database's revision and tables."""
        return self.database.version(), self.database.tables()

    def refuses(self, *fragments: str, args: tuple[str, ...] = ("prod", "db.upgrade")) -> str:
        """Refused before any password is asked (stdin is empty), the database untouched."""
        before = self.state()
        line = refused(self.fab(*args), *fragments)
        assert self.state() == before
        return line


def refused(result: Result, *fragments: str) -> str:
    """One `error:` line holding every fragment, and no password anywhere."""
    line = one_error_line(result)
    for fragment in fragments:
        assert fragment in line, line
    assert PASSWORD not in result.output
    return line


class ProcSampler(threading.Thread):
    """Reads every process's cmdline and environ until stopped, noting those holding `secret`."""

    def __init__(self, secret: str, deadline: float = 120):
        super().__init__(daemon=True)
        self.secret = secret.encode()
        self.deadline = time.monotonic() + deadline
        self.stop = threading.Event()
        self.leaks: set[tuple[int, str, bytes]] = set()
        self.cmdlines: set[bytes] = set()
        self.rounds = 0

    def run(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                for kind in ("cmdline", "environ"):
                    try:
                        data = Path("/proc", pid, kind).read_bytes()
                    except OSError:  # gone, or not ours to read
                        continue
                    if kind == "cmdline":
                        self.cmdlines.add(data)
                    if self.secret in data:
                        self.leaks.add((int(pid), kind, data))
            self.rounds += 1

    def saw(self, fragment: bytes) -> bool:
        return any(fragment in cmdline for cmdline in self.cmdlines)


def new_files_containing(directory: Path, secret: str, since: float) -> list[Path]:
    """Files directly in `directory` written since `since` that hold `secret`."""
    found = []
    for path in directory.iterdir():
        try:
            if path.is_file() and path.stat().st_mtime >= since and secret.encode() in path.read_bytes():
                found.append(path)
        except OSError:  # vanished meanwhile
            pass
    return found


class PortForward(threading.Thread):
    """What `ssh -L` or socat does: listens on 127.0.0.1 (`port`), or on the Unix socket `unix_path`,
    and relays each connection to `target`.

    A server behind it looks local by its socket address alone. Use as a context manager."""

    def __init__(self, target: tuple[str, int], unix_path: Path | None = None):
        super().__init__(daemon=True)
        self.target = target
        if unix_path is None:
            self.listener = socket.create_server(("127.0.0.1", 0))
            self.port = self.listener.getsockname()[1]
        else:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(str(unix_path))
            self.listener.listen()
            self.port = 0
        self.sockets: list[socket.socket] = []

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.target, timeout=30)
            upstream.settimeout(None)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def __enter__(self) -> PortForward:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        except OSError:
            pass
        self.listener.close()
        for sock in self.sockets:
            sock.close()
        self.join(timeout=10)


# -- one test, every kind of database server ------------------------------------------------------

# How a database as in production is made on each kind of server the suite runs on.
DATABASE_MAKERS = {"mariadb": make_database, "postgresql": make_pg_database}


@dataclass
class ServerKind:
    """One kind of database server (its name is the key of DATABASE_MAKERS, and the fixture's id),
    its throwaway server, and the way to make a database on it as in production."""

    name: str
    server: MariaDB | PostgreSQL

    def database(self, password: str = PASSWORD) -> Database | PgDatabase:
        return DATABASE_MAKERS[self.name](self.server, password=password)


def differences_from_the_models(url: str) -> list:
    """What autogenerate finds between the example's models and the database at `url`, compared as the
    suite's env.py compares: its own tables are not the models'."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from exampleapp.models import db as models

    def include_name(name, type_, parent_names) -> bool:
        return type_ != "table" or name not in SUITE_TABLES

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"include_name": include_name})
            return compare_metadata(context, models.metadata)
    finally:
        engine.dispose()
