"""Batched backfills (deploy/backfill.py): every row updated once, in batches each committed alone; a
stop taken between two batches leaves the revision unapplied, and the next upgrade goes on from the key
kept in alembic_backfills. On SQLite (development) and on each kind of server (production)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time

import pexpect
import pytest
from helpers import BIN, HEAD, PRODUCTION, STDIN_PASSWORD, environment, one_error_line
from sqlalchemy import create_engine

from deploy import console, database, dialects
from deploy.backfill import TABLE

ROWS, BATCH = 3000, 50
ITEMS, FILL = "items0000001", "fill00000001"
# The revision that fills: its pause comes from the environment, so the run a test stops is slow and
# the one that goes on is quick. :upto, the batch's last key, tells which batch updated a row.
FILL_BODY = (
    "backfill('items', 'n = n + 1, batch_end = :upto', batch_size={batch}, "
    "pause=float(os.environ.get('BACKFILL_PAUSE', '0')), max_busy=50)"
)


def write_revision(checkout, revision: str, down: str, body: str) -> None:
    (checkout.versions / f"{revision}.py").write_text(
        f'"""{revision}"""\nimport os\n\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        "from deploy.backfill import backfill\n\n"
        f"revision = {revision!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade():\n    {body}\n\n\ndef downgrade():\n    pass\n"
    )


def add_items(checkout) -> None:
    """A revision that creates `items`, ROWS rows with ids 1.., each with a counter at 0."""
    write_revision(
        checkout,
        ITEMS,
        HEAD,
        "items = op.create_table('items', sa.Column('id', sa.Integer, primary_key=True, autoincrement=False),"
        " sa.Column('n', sa.Integer, nullable=False, server_default='0'), sa.Column('batch_end', sa.Integer))\n"
        f"    op.bulk_insert(items, [{{'id': i}} for i in range(1, {ROWS + 1})])",
    )


class Target:
    """Where a test's upgrade runs: SQLite in development, or a server's database in production."""

    def __init__(self, checkout, server_database=None):
        self.checkout, self.server_database = checkout, server_database
        if server_database is not None:
            checkout.use_production(server_database)
        self.env = dict(PRODUCTION) if server_database is not None else {}
        self.stdin = STDIN_PASSWORD if server_database is not None else None
        self.args = ("--yes", "--no-backup") if server_database is not None else ()

    def query(self, sql: str) -> list[tuple]:
        if self.server_database is not None:
            return [tuple(row) for row in self.server_database.query(sql)]
        with sqlite3.connect(self.checkout.path / "instance" / "development.db") as connection:
            return connection.execute(sql).fetchall()

    def version(self) -> str:
        return self.query("SELECT version_num FROM alembic_version")[0][0]

    def upgrade(self, **env: str):
        return self.checkout.invoke("db.upgrade", *self.args, stdin=self.stdin, env={**self.env, **env})

    def counters(self) -> dict[int, int]:
        """How many rows were updated how many times."""
        return dict(self.query("SELECT n, count(*) FROM items GROUP BY n"))

    def batches(self) -> int:
        return self.query("SELECT count(DISTINCT batch_end) FROM items")[0][0]

    def kept(self) -> list[tuple]:
        return self.query(f"SELECT revision, name, last_key, rows_done FROM {TABLE}")

    def last_run(self) -> dict:
        lines = (self.checkout.path / "instance" / "migration-runs.jsonl").read_text().splitlines()
        return json.loads(lines[-1])


@pytest.fixture
def sqlite_target(checkout) -> Target:
    return Target(checkout)


@pytest.fixture
def server_target(checkout, any_database) -> Target:
    return Target(checkout, any_database)


def with_items(target: Target, applied: bool = True) -> Target:
    """`items` and the revision that fills it; `applied`: `items` is applied first, so that the backfill
    is the first revision of its run (Alembic then leaves the run's transaction to its caller)."""
    add_items(target.checkout)
    if applied:
        first = target.upgrade()
        assert first.code == 0, first.output
    write_revision(target.checkout, FILL, ITEMS, FILL_BODY.format(batch=BATCH))
    return target


# -- every row once, in batches --------------------------------------------------------------------


def check_filled_once(target: Target) -> None:
    result = target.upgrade()
    assert result.code == 0, result.output
    assert target.version() == FILL
    assert target.counters() == {1: ROWS}  # every row, once
    assert target.batches() == ROWS // BATCH
    assert target.kept() == []  # cleared once finished
    # Not a terminal: a line after the first batch (then every few seconds), and the end.
    assert f"backfill items: {BATCH} rows, " in result.err and " rows/s, about " in result.err
    assert f"backfill items: done, {ROWS} rows" in result.err


# The backfill after another revision of the same run: its batches commit through Alembic's autocommit_block.
def test_a_backfill_updates_every_row_once_in_batches_on_sqlite(sqlite_target):
    check_filled_once(with_items(sqlite_target, applied=False))


def test_a_backfill_updates_every_row_once_in_batches(server_target):
    check_filled_once(with_items(server_target, applied=False))


# -- stopped between batches, then resumed ---------------------------------------------------------


def interrupted_after_batches(target: Target, process: subprocess.Popen, batches: int, stdin: str | None = None) -> str:
    """`stdin` to the upgrade, then Ctrl-C (SIGINT) once `batches` batches are written; what it said on stderr."""
    try:
        if stdin:
            process.stdin.write(stdin.encode())
            process.stdin.flush()
        wait_for_batches(target, process, batches)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    return err.decode()


def stop_then_resume(target: Target) -> None:
    with_items(target)
    process = subprocess.Popen(
        [str(BIN / "python"), "-m", "invoke", "db.upgrade", *target.args],
        cwd=target.checkout.path,
        env=environment(**target.env, BACKFILL_PAUSE="0.2"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    err = interrupted_after_batches(target, process, 3, target.stdin)
    assert process.returncode == 1, err
    assert "stopping after the revision in progress (SIGINT received)" in err
    assert "backfill items stopped (SIGINT received) after key" in err
    assert "stopped (SIGINT received) after 0 of 1 revisions, none left half done" in err
    assert "Traceback" not in err and "half applied" not in err
    assert target.version() == ITEMS  # the revision is not applied
    assert target.last_run()["outcome"].startswith("stopped after 0 of 1 (SIGINT received)")
    [(revision, name, last_key, rows_done)] = target.kept()
    assert (revision, name) == (FILL, "items") and 3 * BATCH <= rows_done < ROWS
    # What was kept is exactly what was done: the batches before the stop, each whole.
    assert target.counters() == {1: rows_done, 0: ROWS - rows_done} and last_key == rows_done
    # The next upgrade goes on from the key kept, not from the start.
    again = target.upgrade()
    assert again.code == 0, again.output
    assert f"backfill items: going on after key {last_key} ({rows_done} rows done before)" in again.err
    assert target.version() == FILL and target.kept() == []
    assert target.counters() == {1: ROWS}  # none twice
    assert target.batches() == ROWS // BATCH


def wait_for_batches(target: Target, process: subprocess.Popen, batches: int, timeout: float = 60) -> None:
    """Until the backfill has committed `batches` batches (its kept progress says so)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            kept = target.kept()
        except Exception:  # alembic_backfills not there yet
            kept = []
        if kept and kept[0][3] >= batches * BATCH:
            return
        if process.poll() is not None:
            raise AssertionError(f"it ended first: {process.stderr.read().decode()}")
        assert time.monotonic() < deadline, "the backfill never got that far"
        time.sleep(0.02)


def test_ctrl_c_stops_a_backfill_between_batches_and_the_next_upgrade_goes_on_on_sqlite(sqlite_target):
    stop_then_resume(sqlite_target)


def test_ctrl_c_stops_a_backfill_between_batches_and_the_next_upgrade_goes_on(server_target):
    stop_then_resume(server_target)


def test_a_backfill_after_other_operations_says_so_and_runs_to_the_end_of_its_revision(sqlite_target):
    target = sqlite_target
    add_items(target.checkout)
    assert target.upgrade().code == 0
    write_revision(
        target.checkout,
        FILL,
        ITEMS,
        "op.create_table('other', sa.Column('id', sa.Integer, primary_key=True))\n    " + FILL_BODY.format(batch=BATCH),
    )
    process = subprocess.Popen(
        [str(BIN / "python"), "-m", "invoke", "db.upgrade"],
        cwd=target.checkout.path,
        env=environment(BACKFILL_PAUSE="0.05"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    err = interrupted_after_batches(target, process, 3)
    assert (
        f"warning: backfill items: revision {FILL} runs other operations before it, which its first batch "
        "commits: a stop waits for the end of the revision (give a backfill a revision of its own)"
    ) in err
    # The stop came after the only revision: it ran whole.
    assert process.returncode == 0, err
    assert target.version() == FILL and target.counters() == {1: ROWS}


# -- at a terminal, refusals, the parts ------------------------------------------------------------


def test_at_a_terminal_the_progress_is_one_live_line(sqlite_target):
    with_items(sqlite_target)
    child = sqlite_target.checkout.spawn("db.upgrade", env=environment())
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert f"\rbackfill items: {ROWS} rows, " in child.before
    assert f"\nbackfill items: done, {ROWS} rows" in child.before.replace("\r\n", "\n")


@pytest.mark.parametrize(
    "table, said",
    [
        (
            "sa.Column('a', sa.Integer, primary_key=True), sa.Column('b', sa.Integer, primary_key=True)",
            "backfill pairs: pairs needs a primary key of one integer column (it has a INTEGER, b INTEGER); "
            "update it in batches by hand",
        ),
        (
            "sa.Column('code', sa.String(10), primary_key=True)",
            "backfill pairs: pairs needs a primary key of one integer column (it has code VARCHAR(10))",
        ),
    ],
    ids=["composite", "text"],
)
def test_a_table_without_one_integer_key_is_refused_in_one_line(sqlite_target, table, said):
    checkout = sqlite_target.checkout
    write_revision(checkout, ITEMS, HEAD, f"op.create_table('pairs', {table})")
    write_revision(checkout, FILL, ITEMS, "backfill('pairs', 'a = a')")
    line = one_error_line(sqlite_target.upgrade())
    assert said in line and "revision fill00000001 (fill00000001) failed" in line
    assert sqlite_target.version() == ITEMS


def test_the_progress_table_is_the_suites_own():
    assert TABLE in database.SUITE_TABLES


def test_the_active_cancellation_is_the_running_migrations():
    assert console.active_cancellation() is None
    cancellation = console.Cancellation()
    with cancellation.active():
        assert console.active_cancellation() is cancellation
    assert console.active_cancellation() is None


def test_each_server_tells_how_busy_it_is(any_database):
    engine = create_engine(any_database.app_url)
    try:
        with engine.connect() as connection:
            busy = dialects.dialect_for(connection).busy_sessions(connection)
    finally:
        engine.dispose()
    assert isinstance(busy, int) and busy >= 0
