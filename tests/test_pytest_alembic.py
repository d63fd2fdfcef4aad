"""pytest-alembic, the plugin Alembic users run their migration tests with, on the example app and
under this suite's own pytest: a team that adopts the suite keeps its migration tests. (An app taken
over from Flask-Migrate runs them too: tests/test_install.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from migration_tests import BUILT_IN, PYTEST_ALEMBIC, passed, run_migration_tests


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
