"""The SSH transport of `fab ENV db.*`: one connection, and one server process per fab command.

The server's checkout runs its own `db.*` tasks (`python -m deploy.server`); a command that writes
holds a conversation with it on the same channel (status.py): the server says where its database
stands, the laptop checks, asks and confirms, then answers `go` and the password, or nothing.
Fabric's Connection makes the connection (ssh_config, keys, timeouts); the conversation is paramiko's
channel, which Fabric's runners, made to run a command to its end, do not offer."""

from __future__ import annotations

import copy
import json
import logging
import os
import queue
import re
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from shlex import quote

from fabric import Connection
from invoke import Exit

from .environments import Target
from .errors import DEBUG, DeployError, debugging
from .status import GO, STATUS_LINE, Status

# Seconds to connect and to get the server's SSH banner, unless Fabric's timeouts.connect says otherwise.
CONNECT_TIMEOUT = 10
# SSH handshakes at once from this process: OpenSSH's MaxStartups (default 10:30:100) starts dropping
# connections past 10 unauthenticated ones, as a fleet of one host's tenants would open.
HANDSHAKES = threading.BoundedSemaphore(8)
# What fab starts on the server: its checkout's `db.*` tasks, with the options only the laptop passes.
SERVER_ENTRY = "deploy.server"
# An older suite on the server: Python's words for a module it lacks (no SERVER_ENTRY), Invoke's for a
# switch it does not know (`--conversation`, `--targets`, a newer guard switch).
UNKNOWN_SWITCH = re.compile(r"No idea what '(--[a-z-]+)' is")
NO_ENTRY = re.compile(r"No module named '?" + re.escape(SERVER_ENTRY) + r"\b")


