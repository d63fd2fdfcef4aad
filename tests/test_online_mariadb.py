"""Online DDL on a real MariaDB: each ALTER in the strongest form the server accepts (INSTANT, else INPLACE
with LOCK=NONE), what only a copy can do copied online by pt-online-schema-change (or in place, small or
allowed), the plan's refusal when neither can, and Ctrl-C in the middle of an online copy."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from pathlib import Path

import pexpect
import pymysql
import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations, ops
from helpers import APP_PASSWORD, BIN, PASSWORD, answer_at_a_terminal, environment, one_error_line
from sqlalchemy import event
from sqlalchemy.pool import NullPool

from deploy import dialects
from deploy.commands import Guards
from deploy.dialects import mariadb

pytestmark = pytest.mark.mariadb

ROWS = 30_000  # more than db.safety.copy_in_place_rows: a copy of it goes online
TABLE = (
    "CREATE TABLE orders (id INT PRIMARY KEY AUTO_INCREMENT, total INT NOT NULL, note VARCHAR(50), "
    "maybe INT NULL, wide VARCHAR(300), seen INT, KEY ix_seen (seen)) DEFAULT CHARSET=utf8mb4"
)
DEFAULTS = Guards()
FILL = f"INSERT INTO orders (total, note, maybe, wide, seen) SELECT seq, 'n', 1, 'w', seq FROM seq_1_to_{ROWS}"


def migration_engine(database) -> sa.Engine:
    url = sa.engine.make_url(database.migration_url).set(password=PASSWORD)
    return sa.create_engine(url, poolclass=NullPool)


def filled(database, rows: int = ROWS) -> None:
    database.query("DROP TABLE IF EXISTS orders")
    database.query(TABLE)
    database.query(FILL.replace(str(ROWS), str(rows)))
    database.query("ANALYZE TABLE orders")  # the statistics table_size() reads


@contextlib.contextmanager
def online(connection, guards=DEFAULTS):
    """The suite's online hook on `connection`, and the statements it sent the server, in order."""
    sent: list[str] = []

    def record(cursor, statement, *rest):
        sent.append(statement)
        return False  # recorded only: the driver runs it

    for name in mariadb.ONLINE_EVENTS:
        event.listen(connection.engine, name, record)
    try:
        with dialects.dialect_for(connection).online(connection, guards):
            yield sent
    finally:
        for name in mariadb.ONLINE_EVENTS:
            event.remove(connection.engine, name, record)


def ran(operation, connection) -> None:
    Operations(MigrationContext.configure(connection)).invoke(operation)


# Each operation, and the form in which the server took it: the statement the suite sent last.
OPERATIONS = {
    "add column": ops.AddColumnOp("orders", sa.Column("extra", sa.Integer)),
    "drop column": ops.DropColumnOp("orders", "note"),
    "drop indexed column": ops.DropColumnOp("orders", "seen"),
    "rename column": ops.AlterColumnOp("orders", "note", modify_name="label", existing_type=sa.String(50)),
    "varchar within its prefix": ops.AlterColumnOp(
        "orders", "note", existing_type=sa.String(50), modify_type=sa.String(60)
    ),
    "varchar over 255 bytes already": ops.AlterColumnOp(
        "orders", "wide", existing_type=sa.String(300), modify_type=sa.String(400)
    ),
    "NOT NULL to NULL": ops.AlterColumnOp(
        "orders", "total", existing_type=sa.Integer(), existing_nullable=False, modify_nullable=True
    ),
    "NULL to NOT NULL": ops.AlterColumnOp(
        "orders", "maybe", existing_type=sa.Integer(), existing_nullable=True, modify_nullable=False
    ),
    "default": ops.AlterColumnOp("orders", "total", existing_type=sa.Integer(), modify_server_default="7"),
    "index": ops.CreateIndexOp("ix_total", "orders", ["total"]),
    "unique constraint": ops.CreateUniqueConstraintOp("uq_total", "orders", ["total"]),
    "rename table": ops.RenameTableOp("orders", "purchases"),
    "type change": ops.AlterColumnOp(
        "orders", "total", existing_type=sa.Integer(), existing_nullable=False, modify_type=sa.BigInteger()
    ),
    "varchar over its prefix": ops.AlterColumnOp(
        "orders", "note", existing_type=sa.String(50), modify_type=sa.String(100)
    ),
    "check constraint": ops.CreateCheckConstraintOp("ck_total", "orders", "total > 0"),
}
FORMS = {
    "INSTANT": mariadb.INSTANT_FORM,
    "NOCOPY": "LOCK=NONE",
    "INPLACE": "LOCK=NONE",
}


