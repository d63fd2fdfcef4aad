"""This project's view of Alembic: alembic.ini, the script directory, the version table."""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from .credentials import describe
from .database import application_tables
from .errors import DeployError
from .guards.refusals import check_single_head, check_stamped
from .settings import Settings, load_metadata, load_settings, settings_name

# A server process's config, its scripts loaded and their operations recorded before it forks its
# workers (deploy.forking): each worker takes it instead of reading every revision file again.
_preloaded: dict[Path, Config] = {}


def load_config(ini_path: Path) -> Config:
    """alembic.ini, the file plain `alembic` reads too."""
    if (preloaded := _preloaded.get(ini_path.resolve())) is not None:
        return preloaded
    if not ini_path.is_file():
        raise DeployError(f"no {ini_path}: run this from the project's checkout")
    return Config(str(ini_path))


def preload(config: Config) -> None:
    """Before forking workers: they take `config` (and what it keeps: the scripts, once loaded)."""
    scripts(config)
    _preloaded[root(config) / Path(config.config_file_name).name] = config


def root(config: Config) -> Path:
    """The checkout: alembic.ini's folder, which holds instance/."""
    return Path(config.config_file_name).resolve().parent


def main_option(config: Config, name: str) -> str:
    value = config.get_main_option(name)
    if not value:
        raise DeployError(f"set {name} in {config.config_file_name} (see the README)")
    return value


def settings(config: Config, name: str | None = None) -> Settings:
    """The Flask settings named (default $FLASK_CONFIG or development), per alembic.ini's
    flask_config (optional: the config objects, read without building the app) and flask_app."""
    objects = config.get_main_option("flask_config")
    return load_settings(objects, main_option(config, "flask_app"), name or settings_name(), root(config))


def metadata(config: Config):
    """The models' MetaData, via alembic.ini's flask_app: imports the application's models."""
    return load_metadata(main_option(config, "flask_app"), settings_name(), root(config))


def scripts(config: Config) -> ScriptDirectory:
    """The migration scripts, loaded once per command: a broken script is the user's to fix, in one line."""
    if "script_directory" in config.attributes:
        return config.attributes["script_directory"]
    with alembic_errors(), warnings.catch_warnings():
        # Alembic warns, then fails, on a down_revision that names no script: its warning says it best.
        warnings.filterwarnings("error", message="Revision .* is not present")
        try:
            directory = ScriptDirectory.from_config(config)
            directory.get_heads()  # loads every script, so a broken one fails here
        except CommandError:
            raise
        except Exception as exc:
            raise DeployError(f"cannot load the migration scripts: {type(exc).__name__}: {exc}") from None
    # Parsing every revision file is the slow part; labels and plans ask for it many times.
    config.attributes["script_directory"] = directory
    return directory


def heads(config: Config) -> tuple[str, ...]:
    return tuple(scripts(config).get_heads())


def single_head(config: Config) -> str:
    """The one head, or a DeployError saying why there is not exactly one."""
    found = heads(config)
    check_single_head(found)
    if not found:
        raise DeployError("the migrations have no revisions yet: autogenerate the first with `invoke db.revision`")
    return found[0]


def resolve(config: Config, revision: str) -> None:
    """Fail now, in one line, when `revision` names no script."""
    directory = scripts(config)
    with alembic_errors():
        directory.get_revisions(revision)


def base(config: Config) -> str | None:
    bases = scripts(config).get_bases()
    return bases[0] if bases else None


def target_behind(config: Config, current: tuple[str, ...], target: str, steps: list, downgrade: bool) -> bool:
    """Whether an upgrade plan came out empty because `target` is older than the database,
    rather than because the database is already there (Alembic plans nothing in both cases)."""
    if steps or downgrade or target in ("head", "heads"):
        return False
    with alembic_errors():
        wanted = scripts(config).get_revisions(target)
    return {script.revision for script in wanted} != set(current)


def current_heads(connection: Connection) -> tuple[str, ...]:
    """What alembic_version holds; empty when unstamped."""
    found = MigrationContext.configure(connection).get_current_heads()
    connection.rollback()
    return tuple(found)


