"""Data prechecks before an upgrade (deploy.review.prechecks): what each pending operation would fail on
among the rows there now, read with the application's user before anything is asked.

What to check is decided in-process from the recorded operations; the queries run on real SQLite files
in-process, and end to end on MariaDB and PostgreSQL, locally and through fab."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.config import Config
from helpers import HEAD, PRODUCTION, STDIN_PASSWORD, refused

from deploy.review import prechecks


def config_with(checkout, *revisions: tuple[str, str]) -> tuple[Config, list[str]]:
    """`revisions` ((name, upgrade body) in order) on top of the example's head."""
    down = HEAD
    for name, body in revisions:
        checkout.add_revision(name, down, body)
        down = name
    return Config(str(checkout.path / "alembic.ini")), [name for name, _ in revisions]


def subjects(checks) -> list[str]:
    return [check.subject for check in checks]


def test_what_each_operation_is_checked_for(checkout):
    config, revisions = config_with(
        checkout,
        (
            "p1",
            "op.alter_column('posts', 'status', existing_type=sa.String(20), nullable=False)\n"
            "    op.create_index('ix_posts_title', 'posts', ['title'], unique=True)\n"
            "    op.create_foreign_key('fk_posts_tags', 'posts', 'tags', ['status'], ['name'])\n"
            "    op.alter_column('posts', 'slug', type_=sa.String(50), existing_type=sa.String(200))\n"
            "    op.alter_column('posts', 'title', type_=sa.String(300), existing_type=sa.String(200))\n"
            "    op.create_check_constraint('ck_posts_title', 'posts', 'length(title) > 0')\n"
            "    op.alter_column('posts', 'status', type_=sa.Enum('draft', 'live'), existing_type=sa.String(20))\n"
            "    op.create_index('ix_live_slug', 'posts', ['slug'], unique=True, postgresql_where=sa.text('id > 0'))",
        ),
    )
    checks = prechecks.planned(config, revisions, "mysql")
    assert subjects(checks) == [
        "posts.status: NOT NULL",
        "posts.ix_posts_title: unique (title)",
        "posts.fk_posts_tags: foreign key (status)",
        "posts.slug: VARCHAR(50)",  # the longer title is no risk: not checked
        "posts.ck_posts_title: CHECK (length(title) > 0)",
        "posts.status: enum (draft, live)",
        "posts.ix_live_slug",  # partial: unchecked
    ]
    assert str(checks[-1].result()) == "p1: posts.ix_live_slug: a partial index, or one on the start of its values"
    assert [check.finding for check in checks[:2]] == [
        "alter_column posts.status NOT NULL",
        "create_index posts.ix_posts_title",
    ]
    # PostgreSQL adds a NOT VALID constraint without reading the rows there: nothing to check.
    config, revisions = config_with(
        checkout, ("p2", "op.create_check_constraint('ck_x', 'posts', 'id > 0', postgresql_not_valid=True)")
    )
    assert prechecks.planned(config, revisions, "postgresql") == []


def test_what_the_range_created_or_changed_first_is_not_read(checkout):
    config, revisions = config_with(
        checkout,
        (
            "q1",
            "op.add_column('posts', sa.Column('lang', sa.String(5)))\n"
            "    op.create_table('notes', sa.Column('id', sa.Integer, primary_key=True), sa.Column('text', sa.Text))\n"
            "    op.alter_column('users', 'name', new_column_name='full_name', existing_type=sa.String(100))",
        ),
        (
            "q2",
            "op.alter_column('posts', 'lang', existing_type=sa.String(5), nullable=False)\n"
            "    op.create_index('ix_notes_text', 'notes', ['text'], unique=True)\n"
            "    op.alter_column('users', 'full_name', existing_type=sa.String(100), nullable=False)\n"
            "    op.execute('UPDATE posts SET title = slug')\n"
            "    op.create_index('ix_posts_title', 'posts', ['title'], unique=True)\n"
            "    op.execute('DROP VIEW IF EXISTS post_counts')\n"
            "    op.create_index('ix_tags_name', 'tags', ['name'], unique=True)",
        ),
    )
    checks = prechecks.planned(config, revisions, "mysql")
    # posts.lang and notes are new: no check; the renamed column is read by the name it has now.
    assert [str(check.result()) if isinstance(check, prechecks.Unchecked) else check.subject for check in checks] == [
        "users.full_name: NOT NULL",
        "q2: posts.ix_posts_title: its rows are changed first, by execute UPDATE posts SET title = slug",
        "q2: execute DROP VIEW IF EXISTS post_counts: raw SQL the prechecks cannot read",
        "q2: tags.ix_tags_name: its rows are changed first, by execute DROP VIEW IF EXISTS post_counts",
    ]
    assert checks[0].names == ("name",)


def sqlite_rows(path) -> sa.Connection:
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT, status TEXT)")
        connection.exec_driver_sql(
            "INSERT INTO posts VALUES (4, 'a', NULL), (9, 'a', NULL), (17, 'b', NULL), (20, 'b', 'x'), (21, 'c', 'x')"
        )
    return engine.connect()


def test_counts_and_keys_of_the_rows_that_break_it(tmp_path):
    checks = [
        prechecks.NotNull("r", "f", False, "posts.status: NOT NULL", ("posts", None), names=("status",)),
        prechecks.Unique("r", "f", False, "posts.ix: unique (title)", ("posts", None), names=("title",)),
        prechecks.Unique("r", "f", False, "posts.ix2: unique (status)", ("posts", None), names=("status",)),
    ]
    with sqlite_rows(tmp_path / "rows.db") as connection:
        results = prechecks.run(connection, checks, 5)
    assert [str(result) for result in results] == [
        "r: posts.status: NOT NULL, but 3 rows hold NULL (id 4, 9, 17): fill them first, in this revision or one"
        " before it",
        "r: posts.ix: unique (title), but 2 values are held by more than one row, 4 rows in all (title 'a', 'b'):"
        " remove the duplicates first, in this revision or one before it",
        # NULLs never clash in a unique index.
        "r: posts.ix2: unique (status), but 1 value is held by more than one row, 2 rows in all (status 'x'):"
        " remove the duplicates first, in this revision or one before it",
    ]
    assert [result.count for result in results] == [3, 2, 1]


