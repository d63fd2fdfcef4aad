"""Which Flask config is in force, and the database URLs it gives migrations."""

from __future__ import annotations

import functools
import importlib
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from . import dialects
from .errors import DeployError

SETTINGS_VARIABLE = "FLASK_CONFIG"
DEFAULT_SETTINGS = "development"
# In flask_app, stands for the settings name: `myapp:create_app('{settings}')`.
SETTINGS_PLACEHOLDER = "{settings}"


def settings_name() -> str:
    """The settings in force: $FLASK_CONFIG, else development (the app factory's rule too)."""
    return os.environ.get(SETTINGS_VARIABLE) or DEFAULT_SETTINGS


def import_object(path: str, what: str) -> Any:
    """Import 'package.module:attribute'."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attribute) if attribute else module
    except Exception as exc:
        # Any failure of the user's module (ImportError, SyntaxError, ...) is theirs to fix, in one line.
        raise DeployError(f"cannot import {what} {path!r}: {type(exc).__name__}: {exc}") from None


# quote_plus would write a space as '+', which SQLAlchemy keeps as a '+': quote with safe="" fits every character.
PERCENT_ENCODE = ": percent-encode its password (and query values) with urllib.parse.quote(value, safe='')"
# A '%' that does not start an escape (%XX).
BARE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def unencoded_password(raw: str) -> bool:
    """Whether a URL string's password (or query) was written without percent-encoding.

    SQLAlchemy ends the password at the first '@', so an '@' in it moves the rest into the host,
    port or query, where no check after parsing can see all of it: look at the string itself.
    A second '@' may also be a query value's; encoded, it is unambiguous."""
    after_scheme = raw.partition("://")[2]
    if after_scheme.count("@") > 1:
        return True
    user_info = after_scheme.rpartition("@")[0]
    return bool(BARE_PERCENT.search(user_info))


def _place(url: URL) -> tuple:
    """Which database a URL names, whoever connects."""
    return url.get_backend_name(), url.host, url.port, url.database


@dataclass(frozen=True)
class Settings:
    """A Flask config for one settings name, read without building the app."""

    name: str
    config: dict[str, Any]
    instance_path: Path

    @property
    def settings_file(self) -> Path:
        return self.instance_path / f"{self.name}.cfg"

    @property
    def database_url(self) -> URL:
        """The application's own URL (SQLALCHEMY_DATABASE_URI): enough to read."""
        return self._url("SQLALCHEMY_DATABASE_URI")

    @property
    def migration_url(self) -> URL:
        """The URL migrations run with: SQLALCHEMY_ALEMBIC_URI when set, for the same database."""
        if not self.config.get("SQLALCHEMY_ALEMBIC_URI"):
            return self.database_url
        migration = self._url("SQLALCHEMY_ALEMBIC_URI")
        # Checks and status read with the application's URL: they must be about the same database.
        if _place(migration) != _place(self.database_url):
            raise DeployError(
                "SQLALCHEMY_ALEMBIC_URI and SQLALCHEMY_DATABASE_URI name different databases: "
                "only the user and password may differ (same driver, host, port and database)"
            )
        return migration

    @property
    def engine_options(self) -> dict[str, Any]:
        """SQLALCHEMY_ENGINE_OPTIONS (TLS connect_args and the like), as the app uses them."""
        return dict(self.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})

    def _url(self, key: str) -> URL:
        value = self.config.get(key)
        if not value and not self.settings_file.exists():
            raise DeployError(f"{self.settings_file} is missing: the {self.name} settings need it, with {key} = '...'")
        if not value:
            raise DeployError(f"no {key} in the {self.name} settings: set it in {self.settings_file}")
        # Messages name the key, never the value: it may hold a password.
        if isinstance(value, str) and unencoded_password(value):
            raise DeployError(f"{key} in the {self.name} settings has an unencoded '@' or '%'{PERCENT_ENCODE}")
        try:
            url = make_url(value)
        except (ArgumentError, ValueError, TypeError):
            raise DeployError(f"{key} in the {self.name} settings is not a database URL{PERCENT_ENCODE}") from None
        return self._in_instance_folder(url)

    def _in_instance_folder(self, url: URL) -> URL:
        # Flask-SQLAlchemy 3 puts relative SQLite paths in the instance folder; agree with the app.
        path = url.database
        if dialects.database_file(url) is None:
            return url
        if path.startswith("file:") or Path(path).is_absolute():
            return url
        return url.set(database=str(self.instance_path / path))


