"""The guard switches, declared once, as data: each one's task option (`invoke db.*` and `fab ENV db.*`
alike, deploy.options), the flag the laptop forwards to the server, and the Guards setting it turns on
(commands.Guards) are all made from GUARDS. A new guard switch is one more Switch here, and the guard
that reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Switch:
    """An option that turns one guard off for one run: off unless given."""

    name: str  # the keyword argument and the Guards attribute; its flag is --name-with-dashes
    help: str
    commands: tuple[str, ...]  # the db.* commands it applies to, by task name
    fab_help: str | None = None  # fab's help, where it says otherwise (fab always targets a server)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


GUARDS: tuple[Switch, ...] = (
    Switch(
        "no_backup",
        "outside development, skip the backup taken before the change (said loudly)",
        ("upgrade", "downgrade", "restore"),
    ),
    Switch(
        "ignore_transactions",
        "go on although other transactions have been open a while (they may block us)",
        ("upgrade", "downgrade"),
    ),
    Switch(
        "allow_risky",
        "outside development, apply although the lint finds unreviewed risky operations",
        ("upgrade",),
        fab_help="apply although the lint finds unreviewed risky operations",
    ),
)


def names() -> frozenset[str]:
    return frozenset(switch.name for switch in GUARDS)


def of(command: str) -> tuple[Switch, ...]:
    """The guard switches `command` (a db.* task's name) takes."""
    return tuple(switch for switch in GUARDS if command in switch.commands)


def forwarded(command: str, chosen: Mapping[str, bool]) -> list[str]:
    """This run's guard switches as the server's `db.COMMAND` takes them: the flags of those turned on."""
    return [switch.flag for switch in of(command) if chosen.get(switch.name)]


def guard_help(command: str, fab: bool = False) -> dict[str, str]:
    """The help of `command`'s guard switches, by keyword."""
    return {switch.name: (switch.fab_help if fab and switch.fab_help else switch.help) for switch in of(command)}
