"""The server's half of a fleet on one host: one process imports the suite and the app once, then
forks a child per run the laptop starts, each the very task it would run alone, with its target's
settings.

A process costs its imports (most of a run's CPU), so sixteen tenants on one host cost about one
process, not sixteen. Children start only when the laptop says so, so the laptop bounds how many
live at once (their memory and pipes grow with the fleet's concurrency, not with its size). Their
stdin, stdout and stderr travel on the one SSH channel, one line per chunk, tagged with the run's
number (the laptop's half is ssh.Multiplexed):
    laptop -> server   `R s T JSON` (start run R: target T's task, with JSON's keyword arguments)
                       `R d HEX` (data for run R's stdin)    `R c` (close its stdin)
    server -> laptop   `R o HEX` / `R e HEX` (its stdout / stderr)    `R x CODE` (its exit status)
The process ends when its stdin has ended and no run is left. The end of stdin (the laptop is done,
or the connection lost) also closes every run's stdin: each stops between revisions."""

from __future__ import annotations

import json
import os
import selectors
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from invoke import Exit

from .errors import DeployError


@dataclass
class Child:
    pid: int
    stdin: int | None
    open_outputs: int = 2


def targets(fleet: str) -> list[tuple[str, str]]:
    """`--targets`'s value: a JSON list of [settings name, caller] pairs, one per target."""
    try:
        pairs = json.loads(fleet)
        return [(str(settings), str(caller)) for settings, caller in pairs]
    except (ValueError, TypeError):
        raise DeployError("--targets takes a JSON list of [settings, caller] pairs (fab passes it)") from None


class Runs:
    """The forked children of one server process, by run number, and the selector over their streams."""

    def __init__(self, c, pairs: list[tuple[str, str]], task: Callable[..., None]) -> None:
        self.c, self.pairs, self.task = c, pairs, task
        self.children: dict[int, Child] = {}
        self.selector = selectors.DefaultSelector()
        self.stdin_open = True

    def start(self, number: int, target: int, arguments: dict) -> None:
        settings, caller = self.pairs[target]
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        inherited = self._pipes()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            for fd, into in ((stdin_r, 0), (stdout_w, 1), (stderr_w, 2)):
                os.dup2(fd, into)
            for fd in (stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w, *inherited):
                os.close(fd)
            self.selector.close()
            os.environ["FLASK_CONFIG"] = settings
            self.c.config.db.caller = caller
            os._exit(_as_child(lambda: self.task(**arguments)))
        for fd in (stdin_r, stdout_w, stderr_w):
            os.close(fd)
        self.children[number] = Child(pid, stdin_w)
        self.selector.register(stdout_r, selectors.EVENT_READ, (number, "o"))
        self.selector.register(stderr_r, selectors.EVENT_READ, (number, "e"))
        if not self.stdin_open:
            _close_stdin(self.children[number])

    def _pipes(self) -> list[int]:
        """What a new child must not hold open: the other children's pipes."""
        outputs = [key.fd for key in self.selector.get_map().values() if key.data is not None]
        return outputs + [child.stdin for child in self.children.values() if child.stdin is not None]

    def relay(self) -> None:
        """Until stdin has ended and every run with it: the laptop's lines in, the children's out."""
        pending = b""
        self.selector.register(0, selectors.EVENT_READ, None)
        while self.stdin_open or self.children:
            for key, _ in self.selector.select():
                if key.data is None:
                    chunk = os.read(0, 65536)
                    if not chunk:
                        self.selector.unregister(0)
                        self.stdin_open = False
                        for child in self.children.values():
                            _close_stdin(child)
                        continue
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        self._from_laptop(line.decode("ascii", "replace").split(" ", 3))
                    continue
                self._from_child(key)

    def _from_laptop(self, words: list[str]) -> None:
        if not words[0].isdigit() or len(words) < 2:
            return  # noise: nothing to deliver
        number = int(words[0])
        if words[1] == "s" and len(words) == 4 and number not in self.children:
            try:
                target, arguments = int(words[2]), json.loads(words[3])
                self.pairs[target]
            except (ValueError, IndexError):
                return
            self.start(number, target, arguments)
            return
        child = self.children.get(number)
        if child is None or child.stdin is None:
            return  # a run that has ended: nothing to deliver
        if words[1] == "c":
            _close_stdin(child)
        elif words[1] == "d" and len(words) == 3:
            try:
                os.write(child.stdin, bytes.fromhex(words[2]))
            except (BrokenPipeError, ValueError):
                _close_stdin(child)

    def _from_child(self, key) -> None:
        number, stream = key.data
        chunk = os.read(key.fd, 65536)
        if chunk:
            _say(f"{number} {stream} {chunk.hex()}")
            return
        self.selector.unregister(key.fd)
        os.close(key.fd)
        child = self.children[number]
        child.open_outputs -= 1
        if not child.open_outputs:
            _, status = os.waitpid(child.pid, 0)
            _close_stdin(child)
            del self.children[number]
            code = os.waitstatus_to_exitcode(status)
            # As the shell reports a command killed by signal N when it runs alone: 128+N.
            _say(f"{number} x {128 - code if code < 0 else code}")


def run_each(c, fleet: str, task: Callable[..., None], warm_up: Callable[[str], None] | None = None) -> None:
    """Serve the laptop's runs of `task` for the targets of `fleet` (`task(**arguments)` in a forked
    child each), relaying their streams; returns (by Exit 0) when the laptop is done and every run has
    ended. `warm_up(settings)`, run here first, imports what every child would otherwise import for
    itself (the app's settings, the database driver)."""
    pairs = targets(fleet)
    if warm_up is not None and pairs:
        try:
            warm_up(pairs[0][0])
        except DeployError:
            pass  # the children say what is wrong, each for its own target
    Runs(c, pairs, task).relay()
    raise Exit(code=0)


def _as_child(task: Callable[[], None]) -> int:
    """The task's exit status, its one-line error printed as the task alone would print it."""
    try:
        task()
        code = 0
    except Exit as exc:
        if exc.message:
            print(exc.message, file=sys.stderr)
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _close_stdin(child: Child) -> None:
    if child.stdin is not None:
        os.close(child.stdin)
        child.stdin = None


def _say(line: str) -> None:
    data = memoryview((line + "\n").encode())
    try:
        while data:
            data = data[os.write(1, data) :]
    except BrokenPipeError:
        pass  # the laptop is gone: the children stop on their own (their stdin has ended)
