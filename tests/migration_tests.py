"""pytest-alembic's four built-in migration tests, run on a project as its team runs them in CI:
in a pytest of their own (a subprocess), on the engine pytest-alembic hands env.py."""

from __future__ import annotations

from pathlib import Path

from helpers import Result, run

PYTEST_ALEMBIC = "pytest-alembic==0.13.1"
# pytest-alembic 0.13 binds its built-in tests to tests/conftest.py through a collector that pytest 9
# cannot build; with that binding off (an empty pytest_alembic_enabled), importing the tests, as
# its documentation also shows, works under pytest 8 and 9 alike.
INI = "[pytest]\npytest_alembic_enabled =\n"
TESTS = """from pytest_alembic.tests import (  # noqa: F401
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
"""
BUILT_IN = ["test_single_head_revision", "test_upgrade", "test_model_definitions_match_ddl", "test_up_down_consistency"]


def run_migration_tests(python: str, project: Path, env: dict[str, str] | None = None) -> Result:
    """pytest-alembic's built-in tests on `project` (its alembic.ini), with the interpreter `python`."""
    folder = project / "migration_tests"
    folder.mkdir(exist_ok=True)
    (folder / "pytest.ini").write_text(INI)
    (folder / "test_migrations.py").write_text(TESTS)
    # -c: that folder is the root, so the project's own pytest.ini and conftest.py stay out of it.
    argv = [python, "-m", "pytest", "-c", str(folder / "pytest.ini"), "-p", "no:cacheprovider", "-v", str(folder)]
    return run(argv, project, env=env)


def passed(result: Result) -> list[str]:
    """The built-in tests that passed."""
    return [name for name in BUILT_IN if f"test_migrations.py::{name} PASSED" in result.out]
