"""`python -m deploy init --app MODULE:OBJECT`: set a Flask project up for `invoke db.*` and `fab ENV db.*`.

Run at the project's root, it writes what is missing and prints one line per action; a file that
exists is never overwritten. It loads the app once, as `flask --app` and every later command will: a
factory that needs an argument gets the settings name, and the config object the app uses, when init
can find it, becomes flask_config. A Flask-Migrate (or plain Alembic) migrations folder is taken
over: its revisions and script template stay, its env.py moves aside (`flask db` keeps working), and
the settings of Flask-Migrate's migrations/alembic.ini move to the root alembic.ini.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import inspect
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from .errors import DeployError
from .settings import (
    SETTINGS_PLACEHOLDER,
    app_beside,
    import_module_of,
    load_settings,
    locate,
    metadata_of,
    settings_name,
)

TEMPLATES = files(__package__) / "templates"
# What marks an env.py as ours (its one import), and one as Flask-Migrate's (how it finds the db).
OUR_ENV = "deploy.alembic_env"
FLASK_MIGRATE_ENV = "extensions['migrate']"
# Keys of Flask-Migrate's migrations/alembic.ini that the root alembic.ini replaces instead of carrying:
# it sets its own paths (a key twice would break it), and the URL comes from the Flask settings.
REPLACED_KEYS = ("prepend_sys_path", "path_separator", "sqlalchemy.url", "flask_app", "flask_config")
# Files that would be imported instead of the library, since the project's root comes first on sys.path.
SHADOWS = ("deploy.py", "deploy/__init__.py")
NAMESPACE = re.compile(r"^(ns|namespace)\s*=", re.MULTILINE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors end like every other refusal: one `error:` line, exit status 1."""

    def error(self, message):
        raise DeployError(f"{message} (see --help)")


def parser() -> ArgumentParser:
    as_module = Path(sys.argv[0]).name == "__main__.py"
    top = ArgumentParser(prog="python -m deploy" if as_module else None, description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True, metavar="init")
    init = commands.add_parser(
        "init",
        help="write alembic.ini, migrations/, tasks.py, fabfile.py and fabric.yaml where missing",
        description=__doc__.split("\n\n", 1)[1],
    )
    init.add_argument(
        "--app",
        required=True,
        help="alembic.ini's flask_app, as for `flask --app`: yourapp:create_app, yourapp:db, ...",
    )
    init.add_argument("--dir", type=Path, default=Path("."), help="the project's root (default: this directory)")
    return top


def main(argv: list[str] | None = None) -> None:
    try:
        arguments = parser().parse_args(argv)
        init(arguments.dir, arguments.app)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


def init(root: Path, app: str) -> None:
    """Set the project at `root` up with `app` as flask_app: every refusal comes before the first write."""
    project = Project.inspect(root.resolve(), app.strip())
    project.load_app()
    try:
        project.write_alembic_ini()
        project.write_migrations()
        project.write_tasks_file("tasks.py", "deploy.local_tasks", "db_tasks", tasks_lines)
        project.write_tasks_file("fabfile.py", "deploy.remote_tasks", "fab_tasks", fabfile_lines)
        project.write(project.root / "fabric.yaml", template("fabric.yaml"))
    except OSError as exc:
        raise DeployError(f"cannot write {exc.filename}: {exc.strerror}") from None
    project.advise()


