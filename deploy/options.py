"""The db.* tasks' options, made when a collection is built: each task's own, its guard switches
(deploy.switches), and the options only fab's server command line passes (SERVER_ONLY), which the
server's entry point (deploy.server) takes and the user's `invoke` does not show."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import wraps

from invoke import Task

from .switches import guard_help, of

# How the laptop talks to the server's tasks: `python -m deploy.server` takes them, `invoke` does not.
SERVER_ONLY = ("conversation", "targets", "plan", "expect_from", "rehearsal")

# --running of db.upgrade and db.status, the same help under invoke and fab.
RUNNING = (
    "the release of the code serving now (a git ref), where it is not the one the last upgrade recorded: an app "
    "server not yet restarted"
)

# db.restore's --from-database, the same help under invoke and fab.
FROM_DATABASE = "the backup is of database NAME, not this one: replace this one with it all the same"


def with_guards(body: Callable, command: str) -> Callable:
    """`body` (whose `**guards` gathers the switches) with each of `command`'s guard switches as a
    keyword parameter of its own, off by default: Invoke reads a task's options from its signature."""
    signature = inspect.signature(body)
    parameters = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    if len(parameters) == len(signature.parameters):
        if of(command):
            raise TypeError(f"{body.__name__} takes no **guards for its guard switches")
        return body
    declared = [inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=False) for s in of(command)]

    @wraps(body)
    def run(*args, **kwargs):
        return body(*args, **kwargs)

    run.__signature__ = signature.replace(parameters=[*parameters, *declared])
    return run


def without(body: Callable, hidden: Mapping[str, object]) -> Callable:
    """`body` without the parameters named in `hidden` (an option and its value): those are passed as given."""
    signature = inspect.signature(body)

    @wraps(body)
    def run(*args, **kwargs):
        return body(*args, **kwargs, **hidden)

    run.__signature__ = signature.replace(parameters=[p for n, p in signature.parameters.items() if n not in hidden])
    return run


@dataclass(frozen=True)
class Command:
    """A db.* task's body and its options' help, made an Invoke task when a collection is built, from
    the declarations as they are then."""

    body: Callable
    help: Mapping[str, str] = field(default_factory=dict)
    task_class: type[Task] = Task
    fab: bool = False  # fab's task: the laptop's help where a switch's differs

    @property
    def name(self) -> str:
        return self.body.__name__

    def task(self, server: bool = False) -> Task:
        """The task the user types; `server`: the one fab starts on the server, with SERVER_ONLY's options."""
        body = with_guards(self.body, self.name)
        helps = {**self.help, **guard_help(self.name, self.fab)}
        if not server:
            parameters = inspect.signature(body).parameters
            hidden = {name: parameters[name].default for name in SERVER_ONLY if name in parameters}
            body = without(body, hidden)
            helps = {name: text for name, text in helps.items() if name not in hidden}
        return self.task_class(body, name=self.name, help=helps)


def command(help: Mapping[str, str] | None = None, **how) -> Callable[[Callable], Command]:
    """A decorator like Invoke's @task(help=...), for a db.* task's body: see Command."""
    return lambda body: Command(body, dict(help or {}), **how)
