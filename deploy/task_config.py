"""The tasks' own knobs in Invoke's config (`db.*`): their defaults, and every value read and checked here.

Invoke casts an `INVOKE_DB_...` variable to its default's type before any task runs, and a failed cast
(`abc` for a number, any string for a list) ends in its traceback. So the defaults Invoke sees are None,
which it passes through as the variable's text, and the values are converted here, where a wrong one is
one line naming the variable (or the invoke.yaml key) and what it expects."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from .errors import DeployError

RESET_SETTINGS = ("development", "testing")
# Seconds or counts; None: the guard's own default (commands.Guards).
SECONDS = ("lock_wait", "lock_wait_timeout", "retry_pause", "open_transactions_after")
COUNTS = ("retries", "backups_kept")
PATHS = ("backup_dir",)


def invoke_defaults(alembic_ini: str) -> dict[str, Any]:
    """What the `db` collection configures: None wherever an environment string must reach `read`."""
    return {
        "alembic_ini": alembic_ini,
        # Settings names db.reset may drop tables under (default RESET_SETTINGS); production is never one.
        "reset_settings": None,
        # What hints tell the user to type before `db.*`; `fab` sets INVOKE_DB_CALLER on the server.
        "caller": "invoke",
        # Production safety (docs/safety.md): invoke.yaml or INVOKE_DB_SAFETY_* override the guards' defaults.
        "safety": dict.fromkeys((*SECONDS, *COUNTS, *PATHS)),
    }


@dataclass(frozen=True)
class TaskConfig:
    reset_settings: list[str]
    safety: dict[str, Any]  # commands.Guards' keyword arguments, only those set


def read(config) -> TaskConfig:
    """`db.reset_settings` and `db.safety` from Invoke's `config`, checked."""
    db = config.db
    prefix = getattr(config, "_env_prefix", None) or "INVOKE_"
    safety = dict(db.get("safety") or {})
    unknown = sorted(set(safety) - {*SECONDS, *COUNTS, *PATHS})
    if unknown:
        raise DeployError(
            f"db.safety.{unknown[0]} is not a setting of Invoke's config (invoke.yaml): "
            f"the settings are {', '.join((*SECONDS, *COUNTS, *PATHS))}"
        )
    checked: dict[str, Any] = {}
    for key, value in safety.items():
        if value is None:
            continue
        where = _where(prefix, ("db", "safety", key), value)
        if key in SECONDS:
            checked[key] = _seconds(value, where)
        elif key in COUNTS:
            checked[key] = _count(value, where)
        elif not isinstance(value, str) or not value:
            raise DeployError(f"{where}: expects a directory's path")
        else:
            checked[key] = value
    names = db.get("reset_settings")
    return TaskConfig(_names(names, _where(prefix, ("db", "reset_settings"), names)), checked)


def _where(prefix: str, path: tuple[str, ...], value: Any) -> str:
    """The variable that gave `value` (a string Invoke passed on), else the key in Invoke's config files."""
    variable = prefix + "_".join(path).upper()
    if isinstance(value, str) and os.environ.get(variable) == value:
        return f"{variable}={os.environ[variable]!r}"
    return f"{'.'.join(path)} {value!r} in Invoke's config (invoke.yaml)"


def _seconds(value: Any, where: str) -> float:
    try:
        number = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number < 0:
        raise DeployError(f"{where}: expects a number of seconds, such as 10 or 2.5")
    return number


def _count(value: Any, where: str) -> int:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not text.isdigit():
        raise DeployError(f"{where}: expects a whole number, such as 5")
    return int(text)


def _names(value: Any, where: str) -> list[str]:
    if value is None:
        return list(RESET_SETTINGS)
    if isinstance(value, str):
        # Invoke's environment gives text only, and a list of names is not one word.
        raise DeployError(
            f"{where}: expects a list of settings names, which an environment variable cannot give: "
            f"set db.reset_settings in invoke.yaml (default: [{', '.join(RESET_SETTINGS)}])"
        )
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) and name for name in value):
        raise DeployError(f"{where}: expects a list of settings names, such as [{', '.join(RESET_SETTINGS)}]")
    return list(value)
