"""`fab ENV db.*`: the laptop's half. It checks, asks and confirms here; the server's checkout
does the work with its own `invoke db.*`, so both paths share one implementation."""

from __future__ import annotations

import io
import logging
import os
import shlex
import signal
from collections.abc import Mapping
from pathlib import Path
from shlex import quote

from fabric import Config, Connection, Task, task
from invoke import Collection, Exit

from . import alembic_ops, credentials, safety
from .errors import DEBUG, DeployError, debugging, one_line_errors
from .local_tasks import GUARD_HELP
from .safety.cancel import ControlChannel, forwarding_interrupts
from .status import Status

# The Config key an environment task sets for the tasks after it on the same command line.
SELECTED = "deploy_environment"
# Seconds to connect and to get the server's SSH banner, unless Fabric's timeouts.connect says otherwise.
CONNECT_TIMEOUT = 10


class Server:
    """The selected environment's server: an SSH connection and its checkout's `invoke db.*`."""

    def __init__(self, c):
        environments = c.config.get("environments") or {}
        name = c.config.get(SELECTED)
        if not name:
            # Only fabric.yaml's environments have a task; `-f` files override their values.
            names = ", ".join(c.config.db.environment_tasks) or "none declared in fabric.yaml"
            raise DeployError(
                f"no environment selected: put one before the task, e.g. `fab prod db.upgrade` (environments: {names})"
            )
        env = environments.get(name)
        if not isinstance(env, Mapping):
            raise DeployError(f"environments.{name} in fabric.yaml is not a mapping of host, app_dir, ...")
        for key in ("host", "app_dir"):
            if not env.get(key):
                raise DeployError(f"environments.{name}.{key} is not set in fabric.yaml")
        self.name = name
        self.app_dir = env["app_dir"]
        self.python = env.get("python") or f"{self.app_dir.rstrip('/')}/.venv/bin/python"
        self.settings = env.get("settings") or "production"
        # Keys and ssh_config come from Fabric's own configuration. `fab` reads ssh_config before it
        # merges fabric.yaml and -f files, so an ssh_config_path set there needs this second read.
        if c.config.get("ssh_config_path"):
            c.config.load_ssh_config()
        self.timeout = timeout = c.config.timeouts.connect or CONNECT_TIMEOUT
        try:
            self.connection = Connection(env["host"], config=c.config, connect_timeout=timeout)
        except ValueError as exc:
            raise DeployError(f"environments.{name}.host is not a host string (user@host:port): {exc}") from None
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
        if self.run(["test", "-d", self.app_dir]).failed:
            raise DeployError(f"app_dir {self.app_dir} does not exist on {self.where}")
        if self.run(["test", "-x", self.python]).failed:
            raise DeployError(f"no Python at {self.python} on {self.where}: set environments.{self.name}.python")
        return self

    def __exit__(self, *exc) -> None:
        self.connection.close()

    def verify_host_keys(self) -> None:
        """Only a known host gets the password: Fabric itself accepts any host key."""
        import paramiko

        client = self.connection.client
        client.load_system_host_keys()
        # ssh_config's UserKnownHostsFile, as OpenSSH would read it.
        for path in self.connection.ssh_config.get("userknownhostsfile", "").split():
            if os.path.exists(os.path.expanduser(path)):
                client.load_host_keys(os.path.expanduser(path))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())

    def run(self, argv: list[str], stdin="", hide: bool = True, cwd: str | None = None, env=None):
        # An in-memory stdin (text, or a ControlChannel) and no pty: a pty would echo the password,
        # and the local terminal is never forwarded, so nothing typed here reaches the server by accident.
        line = command_line(argv, cwd, env)
        stream = io.StringIO(stdin) if isinstance(stdin, str) else stdin
        return self.connection.run(line, in_stream=stream, echo_stdin=False, pty=False, warn=True, hide=hide)

    def invoke(self, task_args: list[str], stdin="", hide: bool = False):
        """`invoke db.*` in the server's checkout, with this environment's settings; a failure
        ends here, in one line (the server's own, or what is known of how its command ended)."""
        environment = {
            "FLASK_CONFIG": self.settings,
            # The server's hints name the command typed here (`fab prod db.status`).
            "INVOKE_DB_CALLER": f"fab {self.name}",
            **({DEBUG: "1"} if debugging() else {}),
        }
        result = self.run([self.python, "-m", "invoke", *task_args], stdin, hide, self.app_dir, environment)
        if not result.failed:
            return result
        said = server_error(result.stderr)
        if said is None:
            raise DeployError(f"{self.name}: the server's command {how_it_ended(result.exited)}{self.status_hint}")
        if hide:
            raise DeployError(f"{self.name}: {said}")
        raise Exit(code=result.exited)  # the server's `error:` line is on stderr already

    @property
    def status_hint(self) -> str:
        return f": run `fab {self.name} db.status` to see where the database is"

    def status(self, target: str = "head", downgrade: bool = False) -> Status:
        """The server's `db.status --json`: read with the application's user, no password."""
        result = self.invoke(
            ["db.status", "--json", f"--to={target}", *(["--downgrade"] if downgrade else [])], hide=True
        )
        lines = result.stdout.strip().splitlines()
        return Status.from_json(lines[-1] if lines else "", self.name)

    def privileged(self, task_args: list[str], state: Status, controlled: bool = False) -> None:
        """Run a task that writes, its migration password on the SSH channel's stdin. `controlled`
        (migrations): stdin stays open, so Ctrl-C here stops the server between revisions."""
        password = ""
        if state.needs_password:
            password = credentials.read_password(f"Password for {state.migration_user} ({self.name}): ")
        first_line = password + "\n" if password else ""
        if not controlled:
            self.invoke(task_args, stdin=first_line)
            return
        with forwarding_interrupts(ControlChannel(first_line)) as channel:
            self.invoke([*task_args, "--controlled"], stdin=channel)