@dataclass
class Project:
    root: Path
    app: str
    scripts: Path
    # Where a foreign env.py (Flask-Migrate's, Alembic's) is moved to, if there is one.
    old_env: Path | None = None
    flask_migrate: bool = False
    # The config object the app uses, as flask_config, when init found it.
    flask_config: str | None = None
    # What init worked out about the app, said once the files are written.
    findings: list[str] = field(default_factory=list)

    @classmethod
    def inspect(cls, root: Path, app: str) -> Project:
        check_root(root)
        if not app or "\n" in app:
            raise DeployError("--app needs your app as `flask --app` names it, e.g. --app yourapp:create_app")
        scripts = scripts_folder(root)
        mako = scripts / "script.py.mako"
        if mako.is_file() and "def upgrade(engine_name" in text_of(mako):
            raise DeployError(
                f"{scripts} holds Flask-Migrate's multi-database migrations (upgrade(engine_name)): "
                "flask-schema-deploy migrates one database"
            )
        project = cls(root, app, scripts)
        env = scripts / "env.py"
        if env.is_file() and OUR_ENV not in text_of(env):
            project.flask_migrate = FLASK_MIGRATE_ENV in text_of(env) or (scripts / "alembic.ini").is_file()
            project.old_env = env.with_name("env.py.flask-migrate" if project.flask_migrate else "env.py.alembic")
            if project.old_env.exists():
                raise DeployError(
                    f"{project.show(project.old_env)} exists already, so {project.show(env)} cannot move there: "
                    "move one of them away, then run init again"
                )
        return project

    def load_app(self) -> None:
        """Load the app as every later command will (refusing what cannot load); a factory that needs
        an argument gets the settings name; then look for the config object it uses."""
        name = settings_name()
        given = self.app
        self.app = loadable_app(self.root, given, name)
        if self.app != given:
            self.findings.append(
                f"flask_app = {self.app}: {given} needs an argument, so it is given the settings name "
                "({settings}: $FLASK_CONFIG, else development); `flask --app` takes the same form"
            )
        found = config_object_in_use(self.root, self.app, name)
        if found is not None:
            self.flask_config, what = found
            self.findings.append(
                f"flask_config = {self.flask_config}: the {what} {self.app} reads its settings from; "
                "upgrade, current, status... now read it without importing the models or building the app "
                "(remove the line if your factory changes the database settings itself)"
            )

    def show(self, path: Path) -> str:
        """`path` as the user sees it from the project's root; folders end with a slash."""
        shown = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)
        return shown + "/" if path.is_dir() else shown

    def write(self, path: Path, text: str) -> bool:
        """Write `path` unless it exists (then say so); whether it was written."""
        if path.exists():
            print(f"kept {self.show(path)} (exists)")
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as file:  # "x": never over a file that appeared meanwhile
            file.write(text)
        print(f"wrote {self.show(path)}")
        return True

    def write_alembic_ini(self) -> None:
        ini = self.root / "alembic.ini"
        old_ini = self.scripts / "alembic.ini"
        old = old_settings(old_ini, self.show(self.scripts).rstrip("/")) if old_ini.is_file() else {}
        carried = {key: value for key, value in old.items() if key not in REPLACED_KEYS}
        if not self.write(ini, alembic_ini(self.app, self.flask_config, carried, self.show(old_ini))):
            self.check_existing_ini(ini)
        elif old:
            print(f"carried over from {self.show(old_ini)} to alembic.ini: {', '.join(carried) or 'nothing'}")
            if replaced := [key for key in old if key in REPLACED_KEYS]:
                print(f"not carried over: {', '.join(replaced)} (alembic.ini sets its own; the URL is the app's)")
        if old_ini.is_file():
            print(f"kept {self.show(old_ini)} (`flask db` reads it; `invoke db.*` reads alembic.ini at the root)")

    def check_existing_ini(self, ini: Path) -> None:
        """The user's own alembic.ini stays as it is: say what it needs."""
        settings = read_ini(ini)
        if not settings.get("alembic", "flask_app", fallback=""):
            print(f"add to alembic.ini [alembic]: flask_app = {self.app}")
        if self.flask_config and not settings.get("alembic", "flask_config", fallback=""):
            print(f"add to alembic.ini [alembic]: flask_config = {self.flask_config}")
        if settings.get("alembic", "sqlalchemy.url", fallback=""):
            print("note: alembic.ini's sqlalchemy.url is no longer used: the URL comes from the Flask settings")

    def write_migrations(self) -> None:
        if self.old_env is not None:
            env = self.scripts / "env.py"
            env.rename(self.old_env)
            print(f"moved {self.show(env)} -> {self.show(self.old_env)}")
        self.write(self.scripts / "env.py", template("migrations/env.py"))
        self.write(self.scripts / "script.py.mako", template("migrations/script.py.mako"))
        versions = self.scripts / "versions"
        if versions.is_dir():
            count = len(list(versions.glob("*.py")))
            print(f"kept {self.show(versions)} (exists, {count} revision{'s' * (count != 1)})")
        else:
            versions.mkdir(parents=True)
            print(f"wrote {self.show(versions)}")

    def write_tasks_file(self, name: str, module: str, function: str, lines_to_add) -> None:
        """Ours where the project has none; else the lines that add our tasks to the user's, unless it has them."""
        if self.write(self.root / name, template(name)):
            return
        source = text_of(self.root / name)
        if f"{function}(" in source:
            return
        lines = [f"from {module} import {function}", *lines_to_add(namespace_of(source), task_names(source))]
        for line in lines:
            print(f"add to {name}: {line}")

    def advise(self) -> None:
        for finding in self.findings:
            print(f"note: {finding}")
        gitignore = self.root / ".gitignore"
        if not (gitignore.is_file() and re.search(r"^/?instance/?\s*$", text_of(gitignore), re.MULTILINE)):
            print("note: add `instance/` to .gitignore: instance/<settings>.cfg holds production's secrets")
        if self.flask_migrate:
            print(
                "note: `flask db` keeps working (the new env.py takes the app and db that `flask` loaded), "
                "so the team can move to `invoke db.*` one person at a time; drop Flask-Migrate at will"
            )
        print("next: `invoke db.current` shows the development database's revision; `invoke --list` the tasks")


