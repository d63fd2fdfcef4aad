"""PostgreSQL's least-locking forms, as the suite runs them: what each operation does to a table that
holds rows (Dialect.alteration), and the forms applied on a real server, checked in its catalog."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from alembic.operations import ops
from helpers import HEAD, PASSWORD, PRODUCTION, STDIN_PASSWORD, ok, one_error_line

from deploy.commands import Guards
from deploy.dialects import dialect_for
from deploy.review import lint

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


def test_the_lint_asks_only_for_what_the_suite_cannot_do():
    changes = [
        ops.CreateIndexOp("ix_t_x", "t", ["x"]),
        ops.CreateForeignKeyOp("fk_t_p", "t", "p", ["p_id"], ["id"]),
        ops.AlterColumnOp("t", "x", modify_nullable=False, existing_nullable=True, existing_type=sa.Integer()),
        ops.CreateCheckConstraintOp(None, "t", "x > 0"),
        ops.AlterColumnOp("t", "y", modify_type=sa.BigInteger(), existing_type=sa.Integer()),
    ]
    found = dict(lint.risks(changes, "postgresql"))
    assert "create_index t.ix_t_x" not in found
    assert "PostgreSQL" not in found["create_foreign_key t.fk_t_p"]
    assert "PostgreSQL" not in found["alter_column t.x NOT NULL"]
    assert "name it, and it is added NOT VALID" in found["create_check_constraint t()"]
    assert "rewrites the table" in found["alter_column t.y type"]
    # After another change of its revision, a form cannot leave the transaction: it runs plain, and is told.
    after = dict(lint.risks([ops.AddColumnOp("t", sa.Column("z", sa.Integer())), changes[0]], "postgresql"))
    assert "after other changes of its revision it runs in their transaction" in after["create_index t.ix_t_x"]
    first = dict(lint.risks([changes[0], ops.CreateIndexOp("ix_t_z", "t", ["z"])], "postgresql"))
    assert first == {}


@pytest.fixture
def migrating(pg_database):
    """The migration role's connection, with a table of rows that the revision did not create."""
    url = sa.make_url(pg_database.migration_url).set(password=PASSWORD)
    engine = sa.create_engine(url)
    with engine.connect() as opened:
        opened.exec_driver_sql("CREATE TABLE t (x integer)")
        opened.exec_driver_sql("INSERT INTO t SELECT n FROM generate_series(-1, 1000) AS n")
        opened.commit()
        yield opened
    engine.dispose()


NOT_NULL = "SELECT attnotnull FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'x'"
CHECKED = "SELECT convalidated FROM pg_constraint WHERE conname = 'ck_t_x'"


@pytest.mark.parametrize(
    ("statement", "left", "done"),
    [
        ("ALTER TABLE t ADD CONSTRAINT ck_t_x CHECK (x > 0)", "ck_t_x", CHECKED),
        ("ALTER TABLE t ALTER COLUMN x SET NOT NULL", "t_x_not_null", NOT_NULL),
    ],
)
def test_a_validation_the_rows_fail_leaves_no_constraint(migrating, pg_database, statement, left, done):
    migrating.exec_driver_sql("UPDATE t SET x = NULL WHERE x = 0")
    migrating.commit()
    with pytest.raises(sa.exc.IntegrityError), dialect_for(migrating).online(migrating, Guards()):
        migrating.exec_driver_sql(statement)
    migrating.rollback()
    assert validated(pg_database, left) is None
    # Once the rows allow it, it is done, and the check SET NOT NULL went through is gone.
    migrating.exec_driver_sql("DELETE FROM t WHERE x IS NULL OR x < 0")
    migrating.commit()
    with dialect_for(migrating).online(migrating, Guards()):
        migrating.exec_driver_sql(statement)
    migrating.commit()
    assert pg_database.query(done) == ((True,),) and validated(pg_database, "t_x_not_null") is None


# -- the forms applied, on a table of tens of thousands of rows ------------------------------------------

ROWS = 30_000
POST = "INSERT INTO posts (id, author_id, slug, title, body) VALUES (%(id)s, 1, 'new-' || %(id)s, 'title', 'body')"
INDEX = "op.create_index('ix_posts_title', 'posts', ['title'])"


@pytest.fixture
def production(checkout, pg_database, postgresql):
    """The example at its head on a production database whose posts hold ROWS rows; the migration role's
    DDL goes to the server's log (log_statement), where the forms it ran are read."""
    checkout.write_settings(
        "production", SQLALCHEMY_DATABASE_URI=pg_database.app_url, SQLALCHEMY_ALEMBIC_URI=pg_database.migration_url
    )
    ok(upgrade(checkout))
    fill(pg_database, postgresql)
    return checkout


def fill(database, server) -> None:
    """ROWS posts; the migration role's DDL logged."""
    database.query("INSERT INTO users (id, email, name) VALUES (1, 'a@example.com', 'A')")
    database.query(
        "INSERT INTO posts (id, author_id, slug, title, body)"
        " SELECT n, 1, 'slug-' || n, 'title ' || n, 'body' FROM generate_series(1, %s) AS n",
        (ROWS,),
    )
    database.query("ANALYZE posts")  # as autovacuum would have: the plan's sizes are the statistics'
    server.execute(f"ALTER ROLE \"{database.migration_user}\" SET log_statement = 'ddl'")