class Server:
    """One target's server: an SSH connection and its checkout's `db.*` tasks (deploy.server)."""

    def __init__(self, c, target: Target):
        self.target = target
        self.name = target.label
        # Keys and ssh_config come from Fabric's own configuration. `fab` reads ssh_config before it
        # merges fabric.yaml and -f files, so an ssh_config_path set there needs this second read.
        if c.config.get("ssh_config_path"):
            c.config.load_ssh_config()
        self.timeout = timeout = c.config.timeouts.connect or CONNECT_TIMEOUT
        try:
            self.connection = Connection(target.host, config=c.config, connect_timeout=timeout)
        except ValueError as exc:
            where = f"environments.{target.environment}.host"
            raise DeployError(f"{where} is not a host string (user@host:port): {exc}") from None
        # A peer that accepts but never speaks SSH would otherwise hold us for paramiko's own 15 s and more.
        self.connection.connect_kwargs.setdefault("banner_timeout", timeout)
        self.connection.connect_kwargs.setdefault("auth_timeout", timeout)
        self.where = f"{self.connection.user}@{self.connection.host}:{self.connection.port}"

    def __enter__(self) -> Server:
        import paramiko

        # Paramiko's transport thread logs its tracebacks; with no handler, Python would print them.
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        self.verify_host_keys()
        try:
            with HANDSHAKES:
                self.connection.open()
        except paramiko.AuthenticationException:
            raise DeployError(f"SSH authentication to {self.where} was refused: check your key or ssh_config") from None
        except paramiko.BadHostKeyException:
            raise DeployError(f"the host key of {self.where} differs from known_hosts: stop and find out why") from None
        except paramiko.SSHException as exc:
            if "known_hosts" in str(exc):
                raise DeployError(
                    f"{self.where} is not in known_hosts: connect once with ssh, check the fingerprint, then retry"
                ) from None
            # Paramiko tells a silent or non-SSH peer only in words: no banner, or no session after the wait.
            if "banner" in str(exc) or str(exc) == "No existing session":
                raise DeployError(
                    f"cannot reach {self.where}: no SSH server answered within {self.timeout:g} s "
                    "(Fabric's timeouts.connect)"
                ) from None
            raise DeployError(f"cannot reach {self.where}: {exc}") from None
        except (TimeoutError, OSError) as exc:
            raise DeployError(f"cannot reach {self.where}: {exc}") from None
        try:
            self.refuse_revoked_key()
        except DeployError:
            self.connection.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.connection.close()

    def verify_host_keys(self) -> None:
        """Only a known host gets the password: Fabric itself accepts any host key."""
        import paramiko

        client = self.connection.client
        # ~/.ssh/known_hosts, and ssh_config's UserKnownHostsFile, as OpenSSH would read it.
        paths = ["~/.ssh/known_hosts", *self.connection.ssh_config.get("userknownhostsfile", "").split()]
        self.revoked: list[tuple[str, str]] = []  # the @revoked lines, and where
        for path in paths:
            self.revoked += load_known_hosts(client.get_host_keys(), os.path.expanduser(path))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())

    def refuse_revoked_key(self) -> None:
        """Paramiko reads no @revoked line: its key is refused here, before any command is started,
        whichever hosts the line names (a revoked key is trusted nowhere)."""
        key = self.connection.client.get_transport().get_remote_server_key()
        for where, line in self.revoked:
            if line.split()[1:3] == [key.get_name(), key.get_base64()]:
                raise DeployError(f"the host key of {self.where} is marked @revoked in {where}: stop and find out why")

    def session(
        self, task_args: list[str], hide: bool = False, conversation: bool = False, output: Output | None = None
    ) -> Session:
        """Start `db.*` in the server's checkout (deploy.server), with this environment's settings. No pty: a pty
        would echo the password, and nothing typed here reaches the server unless sent on purpose.
        Its output is shown as it comes, unless `hide`, or until the status line of a `conversation`."""
        talk = Session(self, self._start(task_args), hide, output or Output())
        if not conversation:
            talk.close_stdin()  # nothing to say: a server command that reads stdin finds its end
            talk.show_stderr()
        return talk

    def fleet(self, task_args: list[str], targets: list[Target]) -> Fleet:
        """`db.*` for several targets of this host in one server process (forking.py), which forks a
        child for each run started on it (Fleet.session), over this one channel."""
        pairs = json.dumps([[target.settings, target.caller] for target in targets])
        return Fleet(self, targets, Multiplexed(self._start([*task_args, f"--targets={pairs}"])))

    def for_target(self, target: Target) -> Server:
        """This connection, speaking for another target on the same host."""
        view = copy.copy(self)
        view.target, view.name = target, target.label
        return view

    def _start(self, task_args: list[str]):
        environment = {
            "FLASK_CONFIG": self.target.settings,
            # The server's hints name the command typed here (`fab prod db.status`).
            "INVOKE_DB_CALLER": self.target.caller,
            **({DEBUG: "1"} if debugging() else {}),
        }
        channel = self.connection.client.get_transport().open_session()
        target = self.target
        argv = ["-m", SERVER_ENTRY, *task_args]
        channel.exec_command(
            command_line(argv, target.app_dir, target.pythons, environment, self.where, target.environment)
        )
        return channel

    def invoke(self, task_args: list[str], hide: bool = False) -> str:
        """Run `db.*` on the server to its end: its output shown, or returned when `hide`;
        a failure ends here, in one line."""
        return self.session(task_args, hide).finish()

    @property
    def status_hint(self) -> str:
        return f": run `{self.target.caller} db.status` to see where the database is"

    @contextmanager
    def conversation(self, task_args: list[str], output: Output | None = None) -> Iterator[Session]:
        """A task that writes, run with `--conversation`: its status is read before anything is asked."""
        with self.session([*task_args, "--conversation"], conversation=True, output=output) as talk:
            talk.read_status()
            yield talk


# The known_hosts lines already warned about, so a fleet's hosts do not repeat the warning.
_SKIPPED_LINES: set[tuple[str, int]] = set()