def check_root(root: Path) -> None:
    if not root.is_dir():
        raise DeployError(f"{root} is not a directory: run init at your Flask project's root")
    if not os.access(root, os.W_OK | os.X_OK):
        raise DeployError(f"cannot write in {root}")
    for name in SHADOWS:
        if (root / name).exists():
            raise DeployError(
                f"{root / name} would shadow the deploy library (Python imports the project's own first): "
                "rename your deploy package or module, then run init again"
            )


def scripts_folder(root: Path) -> Path:
    """The migrations folder: the root alembic.ini's script_location when there is one."""
    ini = root / "alembic.ini"
    if not ini.is_file():
        return root / "migrations"
    location = read_ini(ini).get("alembic", "script_location", fallback="")
    if not location:
        raise DeployError(f"{ini} has no script_location in [alembic]: fix it or move it away, then run init again")
    path = root / location.replace("%(here)s", str(root))
    if ":" in location and not path.is_dir():
        raise DeployError(f"script_location {location!r} in {ini} is not a folder: init only takes over a folder")
    return path


def old_settings(old_ini: Path, scripts: str) -> dict[str, str]:
    """Flask-Migrate's [alembic] settings (file_template, timezone...) but its script_location,
    as the root alembic.ini would say them."""
    settings = read_ini(old_ini)
    if not settings.has_section("alembic"):
        return {}
    # %(here)s was the migrations folder; at the root it is the project.
    return {
        key: value.replace("%(here)s", f"%(here)s/{scripts}")
        for key, value in settings.items("alembic", raw=True)
        if key != "script_location"
    }


def alembic_ini(app: str, flask_config: str | None, carried: dict[str, str], source: str) -> str:
    block = ""
    if carried:
        lines = [f"{key} = {value}".replace("\n", "\n    ") for key, value in carried.items()]
        block = "\n".join(["", f"# From {source}, which this file replaces:", *lines, ""])
    if flask_config:
        config_line = f"# init found the one your app uses:\nflask_config = {flask_config}"
    else:
        config_line = "# flask_config = yourapp.config:configs"
    # ConfigParser reads '%' as interpolation: a literal one is doubled.
    return fill(
        template("alembic.ini"),
        flask_app=app.replace("%", "%%"),
        flask_config=config_line.replace("%", "%%"),
        carried_over=block,
    )


