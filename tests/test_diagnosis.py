"""What a revision that failed part way left, told from the run (deploy.review.diagnosis.watching and
left_by), in-process against a real MariaDB: the rules an end-to-end run cannot single out."""

from __future__ import annotations

import alembic.op
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from helpers import HEAD, PASSWORD, make_database
from sqlalchemy.pool import NullPool

from deploy import alembic_ops
from deploy.errors import DeployError
from deploy.review import diagnosis, lint


@pytest.fixture
def connection(mariadb):
    database = make_database(mariadb)
    engine = sa.create_engine(sa.make_url(database.migration_url).set(password=PASSWORD), poolclass=NullPool)
    with engine.connect() as opened:
        yield opened
    engine.dispose()


def left_by_failure(checkout, connection, body: str) -> diagnosis.Left:
    """Upgrade to the example's head, then run revision `failing` (upgrade() is `body`), which must fail."""
    checkout.add_revision("failing", HEAD, body)
    config = Config(str(checkout.path / "alembic.ini"))
    alembic_ops.run(command.upgrade, config, connection, HEAD)
    previous = getattr(alembic.op, "_proxy", None)
    try:
        with pytest.raises(sa.exc.DBAPIError), diagnosis.watching(connection) as trail:
            alembic_ops.migrate(config, connection, "failing")
    finally:
        # Alembic leaves a failed run's Operations installed as alembic.op's proxy: later tests must not see it.
        alembic.op._proxy = previous
    connection.rollback()
    try:
        planned = [lint.name(operation) for operation in lint.operations(config, "failing", "mysql")]
    except DeployError:
        planned = None
    return diagnosis.left_by(trail, "failing", planned)


# Each failing revision's body, and what it left: applied, cannot be told, failed, never ran; its state.
FAILURES = {
    # The ALTER committed itself; the UPDATE after it was still open when the SELECT failed.
    "data changes after the last schema change are not called applied": (
        "op.add_column('posts', sa.Column('summary', sa.String(50)))\n    "
        "op.execute('UPDATE posts SET summary = title')\n    "
        "op.execute('SELECT * FROM no_such_table')",
        ["add_column posts.summary"],
        ["execute UPDATE posts SET summary = title (its data changes may have been rolled back)"],
        ["execute SELECT * FROM no_such_table"],
        [],
        "may be half applied",
    ),
    "data changes a later schema change committed are applied": (
        "op.execute('UPDATE posts SET title = title')\n    "
        "op.add_column('posts', sa.Column('summary', sa.String(50)))\n    "
        "op.add_column('posts', sa.Column('title', sa.String(50)))",  # exists: fails
        ["execute UPDATE posts SET title = title", "add_column posts.summary"],
        [],
        ["add_column posts.title"],
        [],
        "is half applied",
    ),
    # Unreadable offline (the mock connection has no exec_driver_sql): what followed is not named.
    "changes the script makes on the connection itself cannot be told": (
        "op.get_bind().exec_driver_sql('CREATE TABLE side_table (id INT)')\n    "
        "op.add_column('posts', sa.Column('title', sa.String(50)))",
        [],
        ["1 change the script made on the connection itself"],
        ["add_column posts.title"],
        ["the rest of the script, if any"],
        "may be half applied",
    ),
}


@pytest.mark.parametrize(
    ("body", "applied", "unknown", "failed", "not_run", "state"), FAILURES.values(), ids=list(FAILURES)
)
def test_what_a_failed_revision_left(checkout, connection, body, applied, unknown, failed, not_run, state):
    left = left_by_failure(checkout, connection, body)
    assert (left.applied, left.unknown, left.failed, left.not_run) == (applied, unknown, failed, not_run)
    assert left.state == state and left.half_applied


def test_the_watch_ends_with_the_block(checkout, connection):
    invoke, flush = diagnosis.AbstractOperations.invoke, diagnosis.BatchOperationsImpl.flush
    left_by_failure(checkout, connection, "op.execute('SELECT * FROM no_such_table')")
    assert (diagnosis.AbstractOperations.invoke, diagnosis.BatchOperationsImpl.flush) == (invoke, flush)
    assert len(connection.dispatch.after_cursor_execute) == 0
