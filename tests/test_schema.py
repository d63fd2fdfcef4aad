"""The live-schema snapshot (deploy/schema.py), read in-process from the throwaway PostgreSQL."""

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from deploy import schema


def test_an_expression_index_is_listed_by_its_expression(pg_database):
    pg_database.query("CREATE TABLE notes (id int PRIMARY KEY, body varchar(50))")
    pg_database.query("CREATE INDEX ix_notes_lower_body ON notes (lower(body))")
    engine = sa.create_engine(pg_database.app_url, poolclass=NullPool)
    with engine.connect() as connection:
        found = schema.snapshot(connection, "blog")
    engine.dispose()
    assert str(found.table("notes")).splitlines()[-1] == "  index ix_notes_lower_body (lower(body::text))"