def command_line(argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None) -> str:
    """The one place remote shell command lines are built, every word quoted, from argument lists.

    `; exit $?` keeps the shell from exec'ing the command, so a killed process is reported as 128+N:
    paramiko drops SSH's own exit-signal message."""
    line = " ".join([*(f"{name}={quote(value)}" for name, value in (env or {}).items()), shlex.join(argv)])
    return f"{'cd ' + quote(cwd) + ' && ' if cwd else ''}{line}; exit $?"


def server_error(stderr: str) -> str | None:
    """The server's own one-line reason (`error: ...` or plain `alembic`'s `FAILED: ...`), if it gave one."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if lines and lines[-1].startswith(("error: ", "FAILED: ")):
        return lines[-1].split(": ", 1)[1]
    return None


def how_it_ended(exited: int) -> str:
    """What an exit status says: SSH reports none (-1) for a killed process or a lost connection,
    a shell reports 128+N for one killed by signal N."""
    if exited < 0:
        return "ended without an exit status (killed by a signal, or the connection was lost)"
    if 128 < exited < 128 + signal.NSIG:
        number = exited - 128
        return f"was killed by signal {number} ({signal.strsignal(number) or 'unknown'}; exit status {exited})"
    return f"failed with exit status {exited} and no message"


def refuse_unsafe(server: Server, state: Status, expected_head: str | None = None) -> None:
    where = f"{server.name}'s database {state.database}"
    stamped = bool(state.current)
    safety.check_stamped(where, state.unstamped_tables, stamped, state.base, f"fab {server.name} db.stamp")
    safety.check_single_head(tuple(state.heads))
    if expected_head:
        safety.check_expected_head(tuple(state.heads), expected_head)


def local_config(c):
    """The alembic.ini of the checkout `fab` runs in."""
    return alembic_ops.load_config(Path(c.config.db.alembic_ini))


def print_revisions(revisions: list[list[str]]) -> None:
    for revision, message in revisions:
        print(f"  {revision}  {message}")


@task
@one_line_errors
def status(c):
    """Show the server's head, the database's revision and the pending revisions."""
    with Server(c) as server:
        print(f"{server.name}: {server.where}")
        server.invoke(["db.status"])


@task(
    help={
        "to": "an explicit target revision; without it the server's head must equal yours",
        "sql": "print the SQL the upgrade would run on the server's database; change nothing, ask nothing",
        "yes": "apply without asking [y/N] (needed without a terminal)",
        "allow_risky": "apply although the lint finds unreviewed risky operations",
        **GUARD_HELP,
    }
)
@one_line_errors
def upgrade(c, to=None, sql=False, yes=False, allow_risky=False, no_backup=False, ignore_transactions=False):
    """Upgrade the environment's database to head, after checks, a [y/N] and a password prompt."""
    # Only an explicit revision skips the same-head check: `--to=head` is the default spelled out.
    explicit = to not in (None, "", "head")
    expected = None if explicit else alembic_ops.single_head(local_config(c))
    target = to if explicit else "head"
    with Server(c) as server:
        state = server.status(target)
        refuse_unsafe(server, state, expected)
        current = ", ".join(state.current) or "base"
        if state.target_behind:
            raise DeployError(f"{to} is behind {current}: to go back, run `fab {server.name} db.downgrade --to={to}`")
        if not state.pending:
            print(f"{server.name}: {state.database} is already at {current}: nothing to do")
            return
        if sql:
            server.invoke(["db.upgrade", "--sql", f"--to={target}"])
            return
        print(f"{server.name}: {server.where}, database {state.migration_user}")
        print(f"{current} -> {to if explicit else expected}, {len(state.pending)} pending:")
        print_revisions(state.pending)
        for risk in state.risks:
            print(f"risk: {risk}")
        if state.risks and not allow_risky:
            raise DeployError(
                f"{len(state.risks)} risky operation{'s' * (len(state.risks) > 1)} pending: mark each reviewed "
                "in its script (reviewed_risks) or pass --allow-risky"
            )
        safety.confirm("Apply?", yes)
        expect = [f"--expect-head={expected}"] if expected else []
        switches = guard_switches(no_backup, ignore_transactions, allow_risky)
        # Confirmed here, so the server does not ask again (its stdin carries the password).
        server.privileged(["db.upgrade", f"--to={target}", *expect, "--yes", *switches], state, controlled=True)


