"""Throwaway MariaDB, PostgreSQL and OpenSSH servers for tests.

Each server lives entirely under a caller-supplied ``base_dir`` (typically a
pytest ``tmp_path``), listens on a free port on 127.0.0.1 and is started with
:class:`subprocess.Popen`, so that only the pid we started is ever signalled.
A MariaDB can instead listen on another address inside its own network
namespace (see netns.py), on the standard port.
A server that cannot start raises :class:`ServerStartError` (tests must error,
never skip).

Plain module: standard library plus PyMySQL and psycopg, no pytest imports.
"""

from __future__ import annotations

import atexit
import functools
import glob
import grp
import os
import pathlib
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import psycopg
import pymysql
from psycopg import sql

LOCALHOST = "127.0.0.1"

MARIADBD = "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = "/usr/bin/mariadb-install-db"
# sshd refuses to start unless invoked by absolute path (it re-executes itself).
SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
# Privilege separation directory compiled into Debian's sshd.
SSHD_PRIVSEP_DIR = pathlib.Path("/run/sshd")

# AF_UNIX socket paths are limited to 108 bytes including the NUL terminator.
_MAX_UNIX_SOCKET_PATH = 107


@functools.cache
def utf8_locale() -> str:
    """A UTF-8 locale every glibc machine of this kind has (C.UTF-8, glibc 2.35+ and Debian's), else C."""
    try:
        names = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "C"
    return "C.UTF-8" if {"C.utf8", "C.UTF-8"} & set(names.split()) else "C"


# What a caller's shell may set that changes how servers and tools word, encode or buffer their output.
CALLER_ONLY = ("LANG", "LANGUAGE", "PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONDONTWRITEBYTECODE")


