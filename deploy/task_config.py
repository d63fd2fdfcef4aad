"""The tasks' own knobs in Invoke's config (`db.*`): their defaults, and every value read and checked here.

Invoke casts an `INVOKE_DB_...` variable to its default's type before any task runs, and a failed cast
(`abc` for a number, any string for a list) ends in its traceback. So the defaults Invoke sees are None,
which it passes through as the variable's text, and the values are converted here, where a wrong one is
one line naming the variable (or the invoke.yaml key) and what it expects."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from . import switches
from .errors import DeployError

RESET_SETTINGS = ("development", "testing")


def invoke_defaults(alembic_ini: str) -> dict[str, Any]:
    """What the `db` collection configures: None wherever an environment string must reach `read`."""
    return {
        "alembic_ini": alembic_ini,
        # Settings names db.reset may drop tables under (default RESET_SETTINGS); production is never one.
        "reset_settings": None,
        # What hints tell the user to type before `db.*`; `fab` sets INVOKE_DB_CALLER on the server.
        "caller": "invoke",
        # Production safety (docs/safety.md): invoke.yaml or INVOKE_DB_SAFETY_* override the guards' defaults.
        # Unset (None): the declared default (deploy.switches.SETTINGS).
        "safety": dict.fromkeys(setting.name for setting in switches.SETTINGS),
    }


@dataclass(frozen=True)
class TaskConfig:
    reset_settings: list[str]
    safety: dict[str, Any]  # the settings (deploy.switches.SETTINGS) set, checked, by name


def read(config) -> TaskConfig:
    """`db.reset_settings` and `db.safety` from Invoke's `config`, checked."""
    db = config.db
    prefix = getattr(config, "_env_prefix", None) or "INVOKE_"
    safety = dict(db.get("safety") or {})
    declared = {setting.name: setting for setting in switches.SETTINGS}
    unknown = sorted(set(safety) - set(declared))
    if unknown:
        raise DeployError(
            f"db.safety.{unknown[0]} is not a setting of Invoke's config (invoke.yaml): "
            f"the settings are {', '.join(declared)}"
        )
    checked: dict[str, Any] = {}
    for key, value in safety.items():
        if value is None:
            continue
        kind = declared[key].kind
        parsed = kind.parse(value)
        if parsed is None:
            raise DeployError(f"{_where(prefix, ('db', 'safety', key), value)}: {kind.expects}")
        checked[key] = parsed
    names = db.get("reset_settings")
    return TaskConfig(_names(names, _where(prefix, ("db", "reset_settings"), names)), checked)


def _where(prefix: str, path: tuple[str, ...], value: Any) -> str:
    """The variable that gave `value` (a string Invoke passed on), else the key in Invoke's config files."""
    variable = prefix + "_".join(path).upper()
    if isinstance(value, str) and os.environ.get(variable) == value:
        return f"{variable}={os.environ[variable]!r}"
    return f"{'.'.join(path)} {value!r} in Invoke's config (invoke.yaml)"


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
