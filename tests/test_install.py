"""The package as a user gets it: installed (not editable) into a fresh virtualenv outside this checkout,
set up with `python -m deploy init` on a Flask-Migrate app, then driven with that environment's own
invoke and fab. The app pins microblog's versions, near the low end of pyproject.toml's ranges
(the rest of the suite runs requirements.txt's, the high end)."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from alembic.script import ScriptDirectory
from helpers import COPY_IGNORE, PASSWORD, REPO, STDIN_PASSWORD, Remote, Result, make_database, one_error_line, run
from migration_tests import BUILT_IN, PYTEST_ALEMBIC, passed, run_migration_tests

# Miguel Grinberg's microblog pins these.
APP_PINS = ["alembic==1.12.1", "blinker==1.7.0", "Flask==3.0.0", "SQLAlchemy==2.0.23", "Flask-SQLAlchemy==3.1.1"]
# Files init writes that this checkout has too: the same text.
TEMPLATES = ["migrations/env.py", "migrations/script.py.mako", "tasks.py", "fabfile.py"]

APP = '''"""A notebook, shaped like microblog: a factory taking a config class, Flask-Migrate beside db."""
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from notebook.config import Config

db = SQLAlchemy()
migrate = Migrate()


def create_app(config_class=Config):
    app = Flask(__name__)
    app.config.from_object(config_class)
    db.init_app(app)
    migrate.init_app(app, db)
    return app


from notebook import models  # noqa: E402,F401
'''
CONFIG = """import os


class Config:
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL") or "sqlite:///notebook.db"
"""
MODELS = """import sqlalchemy as sa
import sqlalchemy.orm as so

from notebook import db


class Note(db.Model):
    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    title: so.Mapped[str] = so.mapped_column(sa.String(100))
"""
BODY = "    body: so.Mapped[str | None] = so.mapped_column(sa.Text)\n"
TAG = "    tag: so.Mapped[str | None] = so.mapped_column(sa.String(30))\n"
# A setting a Flask-Migrate user may have made in migrations/alembic.ini: init carries it over.
FILE_TEMPLATE = "file_template = %%(year)d_%%(rev)s_%%(slug)s"
# The pytest a team on these pins runs pytest-alembic 0.13 with.
APP_PYTEST = "pytest==8.4.2"

# An app shaped like Flasky: a factory taking the settings name, a config dict in config.py at the root.
FLASKY_APP = """from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from config import config

db = SQLAlchemy()


def create_app(config_name):
    app = Flask(__name__)
    app.config.from_object(config[config_name])
    db.init_app(app)
    from app import models  # noqa: F401
    return app
"""
FLASKY_CONFIG = """import os

basedir = os.path.abspath(os.path.dirname(__file__))


class Config:
    SQLALCHEMY_TRACK_MODIFICATIONS = False


class DevelopmentConfig(Config):
    SQLALCHEMY_DATABASE_URI = "sqlite:///" + os.path.join(basedir, "data-dev.sqlite")


class ProductionConfig(Config):
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL") or "sqlite:///" + os.path.join(basedir, "data.sqlite")


config = {"development": DevelopmentConfig, "production": ProductionConfig, "default": DevelopmentConfig}
"""
FLASKY_MODELS = """from app import db


class Role(db.Model):
    __tablename__ = "roles"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(64), unique=True)