def loadable_app(root: Path, app: str, name: str) -> str:
    """`app`, or the form of it that loads: a factory that needs one argument is given the settings
    name. A DeployError, saying what to write, when neither loads."""
    try:
        locate(app, name, root)
        return app
    except DeployError as failure:
        factory = factory_needing_arguments(root, app)
        if factory is None:
            raise DeployError(f"--app {app!r} does not load, as every command would load it: {failure}") from None
        module, function, required = factory
        with_settings = f"{module}:{function}('{SETTINGS_PLACEHOLDER}')"
        if len(required) > 1:
            raise DeployError(
                f"--app {app!r}: {function}() needs arguments ({', '.join(required)}): give them as for "
                f"`flask --app`, e.g. --app \"{module}:{function}('{SETTINGS_PLACEHOLDER}', ...)\" "
                f"({SETTINGS_PLACEHOLDER} is the settings name)"
            ) from None
    try:
        locate(with_settings, name, root)
    except DeployError as failure:
        raise DeployError(
            f"--app {app!r}: {function}() needs its {required[0]}, and given the settings name {name!r} "
            f"({with_settings}) it does not load either: {failure} (the settings name is $FLASK_CONFIG, "
            "else development: set FLASK_CONFIG to one your app knows, then run init again)"
        ) from None
    return with_settings


def factory_needing_arguments(root: Path, app: str) -> tuple[str, str, list[str]] | None:
    """(module as written, factory, its required parameters) when `app` names, or its module holds,
    an app factory that cannot be called without arguments; else None."""
    from flask import Flask

    try:
        module_name, attribute = import_module_of(app, root)
    except DeployError:
        return None
    module = sys.modules[module_name]
    if not attribute:
        if any(isinstance(getattr(module, known, None), Flask) for known in ("app", "application")):
            return None
        # Flask's own order: create_app, then make_app.
        attribute = next((f for f in ("create_app", "make_app") if inspect.isfunction(getattr(module, f, None))), "")
    function = getattr(module, attribute, None) if attribute.isidentifier() else None
    if not inspect.isfunction(function):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = inspect.signature(function).parameters.values()
    required = [p.name for p in parameters if p.default is p.empty and p.kind in positional]
    return (app.partition(":")[0], attribute, required) if required else None


def config_object_in_use(root: Path, app: str, name: str) -> tuple[str, str] | None:
    """(flask_config, what it is) for the config object the app reads its settings from, when one is
    found that gives the same database settings as the app itself: a class that its factory takes
    by default, else a dict of config classes by settings name or a `...Config` class, in the
    factory's module first, then in the project's other modules that loading the app imported."""
    target = locate(app, name, root)
    flask_app = app_beside(app, root) if metadata_of(target) is not None else target
    if flask_app is None:
        return None
    module_name, attribute = import_module_of(app, root)
    module = sys.modules[module_name]
    factory = getattr(module, attribute.partition("(")[0].strip(), None) if attribute else None
    if factory is None and not attribute:
        factory = next((getattr(module, f) for f in ("create_app", "make_app") if hasattr(module, f)), None)
    namespaces = [factory.__globals__ if inspect.isfunction(factory) else vars(module)]
    namespaces += [vars(other) for other in project_modules(root) if vars(other) is not namespaces[0]]
    candidates: list = []
    if inspect.isfunction(factory):
        candidates += [p.default for p in inspect.signature(factory).parameters.values() if inspect.isclass(p.default)]
    for namespace in namespaces:
        candidates += [value for value in namespace.values() if is_config_dict(value, name)]
        # By Flask's naming habit: Config, DevelopmentConfig...
        candidates += [v for v in namespace.values() if inspect.isclass(v) and v.__name__.endswith("Config")]
    tried: set[int] = set()
    for found in candidates:
        if id(found) in tried:
            continue
        tried.add(id(found))
        path = import_path(found)
        if path and same_database_settings(root, app, path, name):
            return path, "dict of config classes" if isinstance(found, Mapping) else "config class"
    return None