def server_environment(**extra: str) -> dict[str, str]:
    """The environment of a server or its set-up tool: the caller's locale (LANG, LANGUAGE, LC_*) and
    Python's output settings stay behind. A server's language and encoding come from its own settings,
    never from whoever started the tests: a caller's LANGUAGE overrides lc_messages, and a C locale turns
    translated words into `?`; a caller's PYTHONUNBUFFERED hides what buffered output does."""
    kept = {name: value for name, value in os.environ.items() if name not in CALLER_ONLY}
    kept = {name: value for name, value in kept.items() if not name.startswith("LC_")}
    return {**kept, "LANG": utf8_locale(), **extra}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    """Whether a server (which sets SO_REUSEADDR) could bind ``port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Mirror the servers' own bind: TIME_WAIT leftovers must not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
        return True


def _current_user() -> str:
    # The passwd entry, not $USER: sshd authenticates the real account.
    return pwd.getpwuid(os.geteuid()).pw_name


def _tail(path: pathlib.Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a log file, or why it could not be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _read_from(path: pathlib.Path, offset: int) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")
    except OSError:
        return ""


# What mariadbd, postgres and sshd all log when their port was taken (strerror(EADDRINUSE)).
_PORT_TAKEN = "Address already in use"
_PORT_ATTEMPTS = 5


class ServerStartError(RuntimeError):
    """A throwaway server could not be started."""


# Servers still running when the interpreter exits (e.g. a fixture crashed
# between start() and its teardown) are killed rather than leaked.
_LIVE: set[_ManagedServer] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.kill()


class _ManagedServer:
    """Popen/pid handling, readiness polling and log tails shared by servers."""

    name: ClassVar[str] = "server"
    # Used when listening on an address other than 127.0.0.1 (see _pick_port).
    standard_port: ClassVar[int]

    def __init__(self, base_dir: pathlib.Path, host: str = LOCALHOST, argv_prefix: Sequence[str] = ()) -> None:
        self.base_dir = pathlib.Path(base_dir).resolve()
        self.host = host
        # Prepended to the server's argv, e.g. ["ip", "netns", "exec", NAME].
        # It must exec the server, so that our Popen pid stays the server's own.
        self.argv_prefix = tuple(argv_prefix)
        self.port: int = 0
        self.process: subprocess.Popen[bytes] | None = None

    # -- process handling --------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _log_paths(self) -> Sequence[pathlib.Path]:
        raise NotImplementedError

    def _log_tails(self) -> str:
        tails = [f"--- {p} ---\n{_tail(p)}" for p in self._log_paths() if p.exists()]
        return "\n".join(tails) or "(no log files were written)"

    def _pick_port(self) -> int:
        # Ports can only be checked on our own 127.0.0.1; another address is
        # the server's own (in its own network namespace), so nothing else
        # listens on the standard port there.
        if self.host != LOCALHOST:
            return self.standard_port
        # Keep the previous port across restarts so clients configured with it
        # keep working; fall back to a new one if somebody else grabbed it.
        if self.port and _port_is_free(self.port):
            return self.port
        return free_port()

    def _spawn(self, argv: Sequence[str], log_path: pathlib.Path, env: dict[str, str] | None = None) -> None:
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.argv_prefix, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env or server_environment(),
            )
        _LIVE.add(self)

    def _bootstrap(self, what: str, argv: Sequence[str], log_path: pathlib.Path, timeout: float, cwd=None) -> None:
        """Run a one-off setup tool (install-db, initdb), its output in `log_path`; fail as a start would."""
        with open(log_path, "ab") as log:
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    cwd=cwd,
                    env=server_environment(),
                )
            except subprocess.TimeoutExpired:
                raise ServerStartError(f"{what} timed out after {timeout:.0f}s.\n{self._log_tails()}") from None
        if result.returncode != 0:
            raise ServerStartError(f"{what} failed with code {result.returncode}.\n{self._log_tails()}")

    def _serve(
        self,
        argv: Callable[[], Sequence[str]],
        log_path: pathlib.Path,
        probe: Callable[[], bool],
        timeout: float,
        env: dict[str, str] | None = None,
    ) -> None:
        """Pick a port, spawn `argv()` (built for `self.port`) and wait until `probe` succeeds. A free port
        can be taken before the server binds it (another worker's server, any connection's ephemeral
        port: free_port() draws from that range): then another port is tried, a few times."""
        deadline = time.monotonic() + timeout
        for attempt in range(_PORT_ATTEMPTS):
            self.port = self._pick_port()
            logged = {path: path.stat().st_size if path.exists() else 0 for path in self._log_paths()}
            self._spawn(argv(), log_path, env)
            try:
                self._wait_ready(probe, deadline - time.monotonic())
                return
            except ServerStartError:
                # Its log says so (in English), or the port is someone else's now that ours has died.
                said = any(_PORT_TAKEN in _read_from(path, offset) for path, offset in logged.items())
                taken = said or (self.host == LOCALHOST and not _port_is_free(self.port))
                if not taken or self.host != LOCALHOST or attempt == _PORT_ATTEMPTS - 1:
                    raise
                self.port = 0  # not this one again

    def _wait_ready(self, probe: Callable[[], bool], timeout: float) -> None:
        """Poll ``probe`` until it succeeds; raise if the process dies or time runs out."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                _LIVE.discard(self)
                raise ServerStartError(f"{self.name} exited with code {code} during startup.\n{self._log_tails()}")
            if probe():
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.name} (pid {self.pid}) not ready on {self.host}:{self.port} "
                    f"after {timeout:.0f}s.\n{self._log_tails()}"
                )
            time.sleep(0.05)

    def _signal_and_wait(self, sig: int, timeout: float) -> None:
        assert self.process is not None
        # Popen.send_signal is a no-op once the child has been reaped, so a
        # recycled pid can never be hit.
        self.process.send_signal(sig)
        self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 30) -> None:
        """Gracefully stop (SIGTERM, then SIGKILL after ``timeout``). Idempotent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self._signal_and_wait(signal.SIGTERM, timeout)
            except subprocess.TimeoutExpired:
                self._signal_and_wait(signal.SIGKILL, timeout)
        _LIVE.discard(self)
        self._wait_port_released()

    def kill(self) -> None:
        """SIGKILL our own process and reap it. Idempotent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal_and_wait(signal.SIGKILL, 30)
        _LIVE.discard(self)
        self._wait_port_released()

    def _wait_port_released(self, timeout: float = 5) -> None:
        """A child forked for a connection just before the stop (sshd's) can hold the listening
        socket a moment longer than our process: stopped means the port is closed too."""
        if self.host != LOCALHOST or not self.port:
            return
        deadline = time.monotonic() + timeout
        while not _port_is_free(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def start(self, timeout: float = 60) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state} {self.base_dir}>"