"""


@dataclass
class Venv:
    path: Path

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def run(self, tool: str, *args: str, cwd: Path, stdin: str | None = None, env: dict | None = None) -> Result:
        # DATABASE_URL, as a developer's shell might have it, must not move the app's database.
        return run([self.bin(tool), *args], cwd, stdin, env={"DATABASE_URL": "", **(env or {})})

    def ok(self, tool: str, *args: str, cwd: Path, stdin: str | None = None, env: dict | None = None) -> Result:
        result = self.run(tool, *args, cwd=cwd, stdin=stdin, env=env)
        assert result.code == 0, result.output
        return result

    def init_ok(self, project: Path) -> Result:
        """`python -m deploy init`, as the README says, for the notebook."""
        return self.ok("python", "-m", "deploy", "init", "--app", "notebook:create_app", cwd=project)

    def init(self, project: Path, *args: str) -> Result:
        # The console script: in a project with its own deploy package, `python -m deploy` would run that one.
        return self.run("flask-schema-deploy", "init", *args, cwd=project)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Venv:
    """One fresh virtualenv for the module, with this checkout installed as a user would install it."""
    root = tmp_path_factory.mktemp("install")
    # pip builds in the source tree (build/, *.egg-info): a copy keeps the checkout clean.
    source = root / "flask-schema-deploy"
    shutil.copytree(REPO, source, ignore=COPY_IGNORE)
    venv = Venv(root / "venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv.path)], check=True)
    # Flask-Migrate only makes the app's history, as the user's project had it before init.
    venv.ok("pip", "install", "-q", f"{source}[mysql,postgresql]", "Flask-Migrate", *APP_PINS, cwd=root)
    return venv


def write_app(project: Path, *columns: str) -> Path:
    package = project / "notebook"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(APP)
    (package / "config.py").write_text(CONFIG)
    (package / "models.py").write_text(MODELS + "".join(columns))
    return project


def write_flasky(project: Path, factory: str = FLASKY_APP) -> Path:
    (project / "app").mkdir(parents=True, exist_ok=True)
    (project / "app" / "__init__.py").write_text(factory)
    (project / "app" / "models.py").write_text(FLASKY_MODELS)
    (project / "config.py").write_text(FLASKY_CONFIG)
    return project


def imported_by(result: Result) -> set[str]:
    """The modules a command run with PYTHONPROFILEIMPORTTIME=1 imported."""
    return {line.split("|")[-1].strip() for line in result.err.splitlines() if line.startswith("import time:")}


@pytest.fixture(scope="module")
def flask_migrate_app(venv, tmp_path_factory) -> Path:
    """The notebook with two revisions made by Flask-Migrate, its development database upgraded."""
    project = write_app(tmp_path_factory.mktemp("flask-migrate") / "notebook-app")
    flask = ["--app", "notebook", "db"]
    venv.ok("flask", *flask, "init", cwd=project)
    venv.ok("flask", *flask, "migrate", "-m", "create notes", cwd=project)
    venv.ok("flask", *flask, "upgrade", cwd=project)
    write_app(project, BODY)
    venv.ok("flask", *flask, "migrate", "-m", "add body", cwd=project)
    venv.ok("flask", *flask, "upgrade", cwd=project)
    old_ini = project / "migrations" / "alembic.ini"
    old_ini.write_text(old_ini.read_text().replace("# file_template = %%(rev)s_%%(slug)s", FILE_TEMPLATE))
    assert FILE_TEMPLATE in old_ini.read_text()
    return project


def revisions(project: Path) -> list[str]:
    """The project's revisions, base first."""
    scripts = ScriptDirectory(str(project / "migrations"))
    return [script.revision for script in reversed(list(scripts.walk_revisions()))]


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def columns(project: Path) -> list[str]:
    with sqlite3.connect(project / "instance" / "notebook.db") as db:
        return [row[1] for row in db.execute("pragma table_info(note)")]


def test_deploy_is_imported_from_the_virtualenv(venv, tmp_path):
    where = venv.ok(
        "python", "-c", "import deploy, sysconfig; print(deploy.__file__, sysconfig.get_path('purelib'))", cwd=tmp_path
    )
    module, site_packages = where.out.split()
    assert Path(module).is_relative_to(site_packages), where.out
    assert Path(site_packages).is_relative_to(venv.path)