def load_known_hosts(keys, path: str) -> list[tuple[str, str]]:
    """The entries of a known_hosts file into paramiko's HostKeys `keys`; returns its @revoked lines
    (`FILE, line N`, the line's words after the marker). A line that is not an entry is skipped with a
    warning naming the file and line, as OpenSSH does: paramiko would stop at the first one, whichever
    host it names."""
    from paramiko.hostkeys import HostKeyEntry, HostKeys

    revoked: list[tuple[str, str]] = []
    try:
        with open(path, "rb") as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        return revoked
    except OSError as exc:  # as OpenSSH: said, and the other files still verify
        print(f"warning: cannot read {path}: {exc.strerror}, skipped", file=sys.stderr)
        return revoked
    for number, raw in enumerate(lines, 1):
        line = raw.decode("utf-8", "replace").strip()
        if not line or line.startswith("#"):
            continue
        marker, *rest = line.split(None, 1)
        if marker == "@revoked":
            revoked.append((f"{path}, line {number}", "".join(rest)))
            continue
        try:
            entry = HostKeyEntry.from_line(line, number)
            # A hashed name's salt is decoded only when a host is looked up: check it now.
            for name in entry.hostnames if entry is not None else ():
                if name.startswith("|1|"):
                    HostKeys.hash_host("", name)
        except Exception:  # paramiko's InvalidHostKey, SSHException, binascii's and others
            entry = None
        if entry is None:
            if (path, number) not in _SKIPPED_LINES:
                _SKIPPED_LINES.add((path, number))
                what = f"{marker} is not supported" if marker.startswith("@") else "not a known_hosts entry"
                print(f"warning: {path}, line {number}: {what}, skipped", file=sys.stderr)
            continue
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)
    return revoked


class Session:
    """One server command on its own channel. Its stdout comes line by line until the status line
    (a conversation), then as it comes; its stderr is held until then, and shown after; its stdin is
    the laptop's to write: the answer, the password, `stop` and `abort`."""

    def __init__(self, server: Server, channel, hide: bool, output: Output) -> None:
        self.server = server
        self.channel = channel
        self.hide = hide
        self.output = output
        self.status: Status | None = None
        self.before_status = ""  # what the server printed before its status line
        self._stdout = b""
        self._stderr = bytearray()
        self._stderr_lock = threading.Lock()
        self._stderr_shown = False
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        # Lines sent from a signal handler go through a writer thread: the main thread may be inside
        # paramiko holding the channel's lock when Ctrl-C comes.
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        threading.Thread(target=self._write, daemon=True).start()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        # A refusal or Ctrl-C before `go`: the end of its stdin tells the server to stop, quietly.
        self.close_stdin()
        self.channel.close()

    def close_stdin(self) -> None:
        self._outbox.put(None)

    # -- the conversation --------------------------------------------------------------------------

    def read_status(self) -> Status:
        """The server's status line (status.py); the lines before it are kept in `before_status`."""
        before = []
        for line in self._lines():
            if line.startswith(STATUS_LINE):
                self.before_status = "".join(before)
                self.status = Status.from_json(line[len(STATUS_LINE) :], self.server.name)
                self.show_stderr()
                return self.status
            before.append(line)
        self.finish()  # it ended without a status: the failure is told there
        raise DeployError(f"{self.server.name}: the server's command gave no status")

    def go(self, password: str | None = None) -> None:
        """Tell the server to go on, giving it the password (when its status says one is needed)."""
        self.send(GO + ("\n" + password if password is not None else ""))

    def send(self, line: str) -> None:
        """A line on the server's stdin; safe to call from a signal handler."""
        self._outbox.put((line + "\n").encode())

    def finish(self) -> str:
        """Wait for the command's end. Its output is shown as it comes (returned instead when `hide`);
        a failure raises: one line, the server's own reason where it gave one."""
        kept = self._relay_stdout()
        self._stderr_reader.join()
        exited = self.channel.recv_exit_status()
        if exited == 0:
            return kept
        said = self.reason()
        if said is None:
            ended = how_it_ended(exited)
            raise DeployError(f"{self.server.name}: the server's command {ended}{self.server.status_hint}")
        if self._stderr_shown and own_error(self._stderr.decode("utf-8", "replace")) is not None:
            raise Exit(code=exited)  # the server's `error:` line is on stderr already
        raise DeployError(said)

    def reason(self) -> str | None:
        """The server's own one-line reason for a failure, if it gave one."""
        return server_error(self._stderr.decode("utf-8", "replace"), self.server)

    # -- the channel's streams ---------------------------------------------------------------------

    def _lines(self) -> Iterator[str]:
        while True:
            while b"\n" in self._stdout:
                line, self._stdout = self._stdout.split(b"\n", 1)
                yield line.decode("utf-8", "replace") + "\n"
            chunk = self.channel.recv(65536)
            if not chunk:
                return
            self._stdout += chunk

    def _relay_stdout(self) -> str:
        kept = bytearray()
        chunk, self._stdout = self._stdout, b""
        while True:
            if self.hide:
                kept += chunk
            elif chunk:
                self.output.write(1, chunk)
            chunk = self.channel.recv(65536)
            if not chunk:
                self.output.write(1, b"", final=True)
                return kept.decode("utf-8", "replace")

    def _read_stderr(self) -> None:
        while chunk := self.channel.recv_stderr(65536):
            with self._stderr_lock:
                self._stderr += chunk
                if self._stderr_shown:
                    self.output.write(2, chunk)
        with self._stderr_lock:
            if self._stderr_shown:
                self.output.write(2, b"", final=True)

    def show_stderr(self) -> None:
        """From the status on, the server's stderr (Alembic's progress, warnings) is the user's to see."""
        if self.hide:
            return
        with self._stderr_lock:
            self._stderr_shown = True
            self.output.write(2, bytes(self._stderr))

    def _write(self) -> None:
        try:
            while (data := self._outbox.get()) is not None:
                self.channel.sendall(data)
            self.channel.shutdown_write()
        except Exception:  # the channel is gone (closed here, or the connection lost): nothing to tell
            return