def project_modules(root: Path) -> list:
    """The modules loaded from the project's own files (not from a virtualenv inside it), by name."""
    found = []
    for module_name, module in sorted(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or module_name == "__main__":
            continue
        path = Path(file).resolve()
        if path.is_relative_to(root) and not {"site-packages", "dist-packages"} & set(path.parts):
            found.append(module)
    return found


def is_config_dict(value, name: str) -> bool:
    """A dict of config classes by settings name, as in Flask's docs, that has `name`."""
    return (
        isinstance(value, Mapping)
        and name in value
        and all(isinstance(key, str) and inspect.isclass(item) for key, item in value.items())
    )


def import_path(found) -> str | None:
    """`module:name` that imports `found`: a class where it is defined; a dict from the module that
    defines its classes when that module holds it (importing only the config module), else from any."""
    if inspect.isclass(found):
        module = sys.modules.get(found.__module__)
        if found.__module__ != "__main__" and getattr(module, found.__qualname__, None) is found:
            return f"{found.__module__}:{found.__qualname__}"
        return None
    holders = [
        (module_name, attribute)
        for module_name, module in list(sys.modules.items())
        if module is not None and module_name != "__main__"
        for attribute, value in list(getattr(module, "__dict__", {}).items())
        if value is found and not attribute.startswith("_")
    ]
    homes = {item.__module__ for item in found.values()}
    holders.sort(key=lambda holder: (holder[0] not in homes, holder[0].count("."), holder))
    return f"{holders[0][0]}:{holders[0][1]}" if holders else None


def same_database_settings(root: Path, app: str, flask_config: str, name: str) -> bool:
    """Whether `flask_config` gives the migrations what the built app gives them: the database URLs,
    engine options and instance folder."""

    def seen(settings) -> tuple:
        config = settings.config
        return (
            config.get("SQLALCHEMY_DATABASE_URI") or None,
            config.get("SQLALCHEMY_ALEMBIC_URI") or None,
            dict(config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}),
            settings.instance_path,
        )

    try:
        by_app = seen(load_settings(None, app, name, root))
        by_object = seen(load_settings(flask_config, app, name, root))
    except DeployError:
        return False
    return by_app[0] is not None and by_app == by_object


def tasks_lines(namespace: str | None, own_tasks: list[str]) -> list[str]:
    """What adds `db.*` to a tasks.py: to its namespace, or to a new one that names its own tasks too
    (with a namespace, Invoke takes only the tasks it names)."""
    if namespace:
        return [f"{namespace}.add_collection(db_tasks(__file__))"]
    names = ", ".join([*own_tasks, "db_tasks(__file__)"])
    return ["from invoke import Collection", f"namespace = Collection({names})  # at the end"]


def fabfile_lines(namespace: str | None, own_tasks: list[str]) -> list[str]:
    """What adds `db.*` and fabric.yaml's environments to a fabfile.py: to its namespace, or ours
    becomes the namespace and takes its own tasks."""
    if not namespace:
        return ["namespace = fab_tasks(__file__)  # at the end", *(f"namespace.add_task({t})" for t in own_tasks)]
    return [
        "deploy_tasks = fab_tasks(__file__)",
        f'{namespace}.add_collection(deploy_tasks.collections["db"])',
        f"for environment in deploy_tasks.tasks.values(): {namespace}.add_task(environment)",
    ]


def namespace_of(source: str) -> str | None:
    """The variable Invoke and Fabric take the tasks from, when the file sets one."""
    found = NAMESPACE.findall(source)
    # Both look for `ns` first.
    return "ns" if "ns" in found else (found[0] if found else None)


def task_names(source: str) -> list[str]:
    """The module-level functions decorated with @task."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []

    def is_task(decorator) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return getattr(target, "id", getattr(target, "attr", None)) == "task"

    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and any(is_task(decorator) for decorator in node.decorator_list)
    ]


def template(name: str) -> str:
    resource = TEMPLATES
    for part in name.split("/"):
        resource = resource / part
    return resource.read_text(encoding="utf-8")


def fill(text: str, **values: str) -> str:
    """Replace each {{name}} of a template."""
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    return text


def text_of(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DeployError(f"cannot read {path}: {exc.strerror}") from None


def read_ini(path: Path) -> configparser.ConfigParser:
    """An ini file's raw values: `%(here)s` and `%%` as written."""
    settings = configparser.ConfigParser(interpolation=None)
    try:
        settings.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise DeployError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    return settings