@pytest.mark.parametrize("kind", list(OPERATIONS))
def test_each_operation_runs_in_the_form_alteration_tells(database, kind):
    """What alteration() says the server does is the form the server took: the strongest it accepted."""
    filled(database, rows=100)
    operation = OPERATIONS[kind]
    allowed = Guards(switched=frozenset({"allow_copy"}))
    with migration_engine(database).connect() as connection:
        told = dialects.dialect_for(connection).alteration(connection, operation)
        with online(connection, allowed) as sent:
            ran(operation, connection)
    final = sent[-1]
    if told.how == "COPY":  # INSTANT and INPLACE refused at once, then copied as written
        assert [form.rpartition(", ")[2] for form in sent[:2]] == ["ALGORITHM=INSTANT", "LOCK=NONE"], sent
        assert "ALGORITHM" not in final, sent
    else:
        assert FORMS[told.how] in final, (told, sent)
        assert sent.index(final) == (0 if told.how == "INSTANT" else len(sent) - 1), sent


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            "ALTER TABLE `blog`.`order``s` MODIFY total BIGINT NOT NULL;",
            ("blog", "order`s", "MODIFY total BIGINT NOT NULL", ", ALGORITHM=INSTANT"),
        ),
        ("ALTER TABLE orders RENAME TO purchases", (None, "orders", None, ", ALGORITHM=INSTANT")),
        ("CREATE UNIQUE INDEX ix ON orders (total)", (None, "orders", None, " ALGORITHM=INPLACE LOCK=NONE")),
        ("ALTER TABLE orders ADD COLUMN x INT, LOCK=SHARED", None),  # its author chose
        ("CREATE FULLTEXT INDEX ix ON orders (note)", None),
        ("DROP INDEX ix ON orders", None),  # MariaDB takes no ALGORITHM there
        ("UPDATE orders SET total = 1", None),
    ],
)
def test_the_statements_given_online_forms(statement, expected):
    found = mariadb.altering(mariadb.Server(True, (10, 11, 19)), statement)
    if expected is None:
        assert found is None
    else:
        assert (found.database, found.table, found.copy_spec, found.forms[0][-len(expected[3]) :]) == expected
    assert mariadb.altering(mariadb.Server(True, (10, 2, 44)), "ALTER TABLE t RENAME u") is None  # no INSTANT then


def test_a_copy_that_also_renames_the_column_is_not_online():
    assert mariadb.renames("CHANGE `total` amount BIGINT NOT NULL")
    assert not mariadb.renames("CHANGE total `total` BIGINT NOT NULL")


def test_a_form_chosen_in_the_revision_is_left_alone(database):
    filled(database, rows=10)
    with migration_engine(database).connect() as connection, online(connection) as sent:
        ran(ops.ExecuteSQLOp("ALTER TABLE orders ADD COLUMN extra INT, ALGORITHM=COPY"), connection)
    assert sent == ["ALTER TABLE orders ADD COLUMN extra INT, ALGORITHM=COPY"]


def test_a_small_table_is_copied_in_place_and_a_big_one_online(database, capfd):
    change = OPERATIONS["type change"]
    filled(database, rows=100)
    with migration_engine(database).connect() as connection, online(connection) as sent:
        ran(change, connection)
    assert (
        capfd.readouterr().err == "orders: MariaDB can only copy it: copying in place (about 100 rows), writes wait\n"
    )
    assert sent[-1] == "ALTER TABLE orders MODIFY total BIGINT NOT NULL"

    filled(database)
    with migration_engine(database).connect() as connection, online(connection):
        ran(change, connection)
    assert "copying online (pt-online-schema-change)" in capfd.readouterr().err
    assert database.query(
        "SELECT DATA_TYPE, COUNT(*) FROM information_schema.COLUMNS c JOIN orders "
        "WHERE c.TABLE_SCHEMA = DATABASE() AND c.TABLE_NAME = 'orders' "
        "AND c.COLUMN_NAME = 'total' GROUP BY DATA_TYPE"
    ) == (("bigint", ROWS),)
    assert leftovers(database) == ((), ())


