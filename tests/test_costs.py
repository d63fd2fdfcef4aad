"""What each pending operation costs before it runs (deploy.review.costs): its form, the table's estimated
rows, about how long and what it blocks, in the plan (fab, single target and fleet) and in a local upgrade;
the run log keeping what each revision took, which later estimates learn their rates from.

How lines are built and rates learned is tested in-process; the sizes and forms on the real servers."""

from __future__ import annotations

import json

import sqlalchemy as sa
from helpers import HEAD, PRODUCTION, STDIN_PASSWORD, make_database, ok
from test_fleet import fleet_remote

from deploy.dialects import Alteration
from deploy.guards import runlog
from deploy.review import costs

# Applied first: a column whose type the pending revision changes, and the rows it meets.
SCORE = "op.add_column('posts', sa.Column('score', sa.Integer(), nullable=True))"
# Pending: a type change and an index on the table that holds rows; a new table, and an index on it in
# the revision after (it is empty: no estimate).
CHANGES = "op.alter_column('posts', 'score', type_=sa.BigInteger(), existing_type=sa.Integer())"
INDEX = "op.create_index('ix_posts_score', 'posts', ['score'])"
NEW_TABLE = "op.create_table('notes', sa.Column('id', sa.Integer(), primary_key=True), sa.Column('n', sa.Integer()))"
NEW_INDEX = "op.create_index('ix_notes_n', 'notes', ['n'])"
# The plan's lines for CHANGES on five posts, by kind: each server's own form and lock.
EXPECTED = {
    "mariadb": [
        # The dialect tells the form, not that a table this small is copied in place.
        "estimate: change000001: posts: change type of score (COPY, pt-online-schema-change, 5 rows, under 1 s, "
        "blocks writes)",
        "estimate: index0000001: posts: create index ix_posts_score on score (NOCOPY, ALGORITHM=INPLACE, LOCK=NONE, "
        "5 rows, under 1 s, blocks nothing)",
    ],
    "postgresql": [
        "estimate: change000001: posts: change type of score (rewrite, 5 rows, under 1 s, blocks reads and writes)",
        "estimate: index0000001: posts: create index ix_posts_score on score (index build, CONCURRENTLY, 5 rows, "
        "under 1 s, blocks nothing)",
    ],
}
ANALYZE = {"mariadb": "ANALYZE TABLE posts", "postgresql": "ANALYZE posts"}


def five_posts(database, kind: str) -> None:
    """Five posts, and statistics that count them (a production table's are settled)."""
    database.query("INSERT INTO users (id, email, name) VALUES (1, 'a@example.org', 'A')")
    for post in range(1, 6):
        database.query(
            f"INSERT INTO posts (id, author_id, slug, title, body, score) VALUES ({post}, 1, 's{post}', 't', '', 1)"
        )
    database.query(ANALYZE[kind])


def pending(add_revision) -> None:
    add_revision("change000001", CHANGES)
    add_revision("index0000001", INDEX)
    add_revision("notes0000001", NEW_TABLE)
    add_revision("notesix00001", NEW_INDEX)


def estimates(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith("estimate: ")]


def test_the_plan_shows_each_operation_on_a_table_with_rows_before_asking(any_remote, server_kind):
    remote = any_remote
    remote.add_revision("score0000001", SCORE)
    remote.upgrade()
    five_posts(remote.database, server_kind.name)
    pending(remote.add_revision)
    # No answer to Apply?: the plan is shown, nothing runs.
    shown = remote.fab("prod", "db.upgrade", "--allow-risky")
    assert estimates(shown.out) == EXPECTED[server_kind.name], shown.output
    assert remote.database.version() == "score0000001"


def test_a_local_upgrade_tells_them_and_the_run_log_keeps_what_each_took(checkout, any_database, server_kind):
    checkout.use_production(any_database)
    checkout.add_revision("score0000001", HEAD, SCORE)
    ok(checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=PRODUCTION))
    five_posts(any_database, server_kind.name)
    down = "score0000001"
    revisions = (
        ("change000001", CHANGES),
        ("index0000001", INDEX),
        ("notes0000001", NEW_TABLE),
        ("notesix00001", NEW_INDEX),
    )
    for name, body in revisions:
        checkout.add_revision(name, down, body)
        down = name
    result = ok(checkout.invoke("db.upgrade", "--yes", "--allow-risky", stdin=STDIN_PASSWORD, env=PRODUCTION))
    assert estimates(result.out) == EXPECTED[server_kind.name], result.output
    last = json.loads((checkout.path / "instance" / runlog.FILE).read_text().splitlines()[-1])
    assert [(record["revision"], [op["rows"] for op in record["operations"]]) for record in last["timings"]] == [
        ("change000001", [5]),
        ("index0000001", [5]),
    ]
    assert all(record["seconds"] > 0 for record in last["timings"])