class Fleet:
    """One host's server process serving several of its targets: a Session for each run started."""

    def __init__(self, server: Server, targets: list[Target], mux: Multiplexed) -> None:
        self.server, self.targets, self.mux = server, targets, mux

    def session(self, target: Target, arguments: dict | None = None, hide=False, prefix=True) -> Session:
        """Start `target`'s task with `arguments` (its keyword arguments on the server): its own
        streams, its output behind its name unless not `prefix`."""
        channel = self.mux.start(self.targets.index(target), arguments or {})
        talk = Session(self.server.for_target(target), channel, hide, Output(target.name if prefix else None))
        talk.show_stderr()  # no conversation: the run's progress is the user's to see as it comes
        return talk

    def done(self, *exc) -> None:
        """No more runs: the server process ends once the running ones have. What it said of its own
        before its runs (which Python runs it, when it chose) is shown here, unless it failed: then its
        runs told it, as their own failure."""
        self.mux.done()
        said = self.mux.own_stderr
        if said and self.mux.code in (None, 0) and not (exc and exc[0] is not None):
            Output(self.server.name if len(self.targets) > 1 else None).write(2, said, final=True)


class Multiplexed:
    """The laptop's half of forking.py: the one channel of a host's server process, and a
    channel-like view of each run started on it, for a Session to read and write as if it were its own."""

    def __init__(self, channel) -> None:
        self.channel = channel
        self.runs: dict[int, VirtualChannel] = {}
        self._lock = threading.Lock()
        self._ended: int | None = None  # the process's exit status, once it has ended
        self._stderr = bytearray()  # the server process's own: a failure before any run, told to each
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        threading.Thread(target=self._demultiplex, daemon=True).start()

    def start(self, target: int, arguments: dict) -> VirtualChannel:
        """A new run of target number `target`'s task; a process that has ended ends it at once."""
        with self._lock:
            number = len(self.runs)
            run = self.runs[number] = VirtualChannel(self, number)
            ended = self._ended
        if ended is not None:
            run.end(ended or -1, bytes(self._stderr))
        else:
            self.send(f"{number} s {target} {json.dumps(arguments, separators=(',', ':'))}")
        return run

    def done(self) -> None:
        try:
            with self._lock:
                self.channel.shutdown_write()
        except Exception:
            pass  # the channel is gone: nothing to tell

    def send(self, line: str) -> None:
        try:
            with self._lock:
                self.channel.sendall((line + "\n").encode())
        except Exception:
            pass  # the channel is gone: nothing to tell

    def _read_stderr(self) -> None:
        while chunk := self.channel.recv_stderr(65536):
            self._stderr += chunk

    def _demultiplex(self) -> None:
        code = -1
        try:
            pending = b""
            while chunk := self.channel.recv(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._deliver(line)
            self._stderr_reader.join()
            code = self.channel.recv_exit_status()
        finally:
            with self._lock:
                self._ended = code
                runs = list(self.runs.values())
            for run in runs:  # those that never ended on their own end with the process
                run.end(code or -1, bytes(self._stderr))

    @property
    def code(self) -> int | None:
        return self._ended

    @property
    def own_stderr(self) -> bytes:
        return bytes(self._stderr)

    def _deliver(self, line: bytes) -> None:
        """One tagged line to its run; anything else (a line the server printed before forking)
        is the server process's own output, told with its failure."""
        number, kind, payload = (line.decode("ascii", "replace").split(" ", 2) + ["", ""])[:3]
        run = self.runs.get(int(number)) if number.isdigit() else None
        try:
            if run is not None and kind == "x":
                run.end(int(payload))
                return
            if run is not None and kind in ("o", "e"):
                (run.stdout if kind == "o" else run.stderr).put(bytes.fromhex(payload))
                return
        except ValueError:
            pass
        self._stderr += line + b"\n"


class Stream:
    """One stream of a VirtualChannel, read as a socket is: its chunks, then b"" for good once it ended."""

    def __init__(self) -> None:
        self._chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._ended = False

    def put(self, chunk: bytes) -> None:
        if chunk:  # an empty chunk would read as the end
            self._chunks.put(chunk)

    def end(self) -> None:
        self._chunks.put(b"")

    def get(self) -> bytes:
        if self._ended:
            return b""
        chunk = self._chunks.get()
        self._ended = not chunk
        return chunk


class VirtualChannel:
    """One run's streams within a Multiplexed channel, with the paramiko Channel calls Session makes."""

    def __init__(self, mux: Multiplexed, number: int) -> None:
        self.mux = mux
        self.number = number
        self.stdout = Stream()
        self.stderr = Stream()
        self.closed = False
        self._code = -1
        self._ended = threading.Event()
        self._end_lock = threading.Lock()

    def recv(self, size: int) -> bytes:
        return self.stdout.get()

    def recv_stderr(self, size: int) -> bytes:
        return self.stderr.get()

    def sendall(self, data: bytes) -> None:
        self.mux.send(f"{self.number} d {data.hex()}")

    def shutdown_write(self) -> None:
        self.mux.send(f"{self.number} c")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.shutdown_write()

    def recv_exit_status(self) -> int:
        self._ended.wait()
        return self._code

    def end(self, code: int, stderr: bytes = b"") -> None:
        """The target's process ended (told once by the server, or again when the channel ends)."""
        with self._end_lock:
            if self._ended.is_set():
                return
            self._code = code
            self.stderr.put(stderr)
            self.stdout.end()
            self.stderr.end()
            self._ended.set()


class Output:
    """Where a server command's output goes: straight through, or, for one of several targets run at
    once, line by line behind the target's name, so the lines of parallel runs stay whole."""

    _lock = threading.Lock()

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix.encode() + b" | " if prefix else b""
        self._partial = {1: b"", 2: b""}

    def write(self, fd: int, data: bytes, final: bool = False) -> None:
        """`data` from the server's stdout (1) or stderr (2); `final`: the stream has ended."""
        if self.prefix:
            text = self._partial[fd] + data
            if final:
                complete, self._partial[fd] = text, b""
            else:
                complete, _, self._partial[fd] = text.rpartition(b"\n")
            data = b"".join(self.prefix + line + b"\n" for line in complete.splitlines())
        if data:
            stream = sys.stdout if fd == 1 else sys.stderr
            with self._lock:
                stream.flush()  # what this process printed comes first: these bytes go beneath its text layer
                stream.buffer.write(data)
                stream.flush()


def command_line(
    argv: list[str],
    app_dir: str,
    pythons: str | tuple[str, ...],
    env: dict[str, str],
    where: str = "the server",
    environment: str = "ENV",
) -> str:
    """The one place the remote shell command line is built, every word quoted, from argument lists:
    `python ARGV` in `app_dir`, after checking both exist (no round trip of their own). A check that
    fails says so as the server's tasks do, in one `error:` line on stderr. Of several interpreters,
    the first that exists runs, and says which on stderr.

    `; exit $?` keeps the shell from exec'ing the command, so a killed process is reported as 128+N:
    paramiko drops SSH's own exit-signal message."""
    pythons = (pythons,) if isinstance(pythons, str) else pythons
    assignments = " ".join(f"{name}={quote(value)}" for name, value in env.items())
    no_app_dir = f"error: app_dir {app_dir} does not exist on {where}"
    no_python = f"error: no Python at {' or '.join(pythons)} on {where}: set environments.{environment}.python"
    chosen = "printf '%s\\n' \"python: $deploy_python\" >&2; " if len(pythons) > 1 else ""
    return (
        f"cd {quote(app_dir)} 2>/dev/null || {{ {_say(no_app_dir)}; exit 1; }}; "
        f"for deploy_python in {' '.join(map(quote, pythons))} ''; do test -x \"$deploy_python\" && break; done; "
        f'test -n "$deploy_python" || {{ {_say(no_python)}; exit 1; }}; {chosen}'
        f'{assignments} "$deploy_python" {shlex.join(argv)}; exit $?'
    )


def _say(line: str) -> str:
    """Shell words printing `line` on stderr, as it is (`echo` would read backslashes in some shells)."""
    return f"printf '%s\\n' {quote(line)} >&2"


def own_error(stderr: str) -> str | None:
    """The last line of stderr, when it is the server's own one-line reason: a task's `error: ...`,
    the command line's checks' too, or plain `alembic`'s `FAILED: ...`."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if lines and lines[-1].startswith(("error: ", "FAILED: ")):
        return lines[-1].split(": ", 1)[1]
    return None


def server_error(stderr: str, server: Server | None = None) -> str | None:
    """Why the server's command failed, in one line: a suite too old for the conversation, or the
    server's own reason (own_error)."""
    if server is not None and (unknown := UNKNOWN_SWITCH.search(stderr) or NO_ENTRY.search(stderr)):
        lacks = unknown[1] if unknown.re is UNKNOWN_SWITCH else SERVER_ENTRY
        return f"{server.name}: the server's suite is older than yours (no {lacks}): deploy it first"
    said = own_error(stderr)
    if said is not None and server is not None:
        return f"{server.name}: {said}"
    return said


def how_it_ended(exited: int) -> str:
    """What an exit status says: SSH reports none (-1) for a killed process or a lost connection,
    a shell reports 128+N for one killed by signal N."""
    if exited < 0:
        return "ended without an exit status (killed by a signal, or the connection was lost)"
    if 128 < exited < 128 + signal.NSIG:
        number = exited - 128
        return f"was killed by signal {number} ({signal.strsignal(number) or 'unknown'}; exit status {exited})"
    return f"failed with exit status {exited} and no message"