def load_settings(config_objects: str | None, app: str, name: str, root: Path) -> Settings:
    """Settings `name`, read as the app reads them, then overlaid by instance/<name>.cfg when present.

    With flask_config: its config object (one per settings name, or one for all), without building
    the app. Without it: the app's own config, the app found as `flask --app` finds it; when
    flask_app names a `db`, the app beside it in its module, if that module has one."""
    from flask import Config

    if config_objects:
        instance_path = root / "instance"
        config = Config(str(instance_path))
        config.from_object(config_object(config_objects, name))
    else:
        target = locate(app, name, root)
        flask_app = app_beside(app, root) if metadata_of(target) is not None else target
        instance_path = Path(flask_app.instance_path) if flask_app is not None else root / "instance"
        config = Config(str(instance_path), flask_app.config if flask_app is not None else None)
    settings_file = instance_path / f"{name}.cfg"
    if settings_file.exists():
        try:
            config.from_pyfile(str(settings_file))
        except Exception as exc:
            # Name the error type and line only: the file's text may hold passwords.
            line = getattr(exc, "lineno", None)
            where = f" (line {line})" if line else ""
            raise DeployError(f"cannot read {settings_file}: {type(exc).__name__}{where}") from None
    return Settings(name=name, config=dict(config), instance_path=instance_path)


def config_object(path: str, name: str) -> Any:
    """flask_config: a dict of config objects by settings name, or one config object for every name."""
    objects = import_object(path, "the config objects")
    if not isinstance(objects, Mapping):
        return objects
    if name not in objects:
        raise DeployError(f"unknown settings {name!r}: choose one of {', '.join(sorted(objects))}")
    return objects[name]


def load_metadata(app: str, name: str, root: Path):
    """The MetaData of every model: from a Flask-SQLAlchemy `db` or MetaData, or from the app's."""
    target = locate(app, name, root)
    found = metadata_of(target)
    if found is None:
        extension = target.extensions.get("sqlalchemy")
        if extension is None:
            raise DeployError(f"flask_app {app!r} has no Flask-SQLAlchemy db: call db.init_app(app) in it")
        found = extension.metadata
    return found


@functools.cache
def locate(spec: str, name: str, root: Path) -> Any:
    """What flask_app names, found the way `flask --app` finds an app (Flask's own loader): a module
    (its `app`, or `create_app()`), `module:name`, or `module:create_app(...)` with literal arguments,
    where `{settings}` stands for the settings name. A Flask-SQLAlchemy `db` or MetaData is taken as it is.

    Cached: one app per process and settings, however many times settings and models are asked for."""
    from flask.cli import NoAppException, locate_app

    module_name, attribute = import_module_of(spec.replace(SETTINGS_PLACEHOLDER, name), root)
    if attribute.isidentifier():
        found = getattr(sys.modules[module_name], attribute, None)
        if metadata_of(found) is not None:
            return found
    try:
        return locate_app(module_name, attribute or None)
    except NoAppException as exc:
        lines = str(exc).strip().splitlines()
        raise DeployError(f"flask_app {spec!r}: {' '.join(dict.fromkeys([lines[0], lines[-1]]))}") from None
    except Exception as exc:
        # The type only: the app's own error may quote a URL, and with it a password.
        raise DeployError(
            f"flask_app {spec!r} failed for the {name!r} settings ({type(exc).__name__}): "
            f"run `FLASK_CONFIG={shell_word(name)} flask --app {shell_word(spec.replace(SETTINGS_PLACEHOLDER, name))} "
            "shell` to see why"
        ) from None


def shell_word(text: str) -> str:
    """`text` as one word to paste into a shell: in double quotes when it holds single quotes only."""
    if not re.search(r"[\"$`\\!]", text) and "'" in text:
        return f'"{text}"'
    return shlex.quote(text)


def app_beside(spec: str, root: Path):
    """The Flask app in the module of a flask_app that names a `db`, as `flask` would find it there."""
    from flask.cli import NoAppException, find_best_app

    module_name, _ = import_module_of(spec, root)
    try:
        return find_best_app(sys.modules[module_name])
    except NoAppException:
        return None


def import_module_of(spec: str, root: Path) -> tuple[str, str]:
    """Import the module part of `spec` (a dotted name or a file, relative to the project), as flask does."""
    from flask.cli import prepare_import

    path, _, attribute = spec.partition(":")
    module_name = prepare_import(str(root / path))  # also puts its folder on sys.path, as `flask --app` does
    import_object(module_name, "the application")
    return module_name, attribute


def metadata_of(target):
    from sqlalchemy import MetaData

    if isinstance(target, MetaData):
        return target
    if isinstance(getattr(target, "metadata", None), MetaData):
        return target.metadata
    return None