def test_a_fleet_plan_shows_each_database_s_estimates(tmp_path, mariadb, sshd):
    databases = {name: make_database(mariadb) for name in ("tenant_a", "tenant_b")}
    remote = fleet_remote(tmp_path, sshd, databases)
    remote.add_revision("score0000001", SCORE)
    ok(remote.fab("tenants", "db.upgrade", "--yes", stdin=STDIN_PASSWORD * 2))  # a migration user each
    five_posts(databases["tenant_a"], "mariadb")
    pending(remote.add_revision)
    shown = remote.fab("tenants", "db.upgrade", "--allow-risky")
    lines = estimates(shown.out)
    # tenant_b's posts are empty: its plan says so, 0 rows.
    assert lines[:2] == EXPECTED["mariadb"], shown.output
    assert [line.split("(", 1)[1] for line in lines[2:]] == [
        "COPY, pt-online-schema-change, 0 rows, under 1 s, blocks writes)",
        "NOCOPY, ALGORITHM=INPLACE, LOCK=NONE, 0 rows, under 1 s, blocks nothing)",
    ], shown.output
    assert {database.version() for database in databases.values()} == {"score0000001"}


# -- in-process --------------------------------------------------------------------------------------

COPY = Alteration("COPY", "writes", True)


def cost(rows: int | None, seconds: float | None, alteration: Alteration = COPY) -> costs.Cost:
    return costs.Cost(
        "abc123", "orders", "change type of total", alteration, "mysql|COPY||alter_column", rows, 0, seconds
    )


def test_a_cost_is_told_in_one_line():
    assert str(cost(2_100_000, 40.3)) == "abc123: orders: change type of total (COPY, 2.1M rows, ~40 s, blocks writes)"
    assert str(cost(950, 0.01)).endswith("(COPY, 950 rows, under 1 s, blocks writes)")
    assert str(cost(None, None)).endswith("(COPY, size unknown, blocks writes)")
    instant = Alteration("INSTANT", "nothing", False, "ALGORITHM=INSTANT")
    assert str(cost(34_600, 0.0, instant)).endswith("(INSTANT, ALGORITHM=INSTANT, 35k rows, a moment, blocks nothing)")
    assert [costs.duration(s) for s in (1.04, 12.6, 95, 150, 600, 5400, 9000)] == [
        "~1 s",
        "~13 s",
        "~95 s",
        "~2.5 min",
        "~10 min",
        "~90 min",
        "~2.5 h",
    ]


def test_runs_in_the_run_log_teach_the_rates_of_later_estimates(tmp_path):
    named = "mysql|COPY||alter_column"
    assert costs.rate(named, costs.rates(tmp_path, "mysql")) == costs.FALLBACK["mysql"]  # no default for it
    # A revision with two operations of the key ran 10 s: 600k and 400k rows estimated alike by rows.
    measured = costs.Measured(
        [
            costs.Cost("r1", "orders", "x", COPY, named, 600_000, 0, 6.0),
            costs.Cost("r1", "items", "y", COPY, named, 400_000, 0, 4.0),
            costs.Cost("r2", "tiny", "z", COPY, named, 10, 0, 0.0001),
        ]
    )
    with runlog.recorded(tmp_path, "db.upgrade", "app@db/shop", "a", "b") as run:
        run.timings = measured.records
        with costs.timing(measured, "r1"):
            pass
        measured("r1", 10.0)  # as it would have taken
        measured("r3", 1.0)  # a revision with nothing that grows with rows is not kept
    kept = runlog.last_run(tmp_path).timings
    assert [record["revision"] for record in kept] == ["r1", "r1"]
    learned = costs.rates(tmp_path, "mysql")
    assert learned == {named: 100_000.0}  # the quick first r1 (under LEARN_FROM_SECONDS) taught nothing
    assert costs.rates(tmp_path, "postgresql") == {}
    assert costs.rate(named, learned) == 100_000.0


def test_a_form_s_fixed_seconds_are_not_taken_for_rows():
    """pt-online-schema-change builds a table and triggers whatever the rows: a revision's time less that is
    what its rows took."""
    online = "mysql|COPY|pt-online-schema-change|alter_column"
    fixed = costs.fixed(online)
    assert fixed > 0 and costs.fixed("mysql|COPY||alter_column") == 0
    record = {"seconds": fixed + 8.0, "operations": [{"key": online, "rows": 400_000, "estimate": fixed + 4.0}]}
    assert costs.learned(record) == {online: 50_000.0}


FILL = {
    "mariadb": "INSERT INTO sized SELECT seq, CONCAT('note ', seq) FROM seq_1_to_2000",
    "postgresql": "INSERT INTO sized SELECT g, 'note ' || g FROM generate_series(1, 2000) g",
}


def test_a_table_s_size_is_the_server_s_estimate_without_a_scan(any_database, server_kind):
    """Read with the application's user; before any ANALYZE too (PostgreSQL's never-analyzed table gets the
    planner's guess, not its -1)."""
    from deploy import dialects

    any_database.query("CREATE TABLE sized (id INTEGER PRIMARY KEY, note VARCHAR(100))")
    any_database.query(FILL[server_kind.name])
    engine = sa.create_engine(any_database.app_url)
    try:
        with engine.connect() as connection:
            dialect = dialects.dialect_for(connection)
            if server_kind.name == "postgresql":  # not the migration role's: the application may not read it
                assert dialect.table_size(connection, "sized") is None
                any_database.query(f"GRANT SELECT ON sized TO {any_database.app_user}")
            rows, size = dialect.table_size(connection, "sized")
            assert rows > 0 and size > 0
            assert dialect.table_size(connection, "no_such_table") is None
            any_database.query(ANALYZE[server_kind.name].replace("posts", "sized"))
            connection.rollback()
            assert dialect.table_size(connection, "sized")[0] == 2000
    finally:
        engine.dispose()