def upgrade(checkout, *args):
    return checkout.invoke("db.upgrade", "--yes", "--no-backup", *args, stdin=STDIN_PASSWORD, env=PRODUCTION)


class ServerLog:
    """What the server logs from now on (the migration role's DDL, with log_statement)."""

    def __init__(self, server):
        self.path = server.log_path
        self.start = self.path.stat().st_size

    def read(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.start)
            return " ".join(log.read().decode(errors="replace").split())


def index_state(database, name: str) -> tuple:
    """(valid, unique) of an index, or () when there is none."""
    rows = database.query(
        "SELECT i.indisvalid, i.indisunique FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
        " WHERE c.relname = %s",
        (name,),
    )
    return rows[0] if rows else ()


def validated(database, name: str) -> bool | None:
    rows = database.query("SELECT convalidated FROM pg_constraint WHERE conname = %s", (name,))
    return rows[0][0] if rows else None


@contextmanager
def upgrading_while_a_transaction_writes(checkout, database):
    """An upgrade run in a thread while an application transaction holds a row it inserted into posts:
    a concurrent build waits for that transaction to end before it can finish. Yields (result, pid of
    the migration's backend once it waits on the build); the transaction commits at the end."""
    result = {}
    with database.app_connection() as holder:
        holder.execute(POST, {"id": ROWS + 1})
        thread = threading.Thread(target=lambda: result.update(run=upgrade(checkout, "--ignore-transactions")))
        thread.start()
        try:
            yield result, waiting_build(database, thread, result)
        finally:
            holder.commit()
            thread.join()


def waiting_build(database, thread, result: dict, timeout: float = 120) -> int:
    """The backend of the migration once it runs CREATE INDEX CONCURRENTLY and waits on a lock."""
    deadline = time.monotonic() + timeout
    while True:
        found = database.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND query LIKE 'CREATE INDEX CONCURRENTLY%%'"
        )
        if found:
            return found[0][0]
        assert thread.is_alive(), f"the upgrade ended before any concurrent build waited: {result['run'].output}"
        assert time.monotonic() < deadline, "no concurrent build was seen waiting"
        time.sleep(0.05)


def test_an_index_is_built_concurrently_while_the_application_writes(production, pg_database):
    production.add_revision("ix", HEAD, upgrade=INDEX)
    with upgrading_while_a_transaction_writes(production, pg_database) as (result, pid):
        # The build is under way: its index is in the catalog, not valid yet, and its lock on posts is one
        # that writes do not conflict with.
        assert index_state(pg_database, "ix_posts_title") == (False, False)
        on_posts = "SELECT mode FROM pg_locks WHERE pid = %s AND relation = 'posts'::regclass"
        assert pg_database.query(on_posts, (pid,)) == (("ShareUpdateExclusiveLock",),)
        with pg_database.app_connection() as writer:
            writer.execute("SET lock_timeout = '60s'")  # a writer stuck behind the build fails, not hangs
            writer.execute(POST, {"id": ROWS + 2})
        assert pg_database.query("SELECT count(*) FROM posts WHERE id = %s", (ROWS + 2,)) == ((1,),)
        assert pg_database.version() == HEAD
    ok(result["run"])
    assert pg_database.version() == "ix"
    assert index_state(pg_database, "ix_posts_title") == (True, False)


def test_a_cancelled_build_is_not_recorded_and_what_a_build_left_is_dropped_before_the_next(
    production, pg_database, postgresql
):
    production.add_revision("ix", HEAD, upgrade=INDEX)
    with upgrading_while_a_transaction_writes(production, pg_database) as (result, pid):
        pg_database.query("SELECT pg_cancel_backend(%s)", (pid,))
    assert "revision ix (" in one_error_line(result["run"]) and pg_database.version() == HEAD
    assert index_state(pg_database, "ix_posts_title") == ()  # the invalid index it left is dropped
    # A build whose process was killed leaves its invalid index behind (here: a unique one that met a
    # duplicate): the next try drops it, then builds its own.
    pg_database.query("UPDATE posts SET title = 'title 1' WHERE id = 2")
    with postgresql.admin(pg_database.name) as admin, pytest.raises(Exception, match="ix_posts_title"):
        admin.execute("CREATE UNIQUE INDEX CONCURRENTLY ix_posts_title ON posts (title)")
    assert index_state(pg_database, "ix_posts_title") == (False, True)
    # An index left invalid is no one's schema: no drift is told of it, and the upgrade goes ahead.
    drift = production.invoke("db.drift", env=PRODUCTION)
    assert drift.code == 0 and "ix_posts_title" not in drift.output, drift.output
    ok(upgrade(production))
    assert pg_database.version() == "ix" and index_state(pg_database, "ix_posts_title") == (True, False)


