"""pytest-alembic, the plugin Alembic users run their migration tests with, on the example app and
under this suite's own pytest: a team that adopts the suite keeps its migration tests. (An app taken
over from Flask-Migrate runs them too: tests/test_install.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run
from migration_tests import BUILT_IN, PYTEST_ALEMBIC, passed, run_migration_tests

# Alembic's cookbook, "Sharing a Connection across one or more programmatic migration commands",
# handing over a Connection in or out of a transaction, or (as pytest-alembic does) an Engine.
COOKBOOK = """import sys
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect

engine = create_engine("sqlite:///cookbook.db")
config = Config("alembic.ini")
if sys.argv[1] == "engine":
    config.attributes["connection"] = engine
    command.upgrade(config, "head")
else:
    with (engine.begin() if sys.argv[1] == "transaction" else engine.connect()) as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
print(sorted(inspect(engine).get_table_names()))
"""


@pytest.fixture(scope="module")
def pytest_alembic(tmp_path_factory) -> Path:
    """pytest-alembic installed apart, once per run: in the suite's own environment its plugin would
    bind itself to tests/conftest.py, which pytest 9 cannot collect."""
    target = tmp_path_factory.mktemp("pytest-alembic")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), PYTEST_ALEMBIC]
    subprocess.run(pip, check=True, stdin=subprocess.DEVNULL)
    return target


def test_pytest_alembics_built_in_tests_pass_on_the_example_app(checkout, pytest_alembic):
    """It hands env.py an Engine as config.attributes["connection"], and autogenerates without
    command-line options, its target_metadata attribute None: env.py takes both."""
    result = run_migration_tests(sys.executable, checkout.path, env={"PYTHONPATH": str(pytest_alembic)})
    assert passed(result) == BUILT_IN, result.output
    assert "4 passed" in result.out, result.output


@pytest.mark.parametrize("handed", ["transaction", "connection", "engine"])
def test_a_connection_or_engine_handed_in_by_a_program_is_migrated(checkout, handed):
    (checkout.path / "cookbook.py").write_text(COOKBOOK)
    result = run([sys.executable, "cookbook.py", handed], checkout.path)
    assert result.code == 0, result.output
    assert result.out.splitlines()[-1] == "['alembic_version', 'post_tags', 'posts', 'tags', 'users']"
    assert not (checkout.path / "instance" / "development.db").exists()  # the database handed in, not the settings'
