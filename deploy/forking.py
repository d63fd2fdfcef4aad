"""The server's half of a fleet on one host: one process imports the suite and the app once, then
forks a child per target, each the very task it would run alone, with its own settings.

A process costs its imports (most of a run's CPU), so sixteen tenants on one host cost about one
process, not sixteen. The children's stdin, stdout and stderr travel on the one SSH channel, one
line per chunk, tagged with the child's number (the laptop's half is ssh.Multiplexed):
    laptop -> server   `N d HEX` (data for child N's stdin)    `N c` (close its stdin)
    server -> laptop   `N o HEX` / `N e HEX` (its stdout / stderr)    `N x CODE` (its exit status)
The end of our stdin (the connection lost) closes every child's: each stops between revisions."""

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
    """`--fleet`'s value: a JSON list of [settings name, caller] pairs, one per target."""
    try:
        pairs = json.loads(fleet)
        return [(str(settings), str(caller)) for settings, caller in pairs]
    except (ValueError, TypeError):
        raise DeployError("--fleet takes a JSON list of [settings, caller] pairs (fab passes it)") from None


def run_each(c, fleet: str, task: Callable[[], None], warm_up: Callable[[str], None] | None = None) -> None:
    """Run `task` once per target of `fleet`, in forked children, relaying their streams; returns
    (by Exit 0) when every child has ended. `warm_up(settings)`, run here first, imports what every
    child would otherwise import for itself (the app's settings, the database driver)."""
    children: dict[int, Child] = {}
    pairs = targets(fleet)
    if warm_up is not None and pairs:
        try:
            warm_up(pairs[0][0])
        except DeployError:
            pass  # the children say what is wrong, each for its own target
    selector = selectors.DefaultSelector()
    sys.stdout.flush()
    sys.stderr.flush()
    for number, (settings, caller) in enumerate(pairs):
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            for fd, target in ((stdin_r, 0), (stdout_w, 1), (stderr_w, 2)):
                os.dup2(fd, target)
            for fd in (stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w, *_inherited(children)):
                os.close(fd)
            os.environ["FLASK_CONFIG"] = settings
            c.config.db.caller = caller
            os._exit(_as_child(task))
        for fd in (stdin_r, stdout_w, stderr_w):
            os.close(fd)
        children[number] = Child(pid, stdin_w)
        selector.register(stdout_r, selectors.EVENT_READ, (number, "o"))
        selector.register(stderr_r, selectors.EVENT_READ, (number, "e"))
    selector.register(0, selectors.EVENT_READ, None)
    _relay(selector, children)
    raise Exit(code=0)


def _inherited(children: dict[int, Child]) -> list[int]:
    """The earlier children's stdin pipes, which a later child must not hold open."""
    return [child.stdin for child in children.values() if child.stdin is not None]


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


def _relay(selector: selectors.BaseSelector, children: dict[int, Child]) -> None:
    pending = b""
    running = len(children)
    while running:
        for key, _ in selector.select():
            if key.data is None:  # our stdin: the laptop's lines
                chunk = os.read(0, 65536)
                if not chunk:
                    selector.unregister(0)
                    for child in children.values():
                        _close_stdin(child)
                    continue
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    _to_child(children, line.decode("ascii", "replace").split(" "))
                continue
            number, stream = key.data
            chunk = os.read(key.fd, 65536)
            if chunk:
                _say(f"{number} {stream} {chunk.hex()}")
                continue
            selector.unregister(key.fd)
            os.close(key.fd)
            child = children[number]
            child.open_outputs -= 1
            if not child.open_outputs:
                _, status = os.waitpid(child.pid, 0)
                _close_stdin(child)
                code = os.waitstatus_to_exitcode(status)
                # As the shell reports a command killed by signal N when it runs alone: 128+N.
                _say(f"{number} x {128 - code if code < 0 else code}")
                running -= 1


def _to_child(children: dict[int, Child], words: list[str]) -> None:
    child = children.get(int(words[0])) if words[0].isdigit() else None
    if child is None or child.stdin is None:
        return  # a child that has ended, or noise: nothing to deliver
    if words[1:2] == ["c"]:
        _close_stdin(child)
    elif words[1:2] == ["d"] and len(words) == 3:
        try:
            os.write(child.stdin, bytes.fromhex(words[2]))
        except (BrokenPipeError, ValueError):
            _close_stdin(child)


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