def test_a_check_past_its_time_limit_is_stopped_on_sqlite(tmp_path):
    # Tens of seconds on each row unless stopped.
    counted = "SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000000"
    slow = f"(WITH RECURSIVE n(i) AS ({counted}) SELECT count(*) FROM n) > 0"
    check = prechecks.Violates("r", "f", False, "posts.ck: CHECK (...)", ("posts", None), condition=slow)
    with sqlite_rows(tmp_path / "rows.db") as connection:
        (result,) = prechecks.run(connection, [check], 0.2)
        assert connection.exec_driver_sql("SELECT count(*) FROM posts").scalar() == 5  # still usable
    assert str(result) == "r: posts.ck: CHECK (...): not checked: too slow (over 0.2 s)"


# -- end to end, on MariaDB and PostgreSQL -------------------------------------------------------------

# An applied revision: posts get a summary, which may be NULL.
SUMMARY = "op.add_column('posts', sa.Column('summary', sa.String(50)))"
LANG = "op.add_column('posts', sa.Column('lang', sa.String(5), server_default='en'))"
BREAKING = (
    "op.alter_column('posts', 'summary', existing_type=sa.String(50), nullable=False)\n"
    "    op.create_index('ix_posts_title', 'posts', ['title'], unique=True)\n"
    "    op.alter_column('posts', 'lang', existing_type=sa.String(5), nullable=False)\n"
    "    op.execute('DROP VIEW IF EXISTS no_such_view')"
)
EXPECTED = (
    "2 pending operations would fail on the rows there now",
    "posts.summary: NOT NULL, but 3 rows hold NULL (id 4, 9, 17): fill them first",
    "posts.ix_posts_title: unique (title), but 1 value is held by more than one row, 2 rows in all (title 'same')",
)
# A condition that takes a while on every row, as each kind of server spells it.
SLEEPING = {"mariadb": "SLEEP(5) = 0", "postgresql": "pg_sleep(5) IS NOT NULL"}


def fill(database) -> None:
    """A user and five posts: three without a summary, two with the same title."""
    database.query("INSERT INTO users (id, email, name) VALUES (1, 'a@example.org', 'A')")
    rows = [(4, None, "one"), (9, None, "same"), (17, None, "same"), (20, "s", "four"), (21, "s", "five")]
    for post, summary, title in rows:
        value = "NULL" if summary is None else f"'{summary}'"
        database.query(
            f"INSERT INTO posts (id, author_id, slug, title, body, summary) VALUES ({post}, 1, 's{post}', '{title}',"
            f" '', {value})"
        )


def test_rows_that_break_a_pending_operation_are_refused_before_any_password(any_remote):
    remote = any_remote
    remote.add_revision("summary00001", SUMMARY)
    remote.upgrade()
    fill(remote.database)
    # posts.lang is added by the first pending revision: the second one's NOT NULL on it is not checked.
    remote.add_revision("lang00000001", LANG)
    remote.add_revision("break0000001", BREAKING)
    before = remote.state()
    line = remote.refuses(*EXPECTED)
    assert "posts.lang" not in line
    assert "Password" not in remote.fab("prod", "db.upgrade").output
    # The same refusal on the server itself, with nothing on stdin: no question, no password prompt.
    local = remote.server.invoke("db.upgrade", "--yes", env=PRODUCTION)
    assert refused(local, *EXPECTED) and "Password" not in local.output
    assert remote.state() == before
    # Fixed, the upgrade goes ahead (its lint findings allowed), the raw SQL shown in the plan as unchecked.
    remote.database.query("UPDATE posts SET summary = 'filled' WHERE summary IS NULL")
    remote.database.query("UPDATE posts SET title = 'other' WHERE id = 17")
    result = remote.fab("prod", "db.upgrade", "--yes", "--allow-risky", stdin=STDIN_PASSWORD)
    assert result.code == 0, result.output
    unchecked = [line for line in result.out.splitlines() if line.startswith("unchecked: ")]
    assert unchecked == [
        "unchecked: break0000001: execute DROP VIEW IF EXISTS no_such_view: raw SQL the prechecks cannot read",
        # The test's checkouts have no git: the release running is not known, and the plan says so too.
        "unchecked: the release running is not known (each upgrade outside development records its own; "
        "--running REF names it): 2 pending revisions not checked against it",
    ]
    assert remote.database.version() == "break0000001"


def test_a_precheck_past_its_time_limit_is_not_checked_but_a_risk(checkout, any_database, server_kind):
    checkout.use_production(any_database)
    env = {**PRODUCTION, "INVOKE_DB_SAFETY_PRECHECK_TIMEOUT": "0.5"}
    checkout.add_revision("summary00001", HEAD, SUMMARY)
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env).code == 0
    fill(any_database)
    condition = SLEEPING[server_kind.name]
    checkout.add_revision(
        "slow00000001", "summary00001", f"op.create_check_constraint('ck_slow', 'posts', {condition!r})"
    )
    result = checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env)
    refused(result, "slow00000001: posts.ck_slow: CHECK", "not checked: too slow (over 0.5 s)", "--allow-risky")
    assert any_database.version() == "summary00001"