class MariaDB(_ManagedServer):
    """A throwaway MariaDB server; root has no password and is reachable over TCP.

    With ``host`` other than 127.0.0.1, root may also log in from any address,
    since clients then connect from elsewhere (e.g. the other end of a veth).
    """

    name = "mariadbd"
    standard_port = 3306

    # Small footprint and cheap commits. flush-log-at-trx-commit=2 still
    # writes the redo log to the OS on every commit, so committed data
    # survives kill(); only an OS crash could lose it.
    _TUNING: ClassVar[tuple[str, ...]] = (
        "--innodb-buffer-pool-size=16M",
        "--innodb-log-file-size=8M",
        "--innodb-flush-log-at-trx-commit=2",
        "--innodb-doublewrite=0",
    )
    # --no-defaults drops Debian's /etc/mysql config, whose utf8mb4 default we
    # want to keep (the compiled-in default is latin1).
    _SERVER_ONLY: ClassVar[tuple[str, ...]] = (
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_general_ci",
        "--skip-name-resolve",
        "--skip-log-bin",
    )

    def __init__(self, base_dir: pathlib.Path, host: str = LOCALHOST, argv_prefix: Sequence[str] = ()) -> None:
        super().__init__(base_dir, host, argv_prefix)
        self.datadir = self.base_dir / "data"
        self.tmpdir = self.base_dir / "tmp"
        self.pid_file = self.base_dir / "mariadbd.pid"
        self.log_path = self.base_dir / "mariadbd.err"
        # Anything mariadbd prints before --log-error takes effect.
        self.console_log_path = self.base_dir / "mariadbd.out"
        self.install_log_path = self.base_dir / "install-db.log"
        self.remote_root_sql = self.base_dir / "remote-root.sql"
        self.socket_path = self.datadir / "mariadbd.sock"
        # Written only after a successful mariadb-install-db, so a datadir
        # left behind by an interrupted initialisation is redone.
        self._initialised_marker = self.base_dir / ".initialised"
        self.user = _current_user()

    def _log_paths(self) -> Sequence[pathlib.Path]:
        return (self.install_log_path, self.console_log_path, self.log_path)

    def _initialise(self, timeout: float) -> None:
        if self._initialised_marker.exists():
            return
        shutil.rmtree(self.datadir, ignore_errors=True)
        argv = [
            MARIADB_INSTALL_DB,
            "--no-defaults",  # must come first
            f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            f"--user={self.user}",
            # Its bootstrap server's temporary tables too stay in this server's directory, not a shared /tmp.
            f"--tmpdir={self.tmpdir}",
            *self._TUNING,
        ]
        if self.host != LOCALHOST:
            # install-db only creates root@localhost, 127.0.0.1 and ::1. Its
            # bootstrap skips the grant tables, which CREATE USER needs loaded.
            self.remote_root_sql.write_text(
                "FLUSH PRIVILEGES;\nCREATE USER root@'%';\nGRANT ALL PRIVILEGES ON *.* TO root@'%' WITH GRANT OPTION;\n"
            )
            argv.append(f"--extra-file={self.remote_root_sql}")
        self._bootstrap("mariadb-install-db", argv, self.install_log_path, timeout)
        self._initialised_marker.touch()

    def _socket_arg(self) -> str:
        # mariadbd aborts if the socket path exceeds 107 bytes, which long
        # pytest tmp_path names can. It chdirs into the datadir before creating
        # the socket, so a relative name lands at the same self.socket_path.
        if len(os.fsencode(self.socket_path)) <= _MAX_UNIX_SOCKET_PATH:
            return str(self.socket_path)
        return self.socket_path.name

    def _accepts_root(self) -> bool:
        # Bounded reads too: until ours is up, whatever else holds the port may accept and stay silent.
        try:
            self.admin(connect_timeout=2, read_timeout=2, write_timeout=2).close()
        except (pymysql.err.Error, OSError):
            return False
        return True

    def start(self, timeout: float = 60) -> None:
        """Initialise the datadir if needed, start mariadbd and wait until root can log in."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(exist_ok=True)
        started = time.monotonic()
        self._initialise(timeout)

        def argv() -> list[str]:
            return [
                MARIADBD,
                "--no-defaults",  # must come first
                f"--datadir={self.datadir}",
                f"--socket={self._socket_arg()}",
                f"--port={self.port}",
                f"--bind-address={self.host}",
                f"--pid-file={self.pid_file}",
                f"--log-error={self.log_path}",
                f"--tmpdir={self.tmpdir}",
                f"--user={self.user}",  # mariadbd refuses to run as root without it
                *self._SERVER_ONLY,
                *self._TUNING,
            ]

        self._serve(argv, self.console_log_path, self._accepts_root, timeout - (time.monotonic() - started))

    def admin(self, **kwargs: Any) -> pymysql.connections.Connection:
        """A new autocommit connection as root over TCP."""
        params: dict[str, Any] = dict(
            host=self.host,
            port=self.port,
            user="root",
            password="",
            autocommit=True,
            charset="utf8mb4",
        )
        params.update(kwargs)
        return pymysql.connect(**params)

    def execute(self, sql: str, args: Any = None) -> tuple[Any, ...]:
        """Run one statement as root and return its rows (if any).

        With ``args`` the statement uses PyMySQL ``%s`` placeholders, so a
        literal ``%`` must be written ``%%``.
        """
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return tuple(cur.fetchall())

    def create_database(self, name: str) -> None:
        self.execute(f"CREATE DATABASE {_quote_ident(name)} CHARACTER SET utf8mb4")

    def create_user(
        self,
        name: str,
        password: str,
        privileges: str = "ALL PRIVILEGES",
        database: str | None = None,
    ) -> None:
        """Create ``name``@'%' and grant ``privileges`` on ``database`` (all databases if None).

        The password travels only as a query parameter, never in argv, env or
        files. '%' suffices for TCP logins from 127.0.0.1 because the server
        runs with --skip-name-resolve and has no anonymous users.
        """
        if not _PRIVILEGES_CHARS.issuperset(privileges) or not privileges.strip():
            raise ValueError(f"unexpected privilege list: {privileges!r}")
        target = "*.*" if database is None else f"{_quote_ident(database)}.*"
        self.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (name, password))
        self.execute(f"GRANT {privileges} ON {target} TO %s@'%%'", (name,))


# Privileges are SQL keywords and cannot be parameters; allow only the
# characters they are made of so nothing else can be smuggled in.
_PRIVILEGES_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_, ")


def _quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _postgresql_bin() -> pathlib.Path | None:
    """Debian's newest PostgreSQL binaries (/usr/lib/postgresql/<version>/bin), if installed."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    versions = {pathlib.Path(path).parts[-3]: pathlib.Path(path).parent for path in found}
    return versions[max(versions, key=lambda version: int(version) if version.isdigit() else 0)]


