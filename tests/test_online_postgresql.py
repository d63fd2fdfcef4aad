"""PostgreSQL's least-locking forms, as the suite runs them: what each operation does to a table that
holds rows (Dialect.alteration), and the forms applied on a real server, checked in its catalog."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.operations import ops

from deploy.dialects import dialect_for

pytestmark = pytest.mark.postgresql


@pytest.fixture
def connection(pg_database):
    engine = sa.create_engine(pg_database.app_url)
    with engine.connect() as opened:
        yield opened
    engine.dispose()


def told(connection, operation) -> tuple:
    alteration = dialect_for(connection).alteration(connection, operation)
    return None if alteration is None else (alteration.how, alteration.blocks, alteration.per_row, alteration.online)


def test_each_operation_is_told_as_the_server_runs_it(connection):
    assert connection.dialect.server_version_info >= (12,)
    column = sa.Column
    assert told(connection, ops.CreateIndexOp("ix_t_x", "t", ["x"])) == ("index build", "nothing", True, "CONCURRENTLY")
    written = ops.CreateIndexOp("ix_t_x", "t", ["x"], postgresql_concurrently=True)
    assert told(connection, written) == ("index build", "nothing", True, None)
    foreign_key = ops.CreateForeignKeyOp("fk_t_p", "t", "p", ["p_id"], ["id"])
    assert told(connection, foreign_key) == ("validation scan", "nothing", True, "NOT VALID, then VALIDATE")
    check = ops.CreateCheckConstraintOp("ck_t_x", "t", "x > 0")
    assert told(connection, check)[:3] == ("validation scan", "nothing", True)
    # Without a name there is none to VALIDATE: it is added as written.
    assert told(connection, ops.CreateCheckConstraintOp(None, "t", "x > 0")) == (
        "validation scan",
        "writes",
        True,
        None,
    )
    not_null = ops.AlterColumnOp("t", "x", modify_nullable=False, existing_type=sa.Integer())
    assert told(connection, not_null)[:3] == ("validation scan", "nothing", True)
    assert "SET NOT NULL" in told(connection, not_null)[3]
    bigger = ops.AlterColumnOp("t", "x", modify_type=sa.BigInteger(), existing_type=sa.Integer())
    assert told(connection, bigger) == ("rewrite", "reads and writes", True, None)
    for old, new in (
        (sa.String(20), sa.String(40)),
        (sa.String(20), sa.Text()),
        (sa.Numeric(10, 2), sa.Numeric(12, 2)),
    ):
        widened = ops.AlterColumnOp("t", "x", modify_type=new, existing_type=old)
        assert told(connection, widened) == ("catalog only", "reads and writes", False, None), (old, new)
    shorter = ops.AlterColumnOp("t", "x", modify_type=sa.String(10), existing_type=sa.String(20))
    assert told(connection, shorter)[0] == "rewrite"
    constant = ops.AddColumnOp("t", column("flag", sa.Integer(), nullable=False, server_default="0"))
    assert told(connection, constant) == ("catalog only", "reads and writes", False, None)
    volatile = ops.AddColumnOp("t", column("r", sa.Float(), server_default=sa.text("random()")))
    assert told(connection, volatile)[0] == "rewrite"
    assert told(connection, ops.DropColumnOp("t", "x"))[0] == "catalog only"
    assert told(connection, ops.CreateTableOp("new", [column("id", sa.Integer(), primary_key=True)])) is None
    assert told(connection, ops.ExecuteSQLOp("UPDATE t SET x = 1")) is None