def test_taking_over_a_flask_migrate_project(venv, flask_migrate_app, tmp_path, mariadb, sshd):
    project = tmp_path / "local"
    shutil.copytree(flask_migrate_app, project)
    history = revisions(project)
    versions = contents(project / "migrations" / "versions")

    result = venv.init_ok(project)
    for line in [
        "wrote alembic.ini",
        "carried over from migrations/alembic.ini to alembic.ini: file_template",
        "kept migrations/alembic.ini (`flask db` reads it; `invoke db.*` reads alembic.ini at the root)",
        "moved migrations/env.py -> migrations/env.py.flask-migrate",
        "wrote migrations/env.py",
        "kept migrations/script.py.mako (exists)",
        "kept migrations/versions/ (exists, 2 revisions)",
        "wrote tasks.py",
        "wrote fabfile.py",
        "wrote fabric.yaml",
    ]:
        assert line in result.out.splitlines(), result.out
    assert "`flask db` keeps working" in result.out
    assert "extensions['migrate']" in (project / "migrations" / "env.py.flask-migrate").read_text()
    assert contents(project / "migrations" / "versions") == versions
    ini = (project / "alembic.ini").read_text().splitlines()
    # The default config class of create_app(config_class=Config) is found: the fast path is the default.
    assert {"flask_app = notebook:create_app", "flask_config = notebook.config:Config"} <= set(ini)
    found = "note: flask_config = notebook.config:Config: the config class"
    assert any(line.startswith(found) for line in result.out.splitlines()), result.out

    # Flask-Migrate left the development database at its second revision: the history goes on from there.
    assert venv.ok("invoke", "db.current", cwd=project).out.startswith(history[1])
    venv.ok("invoke", "db.reset", cwd=project)
    write_app(project, BODY, TAG)
    written = Path(venv.ok("invoke", "db.revision", "-m", "add tags", cwd=project).out.splitlines()[-1])
    assert re.fullmatch(r"\d{4}_[0-9a-f]{12}_add_tags\.py", written.name), written  # the carried file_template
    operations = [line.strip() for line in written.read_text().splitlines() if "op." in line]
    assert operations == [
        "with op.batch_alter_table('note', schema=None) as batch_op:",
        "batch_op.add_column(sa.Column('tag', sa.String(length=30), nullable=True))",
        "with op.batch_alter_table('note', schema=None) as batch_op:",
        "batch_op.drop_column('tag')",
    ]
    head = revisions(project)[-1]
    assert revisions(project) == [*history, head]
    venv.ok("invoke", "db.upgrade", cwd=project)
    assert "tag" in columns(project)
    venv.ok("invoke", "db.downgrade", cwd=project)
    assert "tag" not in columns(project)
    assert venv.ok("invoke", "db.current", cwd=project).out.startswith(history[1])

    # Production: the server's checkout is a copy of this one, with the fresh virtualenv as its Python.
    server = tmp_path / "server"
    shutil.copytree(project, server, ignore=shutil.ignore_patterns("instance", "__pycache__"))
    database = make_database(mariadb)
    settings = server / "instance" / "production.cfg"
    settings.parent.mkdir()
    settings.write_text(
        f"SQLALCHEMY_DATABASE_URI = {database.app_url!r}\nSQLALCHEMY_ALEMBIC_URI = {database.migration_url!r}\n"
    )
    fab_config = tmp_path / "fab.yaml"
    # Remote.configure writes Fabric's settings for the loopback sshd; it needs only the server's path.
    checkouts = {"local": SimpleNamespace(path=project), "server": SimpleNamespace(path=server)}
    Remote(**checkouts, database=database, sshd=sshd, config=fab_config).configure(python=venv.bin("python"))
    upgrade = venv.ok("fab", "-f", str(fab_config), "prod", "db.upgrade", "--yes", cwd=project, stdin=STDIN_PASSWORD)
    assert "3 pending" in upgrade.out, upgrade.output
    assert PASSWORD not in upgrade.output
    assert database.version() == head
    assert "tag" in {row[0] for row in database.query("SHOW COLUMNS FROM note")}


def test_flask_db_keeps_working_beside_the_tasks_after_the_takeover(venv, flask_migrate_app, tmp_path):
    """A team moves over one person at a time: Flask-Migrate's CLI and the tasks share one history."""
    project = tmp_path / "project"
    shutil.copytree(flask_migrate_app, project)
    history = revisions(project)
    venv.init_ok(project)
    flask = ["--app", "notebook", "db"]
    assert history[1] in venv.ok("flask", *flask, "current", cwd=project).out
    write_app(project, BODY, TAG)
    venv.ok("flask", *flask, "migrate", "-m", "add tags", cwd=project)
    head = revisions(project)[-1]
    assert revisions(project) == [*history, head]
    (written,) = (project / "migrations" / "versions").glob("*add_tags.py")
    assert "batch_op.add_column(sa.Column('tag'" in written.read_text()
    venv.ok("flask", *flask, "upgrade", cwd=project)
    assert "tag" in columns(project)
    assert venv.ok("invoke", "db.current", cwd=project).out.startswith(head)
    venv.ok("invoke", "db.downgrade", cwd=project)
    assert history[1] in venv.ok("flask", *flask, "current", cwd=project).out
    assert "tag" not in columns(project)


def test_pytest_alembics_built_in_tests_pass_on_a_taken_over_app(venv, flask_migrate_app, tmp_path):
    """The migration tests a Flask-Migrate team runs in CI (pytest-alembic, pytest 8) keep passing."""
    project = tmp_path / "project"
    shutil.copytree(flask_migrate_app, project)
    venv.init_ok(project)
    venv.ok("pip", "install", "-q", APP_PYTEST, PYTEST_ALEMBIC, cwd=project)
    result = run_migration_tests(venv.bin("python"), project, env={"DATABASE_URL": ""})
    assert passed(result) == BUILT_IN, result.output


