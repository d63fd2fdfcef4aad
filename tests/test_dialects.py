"""The dialect layer, in-process: every registered database answers everything the base class asks,
the registry finds each by SQLAlchemy's dialect name, and no module outside it branches on a name."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pymysql
import pytest
from alembic.ddl.impl import DefaultImpl
from sqlalchemy import create_engine, make_url

from deploy import database, dialects
from deploy.dialects import Dialect, dialect_for
from deploy.dialects.mariadb import MariaDB
from deploy.dialects.postgresql import PostgreSQL
from deploy.dialects.sqlite import SQLite
from deploy.errors import DeployError

REGISTERED = sorted({type(dialect) for dialect in dialects.registry().values()}, key=lambda cls: cls.__name__)
# What the base class asks of a database besides its abstract methods: answers given as class attributes.
REQUIRED_ATTRIBUTES = {
    "transactional_ddl": bool,
    "backup_suffix": str,
    "backup_incomplete": str,
    "server_programs": frozenset,
}


def test_the_base_class_states_what_a_database_must_provide():
    assert inspect.isabstract(Dialect)
    # What every database must answer, its backups' dump, load and completeness check among them.
    assert {"explain", "dump", "load", "complete"} <= Dialect.__abstractmethods__
    # And how many more connections its server accepts, which a fleet keeps within.
    assert "spare_connections" in Dialect.__abstractmethods__
    assert set(dialects.base.ANSWERS) == set(REQUIRED_ATTRIBUTES)


@pytest.mark.parametrize("dialect", REGISTERED, ids=lambda cls: cls.__name__)
def test_every_registered_dialect_provides_everything_the_base_class_requires(dialect):
    assert not inspect.isabstract(dialect), dialect.__abstractmethods__
    for method in Dialect.__abstractmethods__:
        # Its own implementation (or a registered ancestor's), not the base's declaration.
        implementation = inspect.getattr_static(dialect, method)
        assert implementation is not inspect.getattr_static(Dialect, method), method
        assert not getattr(implementation, "__isabstractmethod__", False), method
    for attribute, kind in REQUIRED_ATTRIBUTES.items():
        assert isinstance(getattr(dialect, attribute), kind), attribute
    assert dialect.names and all(dialects.registry()[name].__class__ is dialect for name in dialect.names)


def test_a_dialect_that_lacks_an_answer_is_refused_when_its_module_is_imported():
    with pytest.raises(TypeError) as excinfo:

        class Unfinished(Dialect):
            names = ("unfinished",)
            transactional_ddl = False

            def explain(self, orig, url, where):
                return where

    assert "the Unfinished dialect does not provide" in str(excinfo.value)
    assert "migration_lock" in str(excinfo.value) and "backup_suffix" in str(excinfo.value)
    assert "dump" in str(excinfo.value) and "backup_incomplete" in str(excinfo.value)
    assert dialects.find("unfinished") is None


@pytest.mark.parametrize(
    "name, dialect",
    [("mysql", MariaDB), ("mariadb", MariaDB), ("postgresql", PostgreSQL), ("sqlite", SQLite)],
)
def test_the_registry_maps_sqlalchemys_dialect_names(name, dialect):
    assert type(dialect_for(name)) is dialect
    # A URL by its backend (whatever the driver), and a connection or engine by its dialect.
    assert type(dialect_for(make_url(f"{name}+somedriver://u@h/db"))) is dialect
    assert dialect_for(make_url(f"{name}://u@h/db")) is dialects.registry()[name]


@pytest.mark.parametrize(
    "url, shared",
    [
        ("mysql+pymysql://u@h/db", True),
        ("mariadb+pymysql://u@h/db?ssl_ca=/ca.pem", True),
        ("mysql+mysqldb://u@h/db", False),
        ("postgresql+psycopg://u@h/db", False),
        ("sqlite:///app.db", False),
    ],
)
def test_only_pymysql_engines_get_the_driver_that_shares_a_tls_context(url, shared):
    options = dialect_for(make_url(url)).engine_options(make_url(url))
    if not shared:
        assert options == {}
        return
    driver = options["module"]
    assert issubclass(driver.connect, pymysql.connections.Connection) and driver.connect is not pymysql.connect
    assert driver.Error is pymysql.Error and driver.__name__ == "pymysql"  # what SQLAlchemy asks of it


def test_the_applications_engine_options_win_over_the_dialects():
    url = make_url("mysql+pymysql://u@h/db")
    assert database.engine_options(url, {"module": pymysql})["module"] is pymysql
    assert database.engine_options(url, {"pool_pre_ping": True})["module"] is not pymysql


def test_engines_and_connections_find_their_dialect(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        assert type(dialect_for(engine)) is SQLite
        with engine.connect() as connection:
            assert type(dialect_for(connection)) is SQLite
    finally:
        engine.dispose()


def test_a_database_no_dialect_serves_is_one_line_naming_what_is_not_supported():
    with pytest.raises(DeployError) as excinfo:
        dialect_for(make_url("oracle://u@h/db"), "the migration lock")
    assert str(excinfo.value) == (
        "the migration lock is not supported on oracle databases (supported: mariadb, mysql, postgresql, sqlite)"
    )
    assert dialects.find(make_url("oracle://u@h/db")) is None


@pytest.mark.parametrize("name", sorted(dialects.registry()))
def test_backup_suffixes_tell_every_dialect_apart(name):
    """A backup file's suffix says whose it is: no suffix ends another's."""
    mine = dialect_for(name).backup_suffix
    others = {dialect.backup_suffix for dialect in dialects.registry().values() if dialect is not dialect_for(name)}
    assert mine.endswith(".gz") and not any(mine.endswith(other) or other.endswith(mine) for other in others)


@pytest.mark.parametrize("name", sorted(dialects.registry()))
def test_transactional_ddl_is_what_alembic_runs_it_as(name):
    sqlalchemy_dialect = make_url(f"{name}://").get_dialect()()
    assert dialect_for(name).transactional_ddl is DefaultImpl.get_by_dialect(sqlalchemy_dialect).transactional_ddl
    assert dialect_for(name).transactional_ddl is (name == "postgresql")


# -- no dialect-name branching outside deploy/dialects ----------------------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
NAMES = {"mysql", "mariadb", "postgresql", "sqlite"}


def _holds_a_name(node: ast.AST) -> bool:
    """A dialect name as a string literal, or a tuple, list or set literal holding one."""
    if isinstance(node, ast.Constant):
        return node.value in NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_holds_a_name(element) for element in node.elts)
    return False


def dialect_branches(source: str) -> list[int]:
    """The lines that choose by a dialect name: compare one (==, !=, in, not in, startswith, endswith,
    match), key a dict by one, or keep one in a variable to compare later."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            hit = any(_holds_a_name(side) for side in (node.left, *node.comparators))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            hit = node.func.attr in ("startswith", "endswith") and any(map(_holds_a_name, node.args))
        elif isinstance(node, ast.Dict):
            hit = any(key is not None and _holds_a_name(key) for key in node.keys)
        elif isinstance(node, ast.MatchValue):
            hit = _holds_a_name(node.value)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            hit = node.value is not None and _holds_a_name(node.value)
        else:
            continue
        if hit:
            found.append(node.lineno)
    return found