def leftovers(database) -> tuple:
    """An online copy's triggers and shadow tables, if any are left."""
    return (
        database.query("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"),
        database.query(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME LIKE '\\_%'"
        ),
    )


# -- end to end: `invoke db.upgrade` in production, a writer beside it --------------------------------

LEDGER = "ledger0001"
WIDEN = "ledger0002"
FILL_LEDGER = (
    "op.create_table('ledger', sa.Column('id', sa.Integer, primary_key=True), "
    "sa.Column('amount', sa.Integer, nullable=False), sa.Column('pad', sa.String(100)))\n    "
    f"op.execute(\"INSERT INTO ledger (amount, pad) SELECT seq, REPEAT('x', 80) FROM seq_1_to_{ROWS}\")"
)
WIDEN_AMOUNT = (
    "op.alter_column('ledger', 'amount', existing_type=sa.Integer(), existing_nullable=False, type_=sa.BigInteger())"
)
# An online copy pauses while more statements than this run on the server: the sleepers below hold it there.
MAX_RUNNING = 3


@pytest.fixture
def ledger(checkout, database):
    """A production checkout at a revision that made `ledger` (ROWS rows), with one pending that widens a
    column, which MariaDB can only do by copying the table."""
    checkout.use_production(database)
    checkout.add_revision(LEDGER, checkout.head(), FILL_LEDGER)
    assert upgrade(checkout).code == 0
    database.query("ANALYZE TABLE ledger")
    checkout.add_revision(WIDEN, LEDGER, WIDEN_AMOUNT)
    return checkout


def upgrade(checkout, *args: str, **env: str):
    return checkout.invoke(
        "db.upgrade", "--yes", "--no-backup", *args, stdin=PASSWORD + "\n", env={"FLASK_CONFIG": "production", **env}
    )