def test_init_gives_a_factory_that_needs_the_settings_name_its_argument(venv, tmp_path):
    """create_app(config_name) and a config dict, as in Flasky: init writes the flask_app that loads
    and the config dict as flask_config; commands that need no models then neither import them nor
    build the app."""
    project = write_flasky(tmp_path / "flasky")
    result = venv.ok("python", "-m", "deploy", "init", "--app", "app:create_app", cwd=project)
    ini = (project / "alembic.ini").read_text().splitlines()
    assert {"flask_app = app:create_app('{settings}')", "flask_config = config:config"} <= set(ini), result.out
    notes = [line for line in result.out.splitlines() if line.startswith("note: flask_")]
    assert notes[0].startswith("note: flask_app = app:create_app('{settings}'): app:create_app needs an argument")
    assert notes[1].startswith("note: flask_config = config:config: the dict of config classes")
    venv.ok("invoke", "db.revision", "-m", "create roles", cwd=project)
    venv.ok("invoke", "db.upgrade", cwd=project)
    current = venv.ok("invoke", "db.current", cwd=project, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert current.out.startswith(revisions(project)[-1])
    assert (project / "data-dev.sqlite").is_file()  # the config dict's URL, as the app itself has it
    imported = imported_by(current)
    assert "alembic" in imported  # the probe works...
    assert not {"app.models", "flask_sqlalchemy"} & imported  # ...and neither the models nor the app were loaded


def test_init_writes_no_flask_config_when_the_factory_changes_the_database_settings(venv, tmp_path):
    """A config object that would give another database than the app's own is not taken."""
    project = write_app(tmp_path / "project")
    factory = project / "notebook" / "__init__.py"
    own_url = '    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///elsewhere.db"\n'
    factory.write_text(factory.read_text().replace("    db.init_app(app)\n", own_url + "    db.init_app(app)\n"))
    result = venv.init_ok(project)
    assert "flask_config" not in result.out
    ini = (project / "alembic.ini").read_text().splitlines()
    assert "# flask_config = yourapp.config:configs" in ini and not any(line.startswith("flask_config") for line in ini)


def test_the_postgresql_extra_migrates_a_postgresql_production_database(venv, tmp_path, pg_database):
    """`pip install flask-schema-deploy[postgresql]` brings psycopg: the installed suite upgrades a
    PostgreSQL database with the password typed (here piped), its backup by pg_dump included."""
    project = write_app(tmp_path / "project")
    venv.init_ok(project)
    venv.ok("invoke", "db.revision", "-m", "create notes", cwd=project)
    (project / "instance" / "production.cfg").write_text(
        f"SQLALCHEMY_DATABASE_URI = {pg_database.app_url!r}\nSQLALCHEMY_ALEMBIC_URI = {pg_database.migration_url!r}\n"
    )
    production = {"DATABASE_URL": "", "FLASK_CONFIG": "production"}
    result = run([venv.bin("invoke"), "db.upgrade", "--yes"], project, STDIN_PASSWORD, env=production)
    assert result.code == 0, result.output
    assert "backup:" in result.out and PASSWORD not in result.output
    assert pg_database.version() == revisions(project)[-1]


def own_deploy_package(project: Path) -> tuple[list[str], str]:
    (project / "deploy").mkdir()
    (project / "deploy" / "__init__.py").write_text("")
    return ["--app", "notebook:create_app"], "deploy/__init__.py would shadow the deploy library"


def own_deploy_module(project: Path) -> tuple[list[str], str]:
    (project / "deploy.py").write_text("")
    return ["--app", "notebook:create_app"], "deploy.py would shadow the deploy library"


def no_app(project: Path) -> tuple[list[str], str]:
    return [], "the following arguments are required: --app"


def not_a_directory(project: Path) -> tuple[list[str], str]:
    return ["--app", "notebook:create_app", "--dir", "nowhere"], "nowhere is not a directory"


def an_app_that_does_not_load(project: Path) -> tuple[list[str], str]:
    return ["--app", "notebook:make_app"], "--app 'notebook:make_app' does not load, as every command would load it:"


def a_factory_of_two_arguments(project: Path) -> tuple[list[str], str]:
    write_flasky(project, FLASKY_APP.replace("def create_app(config_name):", "def create_app(config_name, region):"))
    return ["--app", "app:create_app"], (
        "--app 'app:create_app': create_app() needs arguments (config_name, region): give them as for "
        "`flask --app`, e.g. --app \"app:create_app('{settings}', ...)\""
    )


REFUSALS = [own_deploy_package, own_deploy_module, no_app, not_a_directory]
REFUSALS += [an_app_that_does_not_load, a_factory_of_two_arguments]


def project_files(project: Path) -> list[Path]:
    """What the project holds, but for the byte code Python caches when init imports the app to load it."""
    return sorted(path for path in project.rglob("*") if "__pycache__" not in path.parts)


@pytest.mark.parametrize("case", REFUSALS)
def test_init_refuses_in_one_line_and_writes_nothing(venv, tmp_path, case):
    project = write_app(tmp_path / "project")
    args, fragment = case(project)
    before = project_files(project)
    line = one_error_line(venv.init(project, *args))
    assert line.startswith("error: ") and fragment in line, line
    assert project_files(project) == before


def test_init_refuses_flask_migrates_multi_database_template(venv, tmp_path):
    project = write_app(tmp_path / "project")
    venv.ok("flask", "--app", "notebook", "db", "init", "--multidb", cwd=project)
    before = project_files(project)
    assert "multi-database" in one_error_line(venv.init(project, "--app", "notebook:create_app"))
    assert project_files(project) == before


USER_TASKS = '''from invoke import task


@task
def hello(c):
    """Say hello."""
    print("hello")
'''
USER_FABFILE = '''from fabric import task
from invoke import Collection


@task
def uptime(c):
    """Show the server's uptime."""
    c.run("uptime")


ns = Collection(uptime)
'''


def test_init_beside_a_projects_own_tasks_prints_the_lines_to_add(venv, tmp_path):
    """tasks.py and fabfile.py stay as they are; the printed lines, added, give both sets of tasks."""
    project = write_app(tmp_path / "project")
    (project / "tasks.py").write_text(USER_TASKS)
    (project / "fabfile.py").write_text(USER_FABFILE)
    result = venv.init_ok(project)
    assert (project / "tasks.py").read_text() == USER_TASKS
    assert (project / "fabfile.py").read_text() == USER_FABFILE
    added = {
        name: re.findall(rf"^add to {name}: (.*)$", result.out, re.MULTILINE) for name in ("tasks.py", "fabfile.py")
    }
    assert added["tasks.py"] == [
        "from deploy.local_tasks import db_tasks",
        "from invoke import Collection",
        "namespace = Collection(hello, db_tasks(__file__))  # at the end",
    ]
    assert added["fabfile.py"][:2] == [
        "from deploy.remote_tasks import fab_tasks",
        "deploy_tasks = fab_tasks(__file__)",
    ]
    for name, lines in added.items():
        with (project / name).open("a") as file:
            file.write("\n".join(lines) + "\n")
    listed = venv.ok("invoke", "--list", cwd=project).out + venv.ok("fab", "--list", cwd=project).out
    for task in ("hello", "db.revision", "uptime", "prod", "db.upgrade"):
        assert re.search(rf"^  {re.escape(task)}\s", listed, re.MULTILINE), listed


def test_init_then_a_first_revision_in_a_new_project(venv, tmp_path):
    project = write_app(tmp_path / "project")
    first = venv.init_ok(project)
    assert "wrote migrations/versions/" in first.out.splitlines()
    again = venv.init_ok(project)
    assert [line.split()[0] for line in again.out.splitlines() if not line.startswith(("note:", "next:"))] == [
        "kept"
    ] * 7, again.out
    venv.ok("invoke", "db.revision", "-m", "create notes", cwd=project)
    venv.ok("invoke", "db.upgrade", cwd=project)
    assert columns(project) == ["id", "title"]
    assert len(revisions(project)) == 1


def test_init_takes_over_a_plain_alembic_project_leaving_its_alembic_ini(venv, tmp_path):
    project = write_app(tmp_path / "project")
    venv.ok("alembic", "init", "alembic", cwd=project)
    ini = project / "alembic.ini"
    theirs = ini.read_text()
    result = venv.init_ok(project)
    for line in [
        "kept alembic.ini (exists)",
        "add to alembic.ini [alembic]: flask_app = notebook:create_app",
        "add to alembic.ini [alembic]: flask_config = notebook.config:Config",
        "moved alembic/env.py -> alembic/env.py.alembic",
        "wrote alembic/env.py",
        "kept alembic/script.py.mako (exists)",
    ]:
        assert line in result.out.splitlines(), result.out
    assert ini.read_text() == theirs
    ini.write_text(theirs.replace("[alembic]\n", "[alembic]\nflask_app = notebook:create_app\n", 1))
    venv.ok("invoke", "db.revision", "-m", "create notes", cwd=project)
    assert len(list((project / "alembic" / "versions").glob("*_create_notes.py"))) == 1


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_templates_are_this_checkouts_own_files(name):
    """What init writes is what this checkout runs on: the two must not drift apart."""
    assert (REPO / "deploy" / "templates" / name).read_text() == (REPO / name).read_text()
