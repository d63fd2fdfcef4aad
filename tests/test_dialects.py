"""The dialect layer, in-process: every registered database answers everything the base class asks,
the registry finds each by SQLAlchemy's dialect name, and no module outside it branches on a name."""

from __future__ import annotations

import inspect

import pytest
from alembic.ddl.impl import DefaultImpl
from sqlalchemy import create_engine, make_url

from deploy import dialects
from deploy.dialects import Dialect, dialect_for
from deploy.dialects.mariadb import MariaDB
from deploy.dialects.postgresql import PostgreSQL
from deploy.dialects.sqlite import SQLite
from deploy.errors import DeployError

REGISTERED = sorted({type(dialect) for dialect in dialects.registry().values()}, key=lambda cls: cls.__name__)
# What the base class asks of a database besides its abstract methods: answers given as class attributes.
REQUIRED_ATTRIBUTES = ("transactional_ddl",)


def test_the_base_class_states_what_a_database_must_provide():
    assert inspect.isabstract(Dialect)
    assert {"explain"} <= Dialect.__abstractmethods__


@pytest.mark.parametrize("dialect", REGISTERED, ids=lambda cls: cls.__name__)
def test_every_registered_dialect_provides_everything_the_base_class_requires(dialect):
    assert not inspect.isabstract(dialect), dialect.__abstractmethods__
    for method in Dialect.__abstractmethods__:
        # Its own implementation (or a registered ancestor's), not the base's declaration.
        implementation = inspect.getattr_static(dialect, method)
        assert implementation is not inspect.getattr_static(Dialect, method), method
        assert not getattr(implementation, "__isabstractmethod__", False), method
    for attribute in REQUIRED_ATTRIBUTES:
        assert isinstance(getattr(dialect, attribute), bool), attribute
    assert dialect.names and all(dialects.registry()[name].__class__ is dialect for name in dialect.names)


@pytest.mark.parametrize(
    "name, dialect",
    [("mysql", MariaDB), ("mariadb", MariaDB), ("postgresql", PostgreSQL), ("sqlite", SQLite)],
)
def test_the_registry_maps_sqlalchemys_dialect_names(name, dialect):
    assert type(dialect_for(name)) is dialect
    # A URL by its backend (whatever the driver), and a connection or engine by its dialect.
    assert type(dialect_for(make_url(f"{name}+somedriver://u@h/db"))) is dialect
    assert dialect_for(make_url(f"{name}://u@h/db")) is dialects.registry()[name]


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
        "the migration lock is not supported on oracle databases (supported: mysql, mariadb, postgresql, sqlite)"
    )
    assert dialects.find(make_url("oracle://u@h/db")) is None


@pytest.mark.parametrize("name", sorted(dialects.registry()))
def test_transactional_ddl_is_what_alembic_runs_it_as(name):
    sqlalchemy_dialect = make_url(f"{name}://").get_dialect()()
    assert dialect_for(name).transactional_ddl is DefaultImpl.get_by_dialect(sqlalchemy_dialect).transactional_ddl
    assert dialect_for(name).transactional_ddl is (name == "postgresql")

