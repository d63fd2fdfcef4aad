"""The guards' switches and settings, declared once, as data.

A switch's task option (`invoke db.*` and `fab ENV db.*` alike, deploy.options), the flag the laptop
forwards to the server, and the Guards attribute it turns on (commands.Guards) are all made from GUARDS.
A setting's key in Invoke's config (`db.safety.*`, INVOKE_DB_SAFETY_*), its check with the one line a bad
value gets (deploy.task_config), its default and the Guards attribute are all made from SETTINGS.
A new switch or setting is one more declaration here, and the guard that reads it."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Switch:
    """An option that turns one guard off (or, --rehearse, one on) for one run: off unless given."""

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
    Switch(
        "allow_drift",
        "apply although a pending operation changes what was changed outside the migrations (told as warnings)",
        ("upgrade",),
    ),
    Switch(
        "allow_copy",
        "where MariaDB can only copy a table to change it, copy it in place (writes to it wait for the copy) "
        "rather than online with pt-online-schema-change",
        ("upgrade", "downgrade"),
    ),
    Switch(
        "allow_rewrite",
        "where PostgreSQL must rewrite a table that holds rows (most column type changes), rewrite it, its reads "
        "and writes blocked throughout",
        ("upgrade",),
    ),
    Switch(
        "allow_incompatible",
        "outside development, apply although the release still running fails on the new schema (a planned "
        "maintenance window, with the app stopped)",
        ("upgrade",),
        fab_help="apply although the release still running fails on the new schema (a planned maintenance window, "
        "with the app stopped)",
    ),
    Switch(
        "rehearse",
        "first run the pending revisions on a copy of the database (from the backup, on its server, removed "
        "after), timed, and only then ask",
        ("upgrade",),
        fab_help="first run the pending revisions on a copy of the database (the first target's, for a fleet), "
        "timed, and only then ask",
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


@dataclass(frozen=True)
class Kind:
    """What a setting's value is: `parse` gives it from what Invoke's config holds, or None if it is
    not one; `expects` is what the one line about a bad value says."""

    parse: Callable[[Any], Any]
    expects: str


def _seconds(value: Any) -> float | None:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _count(value: Any) -> int | None:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return int(text) if text.isdigit() else None


def _path(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


SECONDS = Kind(_seconds, "expects a number of seconds, such as 10 or 2.5")
COUNT = Kind(_count, "expects a whole number, such as 5")
PATH = Kind(_path, "expects a directory's path")


@dataclass(frozen=True)
class Setting:
    """A number or path a guard reads, set in Invoke's config as `db.safety.NAME`."""

    name: str  # the key under db.safety and the Guards attribute
    kind: Kind
    default: Any  # None: the guard works it out (see help)
    help: str


# In the order the one line about an unknown key lists them.
SETTINGS: tuple[Setting, ...] = (
    Setting("lock_wait", SECONDS, 10.0, "seconds a second run waits for the migration lock"),
    Setting(
        "lock_wait_timeout",
        SECONDS,
        2.0,
        "seconds a statement waits for a table's lock, so the app never stalls longer",
    ),
    Setting(
        "retry_pause", SECONDS, 3.0, "seconds paused before a statement that waited too long for a lock is tried again"
    ),
    Setting(
        "open_transactions_after",
        SECONDS,
        10.0,
        "seconds another transaction may be open before upgrade and downgrade stop for it",
    ),
    Setting(
        "precheck_timeout",
        SECONDS,
        5.0,
        "seconds each data precheck before an upgrade may run before it is stopped as too slow; 0: no limit",
    ),
    Setting("retries", COUNT, 5, "times a statement that waited too long for a lock is tried again"),
    Setting(
        "copy_in_place_rows",
        COUNT,
        10_000,
        "rows up to which a table MariaDB can only copy is copied in place (writes wait for the copy), and one "
        "PostgreSQL must rewrite is rewritten; a bigger one is copied online (pt-online-schema-change), or its "
        "rewrite refused without --allow-rewrite",
    ),
    Setting(
        "online_copy_max_running",
        COUNT,
        25,
        "statements running on the server (Threads_running) above which an online copy pauses",
    ),
    Setting("backups_kept", COUNT, 10, "backups kept in the backup directory, the oldest removed first"),
    Setting("backup_dir", PATH, None, "where backups go; default: backups/ in the instance folder"),
)


def setting(name: str) -> Setting:
    """The declared setting `name` (KeyError if there is none)."""
    for declared in SETTINGS:
        if declared.name == name:
            return declared
    raise KeyError(name)