@task(help={"revision": "the revision the database's schema already matches"})
@one_line_errors
def stamp(c, revision):
    """Record REVISION as the environment database's revision, running no migration."""
    # A typo fails here, before any question; the server checks again against its own scripts.
    alembic_ops.resolve(local_config(c), revision)
    with Server(c) as server:
        state = server.status()
        print(f"{server.name}: stamping {state.migration_user} at {revision}")
        if state.current:
            # Restamping skips or repeats migrations: make sure it is meant.
            print(f"it is stamped at {', '.join(state.current)} already")
            safety.confirm_database(state.database_name)
        server.privileged(["db.stamp", revision], state)


@task(help={"yes": "stamp the match without asking [y/N] (needed without a terminal)"})
@one_line_errors
def detect(c, yes=False):
    """Find the revision an unstamped environment database's schema matches; stamp it after a [y/N]."""
    from . import workflow

    with Server(c) as server:
        state = server.status()
        # Read-only on the server, with the application's user: no password yet.
        report, match = workflow.read_report(server.invoke(["db.detect", "--report"], hide=True).stdout)
        print(f"{server.name}: {server.where}")
        print(report)
        if match is None:
            raise DeployError("no single revision matches: nothing stamped")
        # The server's revision must be one this checkout has: the code reviewed is the code deployed.
        alembic_ops.resolve(local_config(c), match)
        print(f"{server.name}: stamping {state.migration_user} at {match}")
        safety.confirm("Stamp it?", yes)
        server.privileged(["db.stamp", match], state)