def check_ready(config: Config, connection: Connection, stamp_command: str) -> tuple[str, ...]:
    """Refuse several heads, or tables without alembic_version; else the database's current heads.

    `invoke db.upgrade` and plain `alembic upgrade` both come through here, so they refuse alike."""
    check_single_head(heads(config))
    current = current_heads(connection)
    tables = application_tables(connection)
    check_stamped(describe(connection.engine.url), tables, bool(current), base(config), stamp_command)
    return current


def label(config: Config, revision: str | None) -> str:
    """'abc123 (add tags)', or 'base' when no revision is applied."""
    if not revision:
        return "base (no revisions applied)"
    with alembic_errors():
        script = scripts(config).get_revision(revision)
    return f"{revision} ({script.doc})" if script is not None and script.doc else revision


def plan(config: Config, current: tuple[str, ...], target: str, downgrade: bool = False) -> list:
    """The revisions an upgrade (or downgrade) to `target` would run, in order."""
    directory = scripts(config)
    with alembic_errors():
        # The same step planning Alembic's own upgrade and downgrade use.
        if downgrade:
            steps = directory._downgrade_revs(target, current)
        else:
            steps = directory._upgrade_revs(target, current)
    return [step.revision for step in steps]


@contextmanager
def alembic_errors() -> Iterator[None]:
    """Alembic's CommandError (unknown revision, bad script location...) as one line."""
    try:
        yield
    except CommandError as exc:
        raise DeployError(str(exc).splitlines()[0]) from None


# config.attributes keys through which `run` hands env.py (deploy.alembic_env) what it needs.
CONNECTION, TARGET_METADATA, AUTOGENERATE = "connection", "target_metadata", "autogenerate"
# db.revision's answers about renames (a deploy.renames.Renames), for autogenerate's drops and adds.
RENAMES = "renames"


def hand_over(
    config: Config, connection: Connection | None, models=None, autogenerate: bool = False, renames=None
) -> None:
    """What env.py (deploy.alembic_env) takes from the attributes: our connection, the models, and
    the answers about renames."""
    config.attributes[CONNECTION] = connection
    # None tells env.py not to import the models: only autogenerate needs them.
    config.attributes[TARGET_METADATA] = models
    config.attributes[AUTOGENERATE] = autogenerate
    config.attributes[RENAMES] = renames


def run(command, config: Config, connection: Connection | None, *args, models=None, renames=None, **kwargs):
    """Call an alembic.command function on our connection; env.py takes it from the attributes."""
    scripts(config)  # a broken script fails here in one line, not inside the command
    hand_over(config, connection, models, bool(kwargs.get("autogenerate")), renames)
    with alembic_errors():
        return command(config, *args, **kwargs)


def migrate(config: Config, connection: Connection, destination: str, downgrade: bool = False) -> None:
    """`alembic upgrade/downgrade DESTINATION` on our connection, as alembic.command runs it, but on
    the scripts loaded once: the command would parse every revision file again for each of the
    revisions we run one at a time."""
    directory = scripts(config)
    planned = directory._downgrade_revs if downgrade else directory._upgrade_revs
    _run_env(config, connection, destination, lambda current, context: planned(destination, current))


def stamp(config: Config, connection: Connection, revision: str) -> None:
    """`alembic stamp REVISION` on our connection, on the scripts loaded once (so db.reset reads the
    history once, however long it is)."""
    directory = scripts(config)
    _run_env(config, connection, (revision,), lambda current, context: directory._stamp_revs((revision,), current))


def _run_env(config: Config, connection: Connection, destination, steps) -> None:
    from alembic.runtime.environment import EnvironmentContext

    directory = scripts(config)
    hand_over(config, connection)
    with alembic_errors(), EnvironmentContext(config, directory, fn=steps, destination_rev=destination):
        directory.run_env()


def run_captured(command, config: Config, *args, **kwargs) -> str:
    """What an alembic.command function that needs no database prints (or, offline, the SQL it
    would run), returned instead."""
    config.stdout = config.output_buffer = io.StringIO()
    try:
        run(command, config, None, *args, **kwargs)
        return config.stdout.getvalue().rstrip("\n")
    finally:
        config.stdout, config.output_buffer = sys.stdout, None
