"""fabric.yaml's environments and their targets: an environment names one database, or a fleet of
them (several hosts, several settings, one database each; fleet.py runs commands across them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import DeployError

# The Config keys an environment task sets for the tasks after it on the same command line.
SELECTED = "deploy_environment"
ONLY = "deploy_only"
DEFAULT_CONCURRENCY = 4
# Without `python`, the server's interpreter is the first of these virtual environments in app_dir:
# Flask's tutorial and many apps use venv/, others .venv/.
VIRTUALENVS = (".venv", "venv")


@dataclass(frozen=True)
class Target:
    """One database of an environment: a host, the checkout there, and the settings naming the database."""

    environment: str
    name: str  # within the environment; "" when the environment has only this target
    host: str
    app_dir: str
    pythons: tuple[str, ...]  # the interpreter (`python`), or those tried in order when it is not set
    settings: str

    @property
    def label(self) -> str:
        """How messages name it: `prod`, or `tenants/acme` for one of several."""
        return f"{self.environment}/{self.name}" if self.name else self.environment

    @property
    def caller(self) -> str:
        """What the user types before `db.*` to reach this target alone."""
        return f"fab {self.environment}" + (f" --only {self.name}" if self.name else "")


def selected_targets(config) -> tuple[list[Target], int]:
    """The selected environment's targets (narrowed by `--only`) and how many may run at once."""
    environments = config.get("environments") or {}
    name = config.get(SELECTED)
    if not name:
        # Only fabric.yaml's environments have a task; `-f` files override their values.
        names = ", ".join(config.db.environment_tasks) or "none declared in fabric.yaml"
        raise DeployError(
            f"no environment selected: put one before the task, e.g. `fab prod db.upgrade` (environments: {names})"
        )
    env = environments.get(name)
    if not isinstance(env, Mapping):
        raise DeployError(f"environments.{name} in fabric.yaml is not a mapping of host, app_dir, ...")
    found = targets(name, env)
    only = config.get(ONLY)
    if only:
        wanted = only.split(",")
        unknown = [one for one in wanted if one not in {target.name for target in found}]
        if unknown or len(found) == 1:
            names = ", ".join(target.name for target in found if target.name) or "it has only one"
            raise DeployError(f"{name} has no target {', '.join(unknown) or only} (its targets: {names})")
        found = [target for target in found if target.name in wanted]
    concurrency = env.get("concurrency", DEFAULT_CONCURRENCY)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise DeployError(f"environments.{name}.concurrency must be a whole number of 1 or more")
    return found, concurrency


def targets(name: str, env: Mapping) -> list[Target]:
    """Every host (`host`, or `hosts: [...]`) with every settings name (`settings`, or a list)."""
    hosts = _names(env, "hosts") if "hosts" in env else _names(env, "host")
    if not hosts:
        raise DeployError(f"environments.{name}.host is not set in fabric.yaml")
    if not env.get("app_dir"):
        raise DeployError(f"environments.{name}.app_dir is not set in fabric.yaml")
    settings = _names(env, "settings") or ["production"]
    app_dir = env["app_dir"]
    python = env.get("python")
    if python is not None and not isinstance(python, str):
        raise DeployError(f"environments.{name}.python must be the path of the server's interpreter")
    pythons = (python,) if python else tuple(f"{app_dir.rstrip('/')}/{venv}/bin/python" for venv in VIRTUALENVS)

    def target_name(host: str, setting: str) -> str:
        short_host = host.split("@")[-1]
        if len(hosts) > 1 and len(settings) > 1:
            return f"{short_host}/{setting}"
        return short_host if len(hosts) > 1 else setting if len(settings) > 1 else ""

    return [
        Target(name, target_name(host, setting), host, app_dir, pythons, setting)
        for host in hosts
        for setting in settings
    ]


def _names(env: Mapping, key: str) -> list[str]:
    value = env.get(key)
    if value is None or value == "":
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(one, str) and one for one in values):
        raise DeployError(f"{key} in fabric.yaml must be a name or a list of names")
    if len(set(values)) != len(values):
        raise DeployError(f"{key} in fabric.yaml names one twice")
    return values