def _traversable_by(path: pathlib.Path, uid: int, gids: set[int]) -> bool:
    """Whether a process of ``uid`` (in ``gids``) could reach ``path``: x on every ancestor."""
    for ancestor in [*reversed(path.parents), path]:
        try:
            info = ancestor.stat()
        except OSError:
            return False
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


# Cluster directories made outside base_dir (see PostgreSQL.__init__), removed when the tests end.
_PRIVATE_CLUSTERS: list[tuple[PostgreSQL, pathlib.Path]] = []


def _remove_private_clusters() -> None:
    # Registered after _kill_leftovers, so it runs first (atexit is LIFO): kill, then remove.
    for server, directory in _PRIVATE_CLUSTERS:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)


class PostgreSQL(_ManagedServer):
    """A throwaway PostgreSQL server: ``initdb`` into its own directory, ``postgres -D`` started directly.

    The superuser ``postgres`` logs in without a password over TCP from 127.0.0.1 and on the server's
    own Unix socket (like the MariaDB's root); every other role needs its password (SCRAM), so a
    wrong one is refused as in production. As root, the server runs as the ``postgres`` OS user
    (it refuses to run as root), through ``setpriv``, which execs: our Popen pid is the server's.
    """

    name = "postgres"
    standard_port = 5432
    SUPERUSER = "postgres"
    # Cheap and quick; a crash may lose data, which a throwaway server does not mind.
    _TUNING: ClassVar[tuple[str, ...]] = (
        "fsync=off",
        "synchronous_commit=off",
        "full_page_writes=off",
        "shared_buffers=16MB",
        "max_connections=40",
        "max_wal_size=64MB",
        "logging_collector=off",
    )

    def __init__(
        self,
        base_dir: pathlib.Path,
        host: str = LOCALHOST,
        argv_prefix: Sequence[str] = (),
        lc_messages: str | None = None,
    ) -> None:
        """``lc_messages``: the language of the server's messages, e.g. ``de_DE.UTF-8``, for a server
        that does not speak English; compiled with localedef into the cluster's directory when the
        machine lacks it (see _messages_locale)."""
        bin_dir = _postgresql_bin()
        if bin_dir is None:
            raise ServerStartError("PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb")
        self.bin_dir = bin_dir
        self.run_as: pwd.struct_passwd | None = None
        prefix = list(argv_prefix)
        if os.geteuid() == 0:
            try:
                self.run_as = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerStartError("running as root, and no postgres OS user to run the server as") from None
            gid = self.run_as.pw_gid
            groups = {gid, *(group.gr_gid for group in grp.getgrall() if self.run_as.pw_name in group.gr_mem)}
            prefix += ["setpriv", f"--reuid={self.run_as.pw_uid}", f"--regid={gid}", "--init-groups", "--"]
        super().__init__(base_dir, host, prefix)
        self.log_path = self.base_dir / "postgres.log"
        self.initdb_log_path = self.base_dir / "initdb.log"
        self.cluster_dir = self.base_dir / "cluster"
        # The server's user must reach its directory, and the socket's path must fit in 107 bytes:
        # pytest's root-owned /tmp/pytest-of-root is 0700, so as root the cluster lives in a private
        # directory of its own under the system's temporary directory (0700, the server's user's).
        usable = len(os.fsencode(self.cluster_dir / "data" / ".s.PGSQL.65535")) <= _MAX_UNIX_SOCKET_PATH
        if self.run_as is not None:
            usable = usable and _traversable_by(self.base_dir, self.run_as.pw_uid, groups)
        if not usable:
            self.cluster_dir = pathlib.Path(tempfile.mkdtemp(prefix="pg-test-"))
            if not _PRIVATE_CLUSTERS:
                atexit.register(_remove_private_clusters)
            _PRIVATE_CLUSTERS.append((self, self.cluster_dir))
        self.datadir = self.cluster_dir / "data"
        # The socket sits in the data directory (0700): no one else's socket directory is touched.
        self.socket_dir = self.datadir
        self.lc_messages = lc_messages
        self.ctype = utf8_locale()
        # glibc looks for locales here first (LOCPATH) when the machine has not installed lc_messages.
        self.locale_dir = self.cluster_dir / "locales"

    def _log_paths(self) -> Sequence[pathlib.Path]:
        return (self.initdb_log_path, self.log_path)

    def _initialise(self, timeout: float) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        shutil.rmtree(self.datadir, ignore_errors=True)
        self.cluster_dir.mkdir(parents=True, exist_ok=True)
        if self.run_as is not None:
            os.chown(self.cluster_dir, self.run_as.pw_uid, self.run_as.pw_gid)
        self.cluster_dir.chmod(0o700)
        # pg_hba.conf is written below: these only apply to initdb's own defaults.
        argv = [
            *self.argv_prefix,
            str(self.bin_dir / "initdb"),
            f"--pgdata={self.datadir}",
            f"--username={self.SUPERUSER}",
            "--encoding=UTF8",
            # A UTF-8 ctype, whatever the caller's locale: a server's translated messages (lc_messages)
            # are then UTF-8 in every session, as they are in production.
            *(["--no-locale", f"--lc-ctype={self.ctype}"] if self.ctype != "C" else ["--no-locale"]),
            "--auth=trust",
            "--no-sync",
        ]
        try:
            # cwd: initdb complains when it cannot read the caller's working directory.
            self._bootstrap("initdb", argv, self.initdb_log_path, timeout, cwd=self.cluster_dir)
        except ServerStartError:
            shutil.rmtree(self.datadir, ignore_errors=True)  # redone on the next start
            raise
        # Superuser without a password on loopback (the tests' admin); everyone else by password.
        # On another address (a network namespace of its own), clients come from elsewhere: as MariaDB's
        # root there, the superuser is trusted from any address, which only the veth pair reaches.
        clients = "127.0.0.1/32" if self.host == LOCALHOST else "0.0.0.0/0"
        (self.datadir / "pg_hba.conf").write_text(
            f"local all {self.SUPERUSER} trust\n"
            f"host all {self.SUPERUSER} {clients} trust\n"
            "local all all scram-sha-256\n"
            f"host all all {clients} scram-sha-256\n"
        )

    def _accepts_superuser(self) -> bool:
        try:
            self.admin(connect_timeout=2).close()
        except (psycopg.Error, OSError):
            return False
        return True

    def start(self, timeout: float = 60) -> None:
        """Initialise the cluster if needed, start postgres and wait until the superuser can log in."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._initialise(timeout)
        settings = [
            f"listen_addresses={self.host}",  # never every interface
            f"unix_socket_directories={self.socket_dir}",
            *self._TUNING,
        ]
        env = None
        if self.lc_messages:
            settings.append(f"lc_messages={self.lc_messages}")
            env = self._messages_locale(timeout)

        def argv() -> list[str]:
            words = [str(self.bin_dir / "postgres"), "-D", str(self.datadir)]
            for setting in [*settings, f"port={self.port}"]:
                words += ["-c", setting]
            return words

        self._serve(argv, self.log_path, self._accepts_superuser, timeout - (time.monotonic() - started), env)

    def _messages_locale(self, timeout: float) -> dict[str, str] | None:
        """The server's environment for lc_messages: none needed when the machine has the locale;
        else the locale is compiled (localedef, from the `locales` package's sources) into the
        cluster's own directory and named by LOCPATH, which glibc reads first. Nothing outside the
        cluster's directory is written; the server's messages come from PostgreSQL's own catalogs
        (/usr/share/locale/<lang>/LC_MESSAGES/postgres-<major>.mo)."""
        assert self.lc_messages
        installed = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout.split()
        wanted = {self.lc_messages, self.lc_messages.replace("UTF-8", "utf8")}
        if wanted & set(installed):
            return None
        source, _, charmap = self.lc_messages.partition(".")
        localedef = shutil.which("localedef")
        if not localedef or not pathlib.Path("/usr/share/i18n/locales", source).exists():
            raise ServerStartError(
                f"lc_messages={self.lc_messages}: not installed (locale -a), and no localedef or "
                f"/usr/share/i18n/locales/{source} to build it (Debian's `locales` package)"
            )
        language = source.split("_")[0]
        catalog = glob.glob(f"/usr/share/locale/{language}/LC_MESSAGES/postgres-*.mo")
        if not catalog:
            raise ServerStartError(
                f"PostgreSQL has no {language} messages: no /usr/share/locale/{language}/LC_MESSAGES/postgres-*.mo"
            )
        target = self.locale_dir / self.lc_messages
        if not target.exists():
            self.locale_dir.mkdir(mode=0o755, exist_ok=True)
            argv = [localedef, "-i", source, "-c", "-f", charmap or "UTF-8", str(target)]
            self._bootstrap("localedef", argv, self.initdb_log_path, timeout)
            for path in [self.locale_dir, *self.locale_dir.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)  # the server's user reads them
        return server_environment(LOCPATH=str(self.locale_dir))

    def _signal_and_wait(self, sig: int, timeout: float) -> None:
        # postgres reads SIGTERM as "smart" shutdown, which waits for every client to leave;
        # SIGINT is "fast": it ends the sessions, rolls back, and stops at once.
        super()._signal_and_wait(signal.SIGINT if sig == signal.SIGTERM else sig, timeout)

    def admin(self, database: str = "postgres", **kwargs: Any) -> psycopg.Connection:
        """A new autocommit connection as the superuser over TCP."""
        params: dict[str, Any] = dict(
            host=self.host, port=self.port, user=self.SUPERUSER, dbname=database, autocommit=True
        )
        params.update(kwargs)
        return psycopg.connect(**params)

    def execute(self, statement: str | sql.Composable, args: Any = None, database: str = "postgres") -> tuple:
        """Run one statement as the superuser in ``database`` and return its rows (if any)."""
        with self.admin(database) as connection:
            cursor = connection.execute(statement, args)
            return tuple(cursor.fetchall()) if cursor.description else ()

    def create_database(self, name: str, owner: str | None = None) -> None:
        """A database; its ``owner`` (a role made first) owns it and, from PostgreSQL 15, its public schema."""
        statement = sql.SQL("CREATE DATABASE {} ENCODING 'UTF8'").format(sql.Identifier(name))
        if owner:
            statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(owner))
        self.execute(statement)
        if owner and int(self.execute("SHOW server_version_num")[0][0]) < 150000:
            # From 15, public belongs to pg_database_owner (the owner, then) and PUBLIC may not CREATE
            # in it; before, it is the bootstrap superuser's and open to all: make it as 15 has it.
            self.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)), database=name)
            self.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"), database=name)

    def create_user(
        self,
        name: str,
        password: str,
        privileges: str = "SELECT, INSERT, UPDATE, DELETE",
        database: str | None = None,
    ) -> None:
        """A login role; with ``database``, granted ``privileges`` on its tables, present and future
        (those its owner creates). No CREATE on the schema: the role cannot change the schema.

        The password never travels in a statement (the server would log it with a failed one):
        libpq hashes it client-side (SCRAM), as psql's \\password does."""
        if not _PRIVILEGES_CHARS.issuperset(privileges) or not privileges.strip():
            raise ValueError(f"unexpected privilege list: {privileges!r}")
        role = sql.Identifier(name)
        with self.admin() as connection:
            hashed = connection.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256")
            connection.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(hashed.decode())))
        if database is None:
            return
        ((owner,),) = self.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,))
        granted = sql.SQL(privileges)
        for statement in (
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role),
            sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(role),
            sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA public TO {}").format(granted, role),
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(role),
            sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT {} ON TABLES TO {}").format(
                sql.Identifier(owner), granted, role
            ),
            # Inserting into a table with a serial or identity key takes the sequence's next value.
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {}"
            ).format(sql.Identifier(owner), role),
        ):
            self.execute(statement, database=database)