@pytest.mark.parametrize(
    "source",
    [
        'if url.get_backend_name() == "postgresql":\n    pass',
        'if connection.dialect.name != "sqlite":\n    pass',
        'if name in ("mysql", "mariadb"):\n    pass',
        'ok = "postgresql" in names',
        'if url.drivername.startswith("mysql"):\n    pass',
        'if url.drivername.startswith(("mariadb", "mysql")):\n    pass',
        'TABLE = {"sqlite": 1}',
        'MARIADB = {"mysql", "mariadb"}',
        'POSTGRESQL = "postgresql"',
        'match name:\n    case "mariadb":\n        pass',
    ],
)
def test_the_scan_sees_every_way_of_branching_on_a_dialect_name(source):
    assert dialect_branches(source) == [1 if "match" not in source else 2]


@pytest.mark.parametrize(
    "source",
    [
        'url = "sqlite:///app.db"',
        'suffix = ".sqlite.gz"',
        "dialect = dialect_for(url)",
        'describe("postgresql server")',
    ],
)
def test_the_scan_leaves_other_strings_alone(source):
    assert dialect_branches(source) == []


def test_no_module_outside_the_dialects_branches_on_a_dialect_name():
    found = {
        f"{path.relative_to(DEPLOY.parent)}:{line}": path.read_text().splitlines()[line - 1].strip()
        for path in sorted(DEPLOY.rglob("*.py"))
        if "dialects" not in path.relative_to(DEPLOY).parts
        for line in dialect_branches(path.read_text())
    }
    assert not found, "ask the dialect (deploy/dialects) instead of comparing its name:\n" + "\n".join(
        f"{where}: {line}" for where, line in found.items()
    )


def test_the_registry_is_ordered_by_name_whatever_was_imported_first():
    """A fresh process that imports one dialect's module before the others lists them in the same order."""
    code = (
        "import deploy.dialects.sqlite, deploy.dialects.postgresql\n"
        "from deploy.dialects import registry\n"
        "print(' '.join(registry()))"
    )
    repository = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repository, check=True)
    assert done.stdout.split() == sorted(dialects.registry()) == ["mariadb", "mysql", "postgresql", "sqlite"]


@pytest.mark.parametrize(
    ("url", "loaded"),
    [("sqlite:///x.db", ["sqlite"]), ("mysql+pymysql://u@h/db", ["mariadb"]), ("postgresql://u@h/db", ["postgresql"])],
)
def test_a_lookup_loads_only_its_own_dialect_module(url, loaded):
    """A command on one database pays for importing that database's module, not every one's."""
    code = (
        "import sys\n"
        "from sqlalchemy.engine import make_url\n"
        "from deploy.dialects import dialect_for\n"
        f"dialect_for(make_url({url!r}))\n"
        "print(' '.join(sorted(m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('deploy.dialects.')"
        " and m.rsplit('.', 1)[1] in ('mariadb', 'postgresql', 'sqlite'))))"
    )
    repository = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repository, check=True)
    assert done.stdout.split() == loaded
