"""One benchmark project: an app in a temporary directory, set up three ways over the same models and
the very same revision files (migrations/versions/):

- ours: the checkout's layout (alembic.ini at the root, migrations/env.py calling the library), run as
  `python -m invoke db.*` with FLASK_CONFIG=development;
- alembic: a plain Alembic project, `plain.ini` + `plain_alembic/env.py` (Alembic's generic template:
  the URL in the ini, target_metadata imported from the models, compare_type, render_as_batch,
  transaction_per_migration as ours), version_locations pointing at migrations/versions;
- flask-migrate: `fm_app.py` (the same app factory plus `Migrate(app, db)`) and `fm_migrations/`
  from `flask db init`, version_locations pointing at migrations/versions.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import MetaData, create_engine, pool

from . import generate
from ._tests import COPY_IGNORE, REPO, make_database

PYTHON = sys.executable
BENCH_PASSWORD = "bench-pw"

PLAIN_ENV = '''"""Alembic's generic env.py, with the app's models as target_metadata (benchmark baseline)."""
from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool

from {models_module} import db

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)
target_metadata = db.metadata


def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, dialect_opts={{"paramstyle": "named"}})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    connectable = engine_from_config(config.get_section(config.config_ini_section, {{}}), prefix="sqlalchemy.",
                                     poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True,
                          render_as_batch=True, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

PLAIN_RESET = '''"""db.reset's plain-Alembic equivalent, one process: drop every table, create_all, stamp head."""
from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, create_engine, pool

from {models_module} import db

config = Config("plain.ini")
engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
with engine.begin() as connection:
    existing = MetaData()
    existing.reflect(connection)
    existing.drop_all(connection)
    db.metadata.create_all(connection)
command.stamp(config, "head")
'''

FM_APP = '''"""The same app with Flask-Migrate (benchmark baseline): `flask --app fm_app db ...`."""
from flask_migrate import Migrate

from {package} import create_app
from {package}.models import db

app = create_app()
Migrate(app, db, directory="fm_migrations")
'''

FM_RESET = '''"""db.reset's Flask-Migrate equivalent, one process: drop every table, create_all, stamp()."""
from flask_migrate import stamp
from sqlalchemy import MetaData

from fm_app import app, db

with app.app_context():
    existing = MetaData()
    existing.reflect(db.engine)
    existing.drop_all(db.engine)
    db.create_all()
    stamp()