class SSHServer(_ManagedServer):
    """A throwaway OpenSSH sshd on 127.0.0.1 accepting one client key for the current user."""

    name = "sshd"
    standard_port = 22

    def __init__(self, base_dir: pathlib.Path) -> None:
        super().__init__(base_dir)
        self.user = _current_user()
        self.host_key = self.base_dir / "ssh_host_ed25519_key"
        self.host_key_public = self.base_dir / "ssh_host_ed25519_key.pub"
        self.client_key = self.base_dir / "client_ed25519"
        self.client_key_public = self.base_dir / "client_ed25519.pub"
        self.authorized_keys = self.base_dir / "authorized_keys"
        self.config_path = self.base_dir / "sshd_config"
        self.pid_file = self.base_dir / "sshd.pid"
        self.log_path = self.base_dir / "sshd.log"

    def _log_paths(self) -> Sequence[pathlib.Path]:
        return (self.log_path,)

    def _keygen(self, path: pathlib.Path, comment: str) -> None:
        # Reuse existing keys so a restarted server keeps its identity; an
        # existing file would also make ssh-keygen prompt "Overwrite?".
        if path.exists():
            return
        result = subprocess.run(
            [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ServerStartError(f"ssh-keygen failed for {path}: {result.stderr.strip()}")

    def _write_config(self) -> None:
        options = {
            "Port": str(self.port),
            "ListenAddress": self.host,
            "HostKey": str(self.host_key),
            "PidFile": str(self.pid_file),
            "AuthorizedKeysFile": str(self.authorized_keys),
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "PubkeyAuthentication": "yes",
            "PermitRootLogin": "prohibit-password",
            # Files under tmp_path need not satisfy sshd's ownership checks.
            "StrictModes": "no",
            "UsePAM": "no",
            "AcceptEnv": "none",
            "PrintMotd": "no",
            "UseDNS": "no",
            "Subsystem": "sftp internal-sftp",
            "LogLevel": "VERBOSE",
        }
        self.config_path.write_text("".join(f"{k} {v}\n" for k, v in options.items()))

    def _sends_banner(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as sock:
                return sock.recv(64).startswith(b"SSH-2.0")
        except OSError:
            return False

    def start(self, timeout: float = 20) -> None:
        """Create keys and config, start sshd and wait for its SSH-2.0 banner."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        # sshd aborts without its privilege separation directory, which only
        # the Debian service unit would otherwise create.
        if not SSHD_PRIVSEP_DIR.is_dir():
            SSHD_PRIVSEP_DIR.mkdir(parents=True, exist_ok=True)
            SSHD_PRIVSEP_DIR.chmod(0o755)  # not subject to umask
        self._keygen(self.host_key, "test-sshd-host")
        self._keygen(self.client_key, "test-sshd-client")
        self.authorized_keys.write_text(self.client_key_public.read_text())

        def argv() -> list[str]:
            self._write_config()  # names self.port
            return [SSHD, "-D", "-e", "-f", str(self.config_path)]

        self._serve(argv, self.log_path, self._sends_banner, timeout)

    def known_hosts_line(self) -> str:
        """``[127.0.0.1]:PORT <keytype> <key>`` for a known_hosts file."""
        key_type, key = self.host_key_public.read_text().split()[:2]
        return f"[{self.host}]:{self.port} {key_type} {key}"
