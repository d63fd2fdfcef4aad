"""The console: the questions before a production change, and honest cancellation.

Confirmations: a [y/N] question (--yes answers it for pipelines), or the database's name typed out
before an irreversible change.

Honest cancellation: a migration stops between revisions, never inside one by our doing.
Ctrl-C (SIGINT), SIGTERM and SIGHUP ask to stop after the revision in progress; a second Ctrl-C
within a few seconds aborts it hard. Under fab, the server's standard input stays open after the
laptop's go and the password as a control channel: a `stop` or `abort` line from the laptop, and its end (the SSH
connection lost) asks to stop too."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from .credentials import ask
from .errors import DeployError


def confirm_database(name: str) -> None:
    """Typing the database's name is the last step before an irreversible change.

    At a terminal it is asked for; otherwise it is the first line of standard input. Only the exact
    name confirms: a stray space or another case is a different name (MariaDB's names are case-sensitive
    on Linux), and a prompt that forgives typos stops being a check."""
    if ask(f"Type the database name ({name}) to confirm: ") != name:
        raise DeployError("not confirmed: nothing changed")


def confirm_restore_from(name: str, source: str) -> None:
    """Replacing database `name` with a backup of another database, `source`: the question names
    both, and only the exact name of the database replaced confirms."""
    if ask(f"Replace {name} with the backup of {source}? Type the database name ({name}) to confirm: ") != name:
        raise DeployError("not confirmed: nothing changed")


def agrees(question: str) -> bool:
    """A [y/N] question at a terminal that changes nothing itself: yes only for y or yes."""
    return ask(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def confirm(question: str, yes: bool) -> None:
    """[y/N] before a production change; `yes` (--yes) answers for pipelines. Without a terminal
    and without --yes the answer is no: a piped first line is the password, never an answer."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise DeployError("not confirmed: without a terminal, pass --yes to apply it; nothing changed")
    if ask(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise DeployError("not confirmed: nothing changed")


# A second Ctrl-C within this many seconds aborts the revision in progress.
ABORT_WINDOW = 3.0
STOP, ABORT = "stop", "abort"
# The cancellation of the migration running in this process (see active_cancellation).
_active: Cancellation | None = None


def active_cancellation() -> Cancellation | None:
    """The run's cancellation while a migration runs (inside Cancellation.active), else None: long work
    inside a revision (deploy.backfill) asks it whether to stop early."""
    return _active


def say(line: str) -> None:
    """A line on stderr from a signal handler or the control thread. Not print(): the handler runs between
    two bytecodes of whatever the main thread does, which may be a write to sys.stderr itself (relaying
    the server's lines), and a buffered stream entered twice raises "reentrant call"."""
    data = (line + "\n").encode()
    try:
        while data:
            data = data[os.write(2, data) :]
    except OSError:
        pass  # stderr is gone (a closed channel): the line has no reader


class Cancellation:
    """Whether, and why, the run was asked to stop; checked between revisions."""

    def __init__(self, control: int | None = None) -> None:
        """`control`: the file descriptor fab keeps open after the password (the server's stdin)."""
        self.reason: str | None = None
        self._asked_at = 0.0
        self._control = control

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._asked_at = time.monotonic()
            say(f"stopping after the revision in progress ({reason}); Ctrl-C again to abort it")

    def interrupted(self, signum, frame) -> None:
        """The signal handler: stop between revisions; a second Ctrl-C soon after aborts."""
        if self.requested and signum == signal.SIGINT and time.monotonic() - self._asked_at < ABORT_WINDOW:
            raise KeyboardInterrupt
        self.request(f"{signal.Signals(signum).name} received")

    @contextmanager
    def active(self):
        """While a migration runs: signals and the control channel ask to stop between revisions."""
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {signum: signal.signal(signum, self.interrupted) for signum in signals}
        if self._control is not None:
            threading.Thread(target=self._read_controls, args=(self._control,), daemon=True).start()
        global _active
        outer, _active = _active, self
        try:
            yield self
        finally:
            _active = outer
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _read_controls(self, fd: int) -> None:
        # os.read, not the buffered sys.stdin: a thread blocked inside a BufferedReader's lock makes
        # interpreter shutdown fatal, and the password line before these was read already.
        pending = b""
        while chunk := os.read(fd, 1024):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._control_command(line.decode("utf-8", "replace").strip())
        self.request("the SSH connection was lost")
        # Nobody reads our output any more: writes to a closed channel must not end the run.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd_out in (1, 2):
            os.dup2(devnull, fd_out)

    def _control_command(self, command: str) -> None:
        if command == ABORT:
            # The laptop's second Ctrl-C: the main thread gets a KeyboardInterrupt (see interrupted).
            self.request("stopped from the laptop")
            signal.raise_signal(signal.SIGINT)
        elif command == STOP:
            self.request("stopped from the laptop")


@contextmanager
def forwarding_interrupts(send: Callable[[str], None]):
    """While the server migrates: Ctrl-C here asks it to stop after the revision in progress; a
    second Ctrl-C within a few seconds asks it to abort that revision; one more stops waiting for a
    server that does not end (KeyboardInterrupt). `send` puts a line on the server's stdin
    (ssh.Session.send)."""
    asked = [0.0]
    aborted = [False]

    def interrupted(signum, frame):
        if aborted[0]:
            say("no longer waiting for the server, which was asked to abort: its db.status tells")
            raise KeyboardInterrupt
        if asked[0] and time.monotonic() - asked[0] < ABORT_WINDOW:
            send(ABORT)
            aborted[0] = True
            say("asking the server to abort the revision in progress; Ctrl-C again to stop waiting")
            return
        asked[0] = time.monotonic()
        send(STOP)
        say("asking the server to stop after the revision in progress; Ctrl-C again to abort it")

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- progress on a long wait --------------------------------------------------------------------------

PROGRESS_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


class Progress:
    """A long wait told on stderr (a backup, a restore, a backfill), so that no one stares at a silent
    terminal wondering whether to press Ctrl-C: at a terminal one line redrawn in place, else a line every
    PROGRESS_EVERY seconds, the first at once. `unit` is "rows", or "MB" for counts of bytes; `start`, what
    was done before this run (a resumed backfill's rows), which the rate leaves out."""

    def __init__(self, label: str, unit: str = "rows", start: int = 0) -> None:
        self.label, self.unit, self.start = label, unit, start
        self.terminal = sys.stderr.isatty()
        self.began = time.monotonic()
        self.shown: float | None = None
        self.drawn = False

    def update(self, done: int, fraction: float | None = None) -> None:
        """`done` so far and, when it is known, the fraction of the whole that is, for the time left."""
        now = time.monotonic()
        if not self.terminal and self.shown is not None and now - self.shown < PROGRESS_EVERY:
            return
        self.shown = now
        line = f"{self.label}: {self.told(done, fraction, now - self.began)}"
        if self.terminal:
            print(f"\r{line}\033[K", end="", file=sys.stderr, flush=True)
            self.drawn = True
        else:
            print(line, file=sys.stderr, flush=True)

    def end(self, line: str | None = None) -> None:
        """The wait is over: the line redrawn is kept, and `line` said after it."""
        if self.drawn:
            print(file=sys.stderr)
            self.drawn = False
        if line:
            print(f"{self.label}: {line}", file=sys.stderr, flush=True)

    def told(self, done: int, fraction: float | None, elapsed: float) -> str:
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        if self.unit == "MB":
            said = f"{done / 1e6:,.1f} MB, {rate / 1e6:,.1f} MB/s"
        else:
            said = f"{done} {self.unit}, {rate:,.0f} {self.unit}/s"
        if fraction is None:
            return said
        if 0 < fraction <= 1 and elapsed > 0:
            return f"{said}, about {duration(elapsed * (1 - fraction) / fraction)} left"
        return f"{said}, time left unknown"


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