FAILING_AFTER = (
    "op.create_index('ix_posts_title', 'posts', ['title'])\n    "
    "op.create_check_constraint('ck_posts_title', 'posts', 'length(title) > 0')\n    "
    "op.add_column('posts', sa.Column('subtitle', sa.String(50)))\n    "
    "op.create_index('ix_posts_subtitle', 'posts', ['subtitle'])\n    "
    "op.execute('SELECT * FROM no_such_table')"
)


def test_a_revision_that_fails_after_its_online_forms_leaves_the_schema_as_before(production, pg_database, postgresql):
    before = pg_database.schema()
    log = ServerLog(postgresql)
    production.add_revision("broken", HEAD, upgrade=FAILING_AFTER)
    line = one_error_line(upgrade(production, "--allow-risky"))
    assert "revision broken (broken) failed" in line and "rolled back whole" in line
    assert pg_database.version() == HEAD and pg_database.schema() == before
    ran = log.read()
    # The first two left the transaction; the index after the new column ran in it, plain.
    assert "CREATE INDEX CONCURRENTLY ix_posts_title" in ran and "VALIDATE CONSTRAINT ck_posts_title" in ran
    assert "CREATE INDEX ix_posts_subtitle ON posts (subtitle)" in ran


CONSTRAINTS = """op.create_check_constraint('ck_posts_title', 'posts', 'length(title) > 0')
    op.create_foreign_key('fk_posts_author', 'posts', 'users', ['author_id'], ['id'])
    op.alter_column('posts', 'subtitle', nullable=False, existing_type=sa.String(50))"""


def test_constraints_are_validated_apart_and_not_null_trusts_a_validated_check(production, pg_database, postgresql):
    production.add_revision(
        "sub",
        HEAD,
        upgrade="op.add_column('posts', sa.Column('subtitle', sa.String(50)))\n"
        "    op.execute('UPDATE posts SET subtitle = slug')",
    )
    ok(upgrade(production))
    log = ServerLog(postgresql)
    production.add_revision("constraints", "sub", upgrade=CONSTRAINTS)
    ok(upgrade(production, "--allow-risky"))  # each fails on rows that break it: none here
    assert pg_database.version() == "constraints"
    assert validated(pg_database, "ck_posts_title") is True and validated(pg_database, "fk_posts_author") is True
    ((not_null,),) = pg_database.query(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'posts'::regclass AND attname = 'subtitle'"
    )
    assert not_null is True and validated(pg_database, "posts_subtitle_not_null") is None
    ran = log.read()
    for step in (
        "ADD CONSTRAINT ck_posts_title CHECK (length(title) > 0) NOT VALID",
        "VALIDATE CONSTRAINT ck_posts_title",
        "REFERENCES users (id) NOT VALID",
        "VALIDATE CONSTRAINT fk_posts_author",
        'ADD CONSTRAINT "posts_subtitle_not_null" CHECK (subtitle IS NOT NULL) NOT VALID',
        'VALIDATE CONSTRAINT "posts_subtitle_not_null"',
        "ALTER COLUMN subtitle SET NOT NULL",
    ):
        assert step in ran, step


BIGGER = "op.alter_column('posts', 'author_id', type_=sa.BigInteger(), existing_type=sa.Integer())"
REWRITE_REFUSED = "bigger: alter_column posts.author_id: PostgreSQL rewrites posts (30,000 rows, "
BLOCKED = "MB), its reads and writes blocked throughout: add a new column and backfill it, or pass --allow-rewrite"


def test_a_rewrite_is_refused_before_anything_runs_unless_allowed(production, pg_database):
    production.add_revision("bigger", HEAD, upgrade=BIGGER)
    line = one_error_line(upgrade(production, "--allow-risky"))
    assert REWRITE_REFUSED in line and line.endswith(BLOCKED)
    assert pg_database.version() == HEAD
    ok(upgrade(production, "--allow-risky", "--allow-rewrite"))
    assert pg_database.query(
        "SELECT data_type FROM information_schema.columns WHERE column_name = 'author_id' AND table_name = 'posts'"
    ) == (("bigint",),)


def test_through_fab_the_forms_are_applied_and_a_rewrite_refused_in_the_plan(pg_remote, postgresql):
    database = pg_remote.database
    pg_remote.upgrade()
    fill(database, postgresql)
    log = ServerLog(postgresql)
    pg_remote.add_revision("ix", INDEX)
    pg_remote.upgrade("--no-backup")
    assert index_state(database, "ix_posts_title") == (True, False)
    assert "CREATE INDEX CONCURRENTLY ix_posts_title ON posts (title)" in log.read()
    pg_remote.add_revision("bigger", BIGGER)
    line = pg_remote.refuses("--allow-rewrite", args=("prod", "db.upgrade", "--yes", "--allow-risky"))
    assert REWRITE_REFUSED in line and line.endswith(BLOCKED)
    pg_remote.upgrade("--no-backup", "--allow-risky", "--allow-rewrite")
    assert database.version() == "bigger"