def started(checkout, *argv: str, **env: str) -> subprocess.Popen:
    """A command in the checkout, in the background, the password on its stdin."""
    process = subprocess.Popen(
        argv,
        cwd=checkout.path,
        env=environment(FLASK_CONFIG="production", **env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdin.write((PASSWORD + "\n").encode())
    process.stdin.flush()
    return process


def upgrading_online(checkout) -> subprocess.Popen:
    """A production upgrade in the background whose online copy pauses while the server is busy."""
    return started(
        checkout,
        str(BIN / "python"),
        "-m",
        "invoke",
        "db.upgrade",
        "--yes",
        "--no-backup",
        "--allow-risky",
        INVOKE_DB_SAFETY_ONLINE_COPY_MAX_RUNNING=str(MAX_RUNNING),
    )


def until(check, process: subprocess.Popen, what: str, timeout: float = 120):
    """Until `check()` is true (its value returned); the process ending first fails the wait with its words."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"it ended ({process.returncode}) before {what}:\n{out.decode()}{err.decode()}")
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)
    return found


@contextlib.contextmanager
def busy_server(database, sessions: int = MAX_RUNNING + 1):
    """Sessions that each run a long statement (Threads_running above MAX_RUNNING), ended on leaving."""
    connections = [database.server.admin() for _ in range(sessions)]
    threads = [threading.Thread(target=sleeping, args=(connection,), daemon=True) for connection in connections]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for connection in connections:
            database.server.execute(f"KILL QUERY {connection.thread_id()}")
        for thread in threads:
            thread.join()


def sleeping(connection) -> None:
    with contextlib.suppress(Exception), connection.cursor() as cursor:
        cursor.execute("SELECT SLEEP(600)")


def amount_type(database) -> str:
    return database.query(
        "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = 'ledger' AND COLUMN_NAME = 'amount'"
    )[0][0]


def copying(database) -> bool:
    """pt-online-schema-change's triggers and shadow table are there: its copy is under way."""
    triggers, shadows = leftovers(database)
    return len(triggers) == 3 and ("_ledger_new",) in shadows


def app_connection(database):
    """A connection as the application's user, committing each statement."""
    return pymysql.connect(
        host="127.0.0.1",
        port=database.server.port,
        user=database.app_user,
        password=APP_PASSWORD,
        database=database.name,
        autocommit=True,
    )


def write_one_row(database) -> None:
    """The application's single-row writes, each waiting at most 5 s for a lock (else an error)."""
    connection = app_connection(database)
    with connection, connection.cursor() as cursor:
        cursor.execute("SET SESSION lock_wait_timeout = 5, innodb_lock_wait_timeout = 5")
        cursor.execute("UPDATE ledger SET amount = -1 WHERE id = 7")
        cursor.execute("INSERT INTO ledger (amount, pad) VALUES (-2, 'written during the copy')")


def test_an_online_copy_lets_the_application_write_while_it_runs(ledger, database):
    with busy_server(database):
        process = upgrading_online(ledger)
        until(lambda: copying(database), process, "the online copy started")
        write_one_row(database)  # while the copy is held (paused on the load), not after it
        assert copying(database) and amount_type(database) == "int"
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()
    assert "ledger: MariaDB can only copy it: copying online (pt-online-schema-change)" in err.decode()
    assert amount_type(database) == "bigint" and leftovers(database) == ((), ())
    # What was written during the copy is in the table that replaced it, by the triggers.
    assert database.query("SELECT amount FROM ledger WHERE id = 7") == ((-1,),)
    assert database.query("SELECT COUNT(*) FROM ledger WHERE pad = 'written during the copy'") == ((1,),)
    assert database.version() == WIDEN


def test_plain_alembic_copies_in_place_and_the_application_waits(ledger, database):
    """The same revision through plain `alembic upgrade`: MariaDB copies the table, and a write waits for
    it. A reader's open transaction holds the copy at its end (the swap), still blocking writes meanwhile."""
    reader = database.server.admin(database=database.name, autocommit=False)
    with reader.cursor() as cursor:
        cursor.execute("SELECT id FROM ledger LIMIT 1")
    process = started(ledger, str(BIN / "alembic"), "upgrade", "head")
    try:
        until(
            lambda: state_of(database, "ALTER TABLE ledger%") == "Waiting for table metadata lock",
            process,
            "the copy waits to swap",
        )
        writer = threading.Thread(target=write_one_row_waiting, args=(database,), daemon=True)
        writer.start()
        until(
            lambda: state_of(database, "UPDATE ledger%") == "Waiting for table metadata lock",
            process,
            "the application's write is seen waiting",
        )
        assert amount_type(database) == "int"
    finally:
        reader.rollback()
        reader.close()
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, out.decode() + err.decode()
    writer.join()
    assert amount_type(database) == "bigint"


def state_of(database, info: str) -> str | None:
    """The processlist state of the statement like `info` (SQL LIKE), if one runs."""
    found = database.query(
        f"SELECT STATE FROM information_schema.PROCESSLIST WHERE INFO LIKE '{info}' AND DB = DATABASE()"
    )
    return found[0][0] if found else None


def write_one_row_waiting(database) -> None:
    connection = app_connection(database)
    with connection, connection.cursor() as cursor:
        cursor.execute("UPDATE ledger SET amount = -1 WHERE id = 7")


def test_ctrl_c_twice_stops_an_online_copy_and_removes_what_it_made(ledger, database):
    """Ctrl-C once: the revision in progress goes on (as any); twice: the copy stops, its triggers and
    shadow table go, the table is as it was, and the run says so, in its log too."""
    env = environment(FLASK_CONFIG="production", INVOKE_DB_SAFETY_ONLINE_COPY_MAX_RUNNING=str(MAX_RUNNING))
    with busy_server(database):
        child = ledger.spawn("db.upgrade", "--yes", "--no-backup", "--allow-risky", env=env)
        try:
            prompt = f"Password for {database.migration_user}@127.0.0.1:{database.server.port}/{database.name}: "
            answer_at_a_terminal(child, (prompt, PASSWORD))
            deadline = time.monotonic() + 120
            while not copying(database):
                assert time.monotonic() < deadline and child.isalive(), child.before
                time.sleep(0.05)
            child.sendintr()
            child.expect_exact("Ctrl-C again to abort it")
            assert copying(database)  # the first only asks to stop after the revision in progress
            child.sendintr()
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
    output = " ".join(child.before.split())  # the terminal wraps long lines
    assert child.exitstatus == 1, output
    assert "online copy of ledger stopped: its triggers and shadow table were removed, ledger is as it was" in output
    assert (
        f"revision {WIDEN} ({WIDEN}) failed: online copy of ledger stopped: its triggers and shadow table were "
        f"removed, nothing of it is in ledger (aborted); the database is at {LEDGER}"
    ) in output
    assert "nothing of it is in the database; run `invoke db.upgrade` again" in output
    assert leftovers(database) == ((), ()) and amount_type(database) == "int"
    assert database.version() == LEDGER
    last = json.loads((ledger.path / "instance" / "migration-runs.jsonl").read_text().splitlines()[-1])
    assert "online copy of ledger stopped" in last["outcome"] and "(aborted)" in last["outcome"], last
    again = upgrade(ledger, "--allow-risky", INVOKE_DB_SAFETY_ONLINE_COPY_MAX_RUNNING="50")
    assert again.code == 0, again.output
    assert amount_type(database) == "bigint" and leftovers(database) == ((), ())


# -- the plan: a copy that can be neither online nor cheap is refused, --allow-copy copies in place ------

STATUS_WIDER = (
    "op.alter_column('posts', 'status', existing_type=sa.String(20), existing_nullable=False, "
    "existing_server_default='draft', type_=sa.String(100))"
)


def test_a_copy_that_cannot_be_online_is_refused_before_anything_runs_and_allowed_in_place(checkout, database):
    checkout.use_production(database)
    assert upgrade(checkout).code == 0
    database.query("INSERT INTO users (id, email, name) VALUES (1, 'a@example.org', 'A')")
    database.query(
        "INSERT INTO posts (author_id, slug, title, body) VALUES (1, 'one', 'One', ''), (1, 'two', 'Two', '')"
    )
    database.query("ANALYZE TABLE posts")
    head = checkout.head()
    checkout.add_revision("wider0000001", head, STATUS_WIDER)
    # Even two rows are too many to copy in place here: the copy would have to be online.
    small = {"INVOKE_DB_SAFETY_COPY_IN_PLACE_ROWS": "0"}

    line = one_error_line(upgrade(checkout, "--allow-risky", **small))
    assert line.startswith(
        "error: 1 pending operation cannot run online: wider0000001: alter_column posts.status: "
        "MariaDB can only copy posts (COPY; 2 rows, "
    ), line
    assert "foreign keys of other tables refer to posts (post_tags)" in line
    assert "pass --allow-copy to copy it in place, writes to posts blocked for the copy" in line
    assert database.version() == head

    allowed = upgrade(checkout, "--allow-risky", "--allow-copy", **small)
    assert allowed.code == 0, allowed.output
    assert database.version() == "wider0000001"
    assert database.query(
        "SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = 'posts' AND COLUMN_NAME = 'status'"
    ) == ((100,),)


def test_fab_plans_the_refusal_before_any_password_and_passes_allow_copy_on(remote, database):
    remote.upgrade()
    database.query("INSERT INTO users (id, email, name) VALUES (1, 'a@example.org', 'A')")
    database.query("INSERT INTO posts (author_id, slug, title, body) VALUES (1, 'one', 'One', '')")
    database.query("ANALYZE TABLE posts")
    (remote.server.path / "invoke.yaml").write_text("db:\n  safety:\n    copy_in_place_rows: 0\n")
    remote.add_revision("wider0000001", STATUS_WIDER)
    remote.refuses(
        "1 pending operation cannot run online: wider0000001: alter_column posts.status: MariaDB can only copy posts",
        "foreign keys of other tables refer to posts (post_tags)",
        args=("prod", "db.upgrade", "--allow-risky"),
    )
    remote.upgrade("--allow-risky", "--allow-copy")
    assert database.version() == "wider0000001"


def test_a_killed_run_takes_its_online_copy_down_with_it_and_the_next_is_told(ledger, database):
    """No copy goes on to swap a table in for a revision nobody records: killed with its run, it leaves its
    triggers, which the next upgrade names before anything runs."""
    with busy_server(database):
        process = upgrading_online(ledger)
        until(lambda: copying(database), process, "the online copy started")
        copier = until(lambda: online_copy_process(database), process, "its process is seen")
        process.kill()
        process.wait()
        deadline = time.monotonic() + 60
        while copier.exists():
            assert time.monotonic() < deadline, "the online copy outlived its run"
            time.sleep(0.05)
    assert amount_type(database) == "int" and database.version() == LEDGER
    line = one_error_line(upgrade(ledger, "--allow-risky"))
    assert f"an online copy that was killed left its triggers on ledger (pt_osc_{database.name}_ledger_" in line


def online_copy_process(database) -> Path | None:
    """/proc/PID of the pt-online-schema-change copying this database's ledger, if one runs."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"pt-online-schema-change" in arg for arg in argv[:2]) and any(
            f"D={database.name},t=ledger".encode() in arg for arg in argv
        ):
            return proc
    return None