@task(
    help={
        "to": "the revision to go back to (e.g. --to=-1 or a revision id)",
        "sql": "print the SQL the downgrade would run on the server's database; change nothing, ask nothing",
        **GUARD_HELP,
    }
)
@one_line_errors
def downgrade(c, to, sql=False, no_backup=False, ignore_transactions=False):
    """Downgrade the environment's database to --to REV, after typing its name to confirm."""
    with Server(c) as server:
        # The plan comes first: an unknown target fails before any question is asked.
        state = server.status(to, downgrade=True)
        refuse_unsafe(server, state)
        if not state.pending:
            print(f"{server.name}: {state.database} is already at {to}: nothing to do")
            return
        if sql:
            server.invoke(["db.downgrade", "--sql", f"--to={to}"])
            return
        print(f"{server.name}: downgrade {state.migration_user}, undoing {len(state.pending)}:")
        print_revisions(state.pending)
        safety.confirm_database(state.database_name)
        # Confirmed here, so the server does not ask again (its stdin carries the password).
        switches = guard_switches(no_backup, ignore_transactions)
        server.privileged(["db.downgrade", f"--to={to}", "--confirmed", *switches], state, controlled=True)


@task(help={"backup": "the backup's file name, as `fab ENV db.backups` lists it", "no_backup": GUARD_HELP["no_backup"]})
@one_line_errors
def restore(c, backup, no_backup=False):
    """Restore the environment's database from BACKUP (on the server), after typing its name."""
    with Server(c) as server:
        state = server.status()
        print(f"{server.name}: restore {state.migration_user} from {backup}, replacing all it holds now")
        safety.confirm_database(state.database_name)
        server.privileged(["db.restore", backup, "--confirmed", *guard_switches(no_backup)], state)


@task
@one_line_errors
def backups(c):
    """List the environment database's backups on the server: time, revision, size, file."""
    with Server(c) as server:
        server.invoke(["db.backups"])


@task
@one_line_errors
def lint(c):
    """Show the risky operations in the server's pending revisions."""
    with Server(c) as server:
        server.invoke(["db.lint"])


@task(help={"diff": "also show what autogenerate would change to bring the database to the models"})
@one_line_errors
def schema(c, diff=False):
    """Show the environment database's tables, columns, indexes and constraints (no password)."""
    with Server(c) as server:
        print(f"{server.name}: {server.where}")
        server.invoke(["db.schema", *(["--diff"] if diff else [])])


def guard_switches(no_backup: bool = False, ignore_transactions: bool = False, allow_risky: bool = False) -> list[str]:
    """This run's guard switches, as the server's `invoke db.*` takes them."""
    chosen = {"--no-backup": no_backup, "--ignore-transactions": ignore_transactions, "--allow-risky": allow_risky}
    return [switch for switch, on in chosen.items() if on]


def environment_task(name: str) -> Task:
    def select(c):
        setattr(c.config, SELECTED, name)

    select.__doc__ = f"Select the {name} environment (fabric.yaml) for the tasks that follow."
    return Task(select, name=name)


def fab_tasks(fabfile: str) -> Collection:
    """The fabfile's namespace: `db.*` plus one task per environment in fabric.yaml, for the project
    whose fabfile.py is `fabfile` (it passes `__file__`)."""
    project_dir = Path(fabfile).resolve().parent
    config = Config(project_location=str(project_dir))
    config.load_project()
    environments = config.get("environments") or {}
    db = Collection("db", status, upgrade, stamp, detect, downgrade, restore, backups, lint, schema)
    db.configure({"db": {"alembic_ini": str(project_dir / "alembic.ini"), "environment_tasks": sorted(environments)}})
    return Collection(db, *(environment_task(name) for name in environments))