'''

EXAMPLE_COLUMN = "    name: Mapped[str] = mapped_column(String(50), unique=True)\n"
EXAMPLE_CHANGED = "    name: Mapped[str] = mapped_column(String(60), unique=True)\n"


# The library as the generated apps import it: a byte-compiled copy of this checkout's deploy/, as pip
# would install it (prepare_library). The example app's copy has its own deploy/ beside it.
LIB: Path | None = None
# Not passed on: the settings switch (set per tool), and PYTHONDONTWRITEBYTECODE (a developer's shell
# may set it; without bytecode caches every cold run would compile the models and revisions again).
DROPPED = ("FLASK_CONFIG", "FLASK_APP", "DATABASE_URL", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH")


def prepare_library(scratch: Path) -> None:
    global LIB
    LIB = scratch / "lib"
    shutil.copytree(REPO / "deploy", LIB / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
    compile_tree(LIB)


def compile_tree(path: Path) -> None:
    """Bytecode caches, as an installed package and an app that has run once have them."""
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(path)], check=True, stdout=subprocess.DEVNULL)


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in DROPPED}
    return {**base, "FLASK_CONFIG": "development", **({"PYTHONPATH": str(LIB)} if LIB else {}), **extra}


def check_run(argv: list[str], cwd: Path, stdin: str | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env(), input=stdin, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}) in {cwd}:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


@dataclass
class Project:
    path: Path
    label: str  # "example" or "300m/200r"
    models: int
    revisions: int
    backend: str  # sqlite | mariadb
    url: str = ""
    models_file: Path = field(init=False)
    original_models: str = field(init=False, default="")

    @property
    def package(self) -> str:
        return "exampleapp" if self.label == "example" else generate.PACKAGE

    @property
    def versions(self) -> Path:
        return self.path / "migrations" / "versions"

    def __post_init__(self) -> None:
        self.models_file = self.path / self.package / "models.py"

    # -- commands ---------------------------------------------------------------------------------

    def argv(self, tool: str, command: str) -> list[str]:
        force = ["--force"] if self.backend != "sqlite" else []
        table = {
            "ours": {
                "db.current": ["-m", "invoke", "db.current"],
                "db.upgrade (at head)": ["-m", "invoke", "db.upgrade"],
                "db.upgrade (empty)": ["-m", "invoke", "db.upgrade"],
                "db.reset": ["-m", "invoke", "db.reset", *force],
                "db.revision": ["-m", "invoke", "db.revision", "-m", "bench change"],
            },
            "alembic": {
                "db.current": ["-m", "alembic", "-c", "plain.ini", "current"],
                "db.upgrade (at head)": ["-m", "alembic", "-c", "plain.ini", "upgrade", "head"],
                "db.upgrade (empty)": ["-m", "alembic", "-c", "plain.ini", "upgrade", "head"],
                "db.reset": ["plain_reset.py"],
                "db.revision": ["-m", "alembic", "-c", "plain.ini", "revision", "--autogenerate", "-m", "bench change"],
            },
            "flask-migrate": {
                "db.current": ["-m", "flask", "--app", "fm_app", "db", "current"],
                "db.upgrade (at head)": ["-m", "flask", "--app", "fm_app", "db", "upgrade"],
                "db.upgrade (empty)": ["-m", "flask", "--app", "fm_app", "db", "upgrade"],
                "db.reset": ["fm_reset.py"],
                "db.revision": ["-m", "flask", "--app", "fm_app", "db", "migrate", "-m", "bench change"],
            },
        }
        return [PYTHON, *table[tool][command]]

    # -- database state between runs --------------------------------------------------------------

    def engine(self):
        return create_engine(self.url, poolclass=pool.NullPool)

    def drop_everything(self) -> None:
        engine = self.engine()
        with engine.begin() as connection:
            existing = MetaData()
            existing.reflect(connection)
            existing.drop_all(connection)
        engine.dispose()

    def version(self) -> str | None:
        engine = self.engine()
        with engine.connect() as connection:
            rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version").fetchall()
        engine.dispose()
        return rows[0][0] if rows else None

    def change_models(self) -> None:
        self.original_models = self.models_file.read_text()
        if self.label == "example":
            assert EXAMPLE_COLUMN in self.original_models
            self.models_file.write_text(self.original_models.replace(EXAMPLE_COLUMN, EXAMPLE_CHANGED, 1))
        else:
            generate.change_one_column(self.path)

    def restore_models(self) -> None:
        if self.original_models:
            self.models_file.write_text(self.original_models)

    def revision_files(self) -> set[Path]:
        return set(self.versions.glob("*.py"))


def _ini(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.optionxform = str  # keep keys as written
    parser.read(path)
    return parser


def _write_ini(parser: configparser.RawConfigParser, path: Path) -> None:
    with path.open("w") as file:
        parser.write(file)


def add_baselines(project: Project) -> None:
    """The plain-Alembic and Flask-Migrate set-ups beside ours, over migrations/versions."""
    root = project.path
    ours = _ini(root / "alembic.ini")
    mine = dict(ours["alembic"])
    hooks = dict(ours["post_write_hooks"]) if ours.has_section("post_write_hooks") else None

    # Plain Alembic.
    plain_dir = root / "plain_alembic"
    plain_dir.mkdir()
    (plain_dir / "env.py").write_text(PLAIN_ENV.format(models_module=f"{project.package}.models"))
    shutil.copy(root / "migrations" / "script.py.mako", plain_dir / "script.py.mako")
    plain = _ini(root / "alembic.ini")
    for key in ("flask_app", "flask_config"):
        plain.remove_option("alembic", key)
    plain["alembic"]["script_location"] = "%(here)s/plain_alembic"
    plain["alembic"]["version_locations"] = "%(here)s/migrations/versions"
    plain["alembic"]["sqlalchemy.url"] = project.url.replace("%", "%%")
    _write_ini(plain, root / "plain.ini")
    (root / "plain_reset.py").write_text(PLAIN_RESET.format(models_module=f"{project.package}.models"))

    # Flask-Migrate.
    (root / "fm_app.py").write_text(FM_APP.format(package=project.package))
    check_run([PYTHON, "-m", "flask", "--app", "fm_app", "db", "init", "-d", "fm_migrations"], root)
    fm_ini_path = root / "fm_migrations" / "alembic.ini"
    fm = _ini(fm_ini_path)
    fm["alembic"]["version_locations"] = "%(here)s/../migrations/versions"
    fm["alembic"]["path_separator"] = "os"
    if "file_template" in mine:
        fm["alembic"]["file_template"] = mine["file_template"]
    if hooks is not None:  # the same post-write hook as ours: the same work
        fm["post_write_hooks"] = hooks
    _write_ini(fm, fm_ini_path)
    (root / "fm_reset.py").write_text(FM_RESET)


def example_project(path: Path, backend: str, url: str) -> Project:
    shutil.copytree(REPO, path, ignore=COPY_IGNORE)
    project = Project(path, "example", 4, len(list((path / "migrations" / "versions").glob("*.py"))), backend, url)
    _finish(project)
    return project


def generated_project(path: Path, models: int, revisions: int, backend: str, url: str) -> Project:
    """The Flask-Migrate project first (flask db init, the history), then `python -m deploy init`."""
    path.mkdir(parents=True)
    generate.write_app(path, models, revisions)
    project = Project(path, f"{models}m/{revisions}r", models, revisions, backend, url)
    (path / "fm_app.py").write_text(FM_APP.format(package=generate.PACKAGE).replace("fm_migrations", "migrations"))
    check_run([PYTHON, "-m", "flask", "--app", "fm_app", "db", "init"], path)
    generate.write_history(path / "migrations" / "versions", models, revisions)
    (path / "fm_app.py").unlink()
    check_run([PYTHON, "-m", "deploy", "init", "--app", f"{generate.PACKAGE}:create_app"], path)
    # init finds the config dict the factory uses and writes it as flask_config: commands that need no
    # models neither import them nor build the app. The measurement is of what init writes.
    wrote = f"flask_config = {generate.PACKAGE}.config:configs\n"
    assert wrote in (path / "alembic.ini").read_text(), "deploy init no longer writes flask_config: see project.py"
    _finish(project)
    return project


def _finish(project: Project) -> None:
    instance = project.path / "instance"
    instance.mkdir(exist_ok=True)
    if project.backend == "sqlite":
        project.url = f"sqlite:///{instance / 'development.db'}"
    else:
        (instance / "development.cfg").write_text(f"SQLALCHEMY_DATABASE_URI = {project.url!r}\n")
    add_baselines(project)
    compile_tree(project.path)


def mariadb_url(server) -> str:
    database = make_database(server, password=BENCH_PASSWORD)
    return f"mysql+pymysql://{database.migration_user}:{BENCH_PASSWORD}@127.0.0.1:{server.port}/{database.name}"
