"""Expand and contract (deploy/expand.py, db.revision --expand): a column's rename written as two
revisions. In process for what they contain; on each kind of database server, the triggers that keep
both names equal under writes through either while both releases run, the contract and its downgrade
keeping the rows, and a production upgrade's compatibility check holding the contract back until the
release that maps the old column is gone; in development on SQLite, both in one upgrade."""

import re
import sqlite3

import pytest
import sqlalchemy as sa
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.migration import MigrationContext
from helpers import HEAD, PASSWORD, PRODUCTION, STDIN_PASSWORD, git, ok, one_error_line, release

from deploy import dialects, expand, renames
from deploy.errors import DeployError

TITLE = "title: Mapped[str] = mapped_column(String(200))"
HEADLINE = "headline: Mapped[str] = mapped_column(String(200))"

# -- in process: the two revisions ----------------------------------------------------------------


def posts(*columns: sa.Column, name: str = "posts") -> sa.MetaData:
    metadata = sa.MetaData()
    sa.Table(name, metadata, sa.Column("id", sa.Integer, primary_key=True), *columns)
    return metadata


def split(tmp_path, before: sa.MetaData, after: sa.MetaData, answers: str):
    """The expand and contract revisions' (upgrade, downgrade) code for `answers` under --expand."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'compared.db'}")
    before.create_all(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"render_as_batch": True, "compare_type": True})
        script = produce_migrations(context, after)
        script.rev_id, script.message = "e1", "rename"
        answered = renames.Renames(renames.parse(answers), expand=True)
        renames.rewrite(context, script, answered)
    contract = answered.contract
    assert contract is not None and contract.head == "e1"
    return [
        (render_python_code(each.upgrade_ops), render_python_code(each.downgrade_ops)) for each in (script, contract)
    ]


def test_a_rename_is_split_into_an_expand_and_a_contract_revision(tmp_path):
    before = posts(sa.Column("title", sa.String(200), nullable=False), sa.Column("views", sa.Integer))
    after = posts(
        sa.Column("headline", sa.String(200), nullable=False, server_default="untitled"),
        sa.Column("views", sa.Integer),
        sa.Column("seen", sa.DateTime),
    )
    (expand_up, expand_down), (contract_up, contract_down) = split(tmp_path, before, after, "title:headline")
    # Expand: the new column, loose (both releases leave the other's name out), synced, copied in batches.
    assert "sa.Column('headline', sa.String(length=200), nullable=True))" in expand_up
    assert "sa.Column('seen'" in expand_up  # the rest of autogenerate's changes stay
    assert "op.sync_columns('posts', 'title', 'headline')" in expand_up
    assert "backfill('posts', 'headline = title', where='headline IS NULL', name='posts.headline')" in expand_up
    assert "drop_column" not in expand_up and "server_default" not in expand_up
    assert "op.unsync_columns('posts', 'title', 'headline')" in expand_down
    assert (
        "drop_column('posts', 'headline')" in expand_down and "add_column('posts', sa.Column('title'" not in expand_down
    )
    # Contract: the old column goes, the new one becomes what the models say.
    assert contract_up.index("op.unsync_columns") < contract_up.index("drop_column('posts', 'title')")
    assert "alter_column('posts', 'headline'" in contract_up and "nullable=False" in contract_up
    assert "server_default='untitled'" in contract_up
    # Its downgrade puts the old column back, synced and filled, then NOT NULL as it was.
    assert "sa.Column('title', sa.VARCHAR(length=200), nullable=True))" in contract_down
    assert "backfill('posts', 'title = headline', where='title IS NULL', name='posts.title')" in contract_down
    assert contract_down.rindex("alter_column('posts', 'title'") > contract_down.index("backfill(")


def test_the_new_columns_indexes_are_made_after_the_copy_and_the_old_ones_go_with_the_old_column(tmp_path):
    def unique(column: str) -> sa.UniqueConstraint:
        return sa.UniqueConstraint("author", column, name=f"uq_author_{column}")

    before = posts(sa.Column("author", sa.Integer), sa.Column("title", sa.String(200), index=True), unique("title"))
    after = posts(
        sa.Column("author", sa.Integer), sa.Column("headline", sa.String(200), index=True), unique("headline")
    )
    (expand_up, expand_down), (contract_up, contract_down) = split(tmp_path, before, after, "title:headline")
    for old in ("ix_posts_title", "uq_author_title"):
        assert old not in expand_up + expand_down  # the old release keeps them
        assert contract_up.index(old) < contract_up.index("drop_column('posts', 'title')")
        assert contract_down.index("add_column") < contract_down.index(old)
    for new in ("ix_posts_headline", "uq_author_headline"):
        assert expand_up.index("add_column") < expand_up.index("backfill(") < expand_up.index(new)
        assert expand_down.index(new) < expand_down.index("drop_column")
        assert new not in contract_up + contract_down


def test_a_table_rename_is_not_expanded(tmp_path):
    before = posts(sa.Column("title", sa.String(200)), name="notes")
    after = posts(sa.Column("title", sa.String(200)), name="memos")
    with pytest.raises(DeployError, match="table notes -> memos is a table's: rename it in a revision of its own"):
        split(tmp_path, before, after, "notes:memos")


def test_the_sync_statements_are_the_dialects_and_sqlite_has_none():
    def quote(name):
        return f"`{name}`"

    name = expand.sync_name("posts", "title", "headline")
    mariadb = dialects.dialect_for("mysql").sync_columns("posts", "title", "headline", name, quote)
    assert [statement.split(" ON ")[0] for statement in mariadb] == [
        "CREATE TRIGGER `posts_title_headline_sync_ins` BEFORE INSERT",
        "CREATE TRIGGER `posts_title_headline_sync_upd` BEFORE UPDATE",
    ]
    assert dialects.dialect_for("sqlite").sync_columns("posts", "title", "headline", name, quote) == []
    long = expand.sync_name("p" * 40, "t" * 40, "h" * 40)
    assert len(long) == expand.MAX_NAME and long != expand.sync_name("p" * 40, "t" * 40, "h" * 41)


# -- end to end: the example app's posts.title renamed to headline -----------------------------------


def rename_title(checkout) -> None:
    models = checkout.path / "exampleapp" / "models.py"
    text = models.read_text()
    assert TITLE in text
    models.write_text(text.replace(TITLE, HEADLINE))


def written_pair(checkout, result) -> tuple[str, str]:
    """The expand and contract revisions db.revision --expand wrote (their paths, last): their ids."""
    *_, expand_path, contract_path = result.out.strip().splitlines()
    found = [
        re.search(r"^revision = \W(\w+)\W$", (checkout.path / path).read_text(), re.M)
        for path in (expand_path, contract_path)
    ]
    down = re.search(r"^down_revision = \W(\w+)\W$", (checkout.path / contract_path).read_text(), re.M)
    assert down is not None and down[1] == found[0][1]  # the contract follows the expand
    return found[0][1], found[1][1]


def test_expand_does_not_go_with_empty_and_says_when_there_is_nothing_to_expand(checkout):
    line = one_error_line(checkout.invoke("db.revision", "-m", "blank", "--empty", "--expand"))
    assert "--expand" in line
    ok(checkout.invoke("db.upgrade"))
    rename_title(checkout)
    written = ok(checkout.invoke("db.revision", "-m", "drop and add", "--expand"))
    assert "warning: --expand: no column is renamed, so the revision is written as one" in written.err
    assert len(list(checkout.versions.glob("*drop_and_add*.py"))) == 1


# -- on each kind of database server -----------------------------------------------------------------


def test_both_names_stay_in_sync_under_writes_through_either_while_both_releases_run(checkout, any_database):
    checkout.write_settings(
        "development", SQLALCHEMY_DATABASE_URI=any_database.app_url, SQLALCHEMY_ALEMBIC_URI=any_database.migration_url
    )
    password = PASSWORD + "\n"
    query = any_database.query
    ok(checkout.invoke("db.upgrade", stdin=password))
    query("INSERT INTO users (id, email, name) VALUES (1, 'ann@example.com', 'Ann')")
    query(
        "INSERT INTO posts (id, author_id, slug, title, body) VALUES "
        "(1, 1, 'one', 'First post', ''), (2, 1, 'two', 'Second post', ''), (3, 1, 'three', 'Third post', '')"
    )
    rename_title(checkout)
    written = ok(
        checkout.invoke("db.revision", "-m", "headline", "--renames", "title:headline", "--expand", stdin=password)
    )
    expanding, contracting = written_pair(checkout, written)
    ok(checkout.invoke("db.upgrade", "--to", expanding, stdin=password))

    def both(post_id: int) -> tuple:
        return tuple(query(f"SELECT title, headline FROM posts WHERE id = {post_id}")[0])

    # The releases write as the application's user, who may not create or drop anything.
    application = sa.create_engine(any_database.app_url)

    def write(statement: str) -> None:
        with application.begin() as connection:
            connection.execute(sa.text(statement))

    # The rows there before were copied.
    assert [both(post_id) for post_id in (1, 2, 3)] == [(f"{n} post",) * 2 for n in ("First", "Second", "Third")]
    # The old release writes title only, the new one headline only (title is NOT NULL, without a default).
    write("INSERT INTO posts (id, author_id, slug, title, body) VALUES (4, 1, 'four', 'Old writes', '')")
    write("INSERT INTO posts (id, author_id, slug, headline, body) VALUES (5, 1, 'five', 'New writes', '')")
    assert both(4) == ("Old writes", "Old writes") and both(5) == ("New writes", "New writes")
    write("UPDATE posts SET title = 'Old edits' WHERE id = 1")
    write("UPDATE posts SET headline = 'New edits' WHERE id = 2")
    write("UPDATE posts SET body = 'untouched names' WHERE id = 3")
    assert [both(post_id) for post_id in (1, 2, 3)] == [("Old edits",) * 2, ("New edits",) * 2, ("Third post",) * 2]

    # The contract: the old name gone, the new one NOT NULL, the triggers gone with it.
    ok(checkout.invoke("db.upgrade", stdin=password))
    assert "ok" in ok(checkout.invoke("db.check", stdin=password)).out  # the models' schema exactly
    headlines = [row[0] for row in query("SELECT headline FROM posts ORDER BY id")]
    assert headlines == ["Old edits", "New edits", "Third post", "Old writes", "New writes"]
    query("INSERT INTO posts (id, author_id, slug, headline, body) VALUES (6, 1, 'six', 'After', '')")
    query("DELETE FROM posts WHERE id = 6")
    # Back to the expand: title again, filled and in sync; back again: as before the rename.
    ok(checkout.invoke("db.downgrade", stdin=password))
    write("UPDATE posts SET headline = 'Synced again' WHERE id = 3")
    assert both(3) == ("Synced again",) * 2 and both(4) == ("Old writes",) * 2
    ok(checkout.invoke("db.downgrade", stdin=password))
    titles = [row[0] for row in query("SELECT title FROM posts ORDER BY id")]
    assert titles == ["Old edits", "New edits", "Synced again", "Old writes", "New writes"]
    write("INSERT INTO posts (id, author_id, slug, title, body) VALUES (7, 1, 'seven', 'No trigger left', '')")
    application.dispose()


def test_a_production_upgrade_runs_the_contract_only_once_the_old_release_is_gone(checkout, any_database):
    production = {"env": PRODUCTION, "stdin": STDIN_PASSWORD}
    ok(checkout.invoke("db.upgrade"))  # the development database, which db.revision compares with
    checkout.write_settings(
        "production", SQLALCHEMY_DATABASE_URI=any_database.app_url, SQLALCHEMY_ALEMBIC_URI=any_database.migration_url
    )
    git(checkout, "init", "-q", "-b", "main")
    old = release(checkout, "the release in production, which maps posts.title")
    ok(checkout.invoke("db.upgrade", "--yes", **production))
    rename_title(checkout)
    expanding, contracting = written_pair(
        checkout, ok(checkout.invoke("db.revision", "-m", "headline", "--renames", "title:headline", "--expand"))
    )
    new = release(checkout, "the release that maps posts.headline")

    # Straight to the head while the old release runs: the contract is refused, nothing runs.
    line = one_error_line(checkout.invoke("db.upgrade", "--yes", "--allow-risky", **production))
    assert f"release {old[:7]} still maps posts.title, which revision {contracting} (headline: contract) drops" in line
    assert any_database.version() == HEAD
    # The expand is compatible with it; the upgrade records the new release as the one running.
    done = ok(checkout.invoke("db.upgrade", "--yes", "--to", expanding, **production))
    assert f"compatible with the running release {old[:7]}" in done.out
    # An app server still on the old code, named: the contract is still refused.
    refused = checkout.invoke("db.upgrade", "--yes", "--allow-risky", "--running", old, **production)
    assert "still maps posts.title" in one_error_line(refused)
    # The old release gone: the contract runs (its drop_column is a risk the lint asks to be reviewed).
    done = ok(checkout.invoke("db.upgrade", "--yes", "--allow-risky", **production))
    assert f"compatible with the running release {new[:7]}" in done.out
    assert any_database.version() == contracting


def test_in_development_on_sqlite_both_revisions_run_in_one_upgrade_and_back(checkout):
    ok(checkout.invoke("db.upgrade"))
    rows = (
        "INSERT INTO users (id, email, name) VALUES (1, 'ann@example.com', 'Ann')",
        "INSERT INTO posts (id, author_id, slug, title, body) VALUES "
        "(1, 1, 'one', 'First', ''), (2, 1, 'two', 'Second', '')",
    )
    with sqlite3.connect(checkout.path / "instance" / "development.db") as db:
        for statement in rows:
            db.execute(statement)
    rename_title(checkout)
    ok(checkout.invoke("db.revision", "-m", "headline", "--renames", "title:headline", "--expand"))
    ok(checkout.invoke("db.upgrade"))  # no triggers on SQLite: the expand and the contract run together

    def column(name: str) -> list:
        with sqlite3.connect(checkout.path / "instance" / "development.db") as db:
            return [row[0] for row in db.execute(f"SELECT {name} FROM posts ORDER BY id")]

    assert column("headline") == ["First", "Second"]
    assert "ok" in ok(checkout.invoke("db.check")).out
    ok(checkout.invoke("db.downgrade", "--to", HEAD))
    assert column("title") == ["First", "Second"]
