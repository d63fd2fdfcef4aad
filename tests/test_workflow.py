"""The branch workflow (deploy/checks.py, deploy/branches.py): db.check, db.merge, db.schema, db.revision --base,
db.detect, on real SQLite files and real git repositories; then db.check --url, db.schema and db.detect on
each kind of database server (`server_kind`), and `fab prod db.detect` through the loopback sshd."""

import ast
import json
import sqlite3
from urllib.parse import quote

from helpers import HEAD, PASSWORD, POSTS, PRODUCTION, STDIN_PASSWORD, git, one_error_line, refused

BIO = "    bio: Mapped[str | None] = mapped_column(Text)\n"
NOTE_MODEL = (
    '\n\nclass Note(db.Model):\n    __tablename__ = "notes"\n\n'
    "    id: Mapped[int] = mapped_column(primary_key=True)\n    text: Mapped[str] = mapped_column(Text)\n"
)
CREATE_NOTES = (
    'op.create_table("notes", sa.Column("id", sa.Integer(), primary_key=True), '
    'sa.Column("text", sa.Text(), nullable=False))'
)


def commit_all(checkout, message):
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", message)


def init_repository(checkout):
    git(checkout, "init", "-q", "-b", "main")
    commit_all(checkout, "base")


def add_bio(checkout):
    """A column on an existing model (users.bio)."""
    models = checkout.path / "exampleapp" / "models.py"
    anchor = "    name: Mapped[str] = mapped_column(String(100))\n"
    models.write_text(models.read_text().replace(anchor, anchor + BIO, 1))


def add_note_model(checkout, module="models.py"):
    """A new model (notes), in models.py or in a module of its own."""
    path = checkout.path / "exampleapp" / module
    if module == "models.py":
        path.write_text(path.read_text() + NOTE_MODEL)
    else:
        imports = (
            "from sqlalchemy import Text\nfrom sqlalchemy.orm import Mapped, mapped_column\n\nfrom .models import db"
        )
        path.write_text(imports + NOTE_MODEL)


def upgrade_calls(path) -> list[str]:
    """The op./batch_op. calls in a revision's upgrade(), batch_alter_table (a wrapper) left out."""
    tree = ast.parse(path.read_text())
    upgrade = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "upgrade")
    return sorted(
        node.func.attr
        for node in ast.walk(upgrade)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in ("op", "batch_op")
        and node.func.attr not in ("batch_alter_table", "f")
    )


def check(checkout) -> tuple[int, list[str], dict]:
    result = checkout.invoke("db.check", "--json")
    found = json.loads(result.out.strip().splitlines()[-1])
    assert (result.code == 0) == found["ok"], result.output
    return result.code, [problem["check"] for problem in found["problems"]], found


def dev_db(checkout):
    return checkout.path / "instance" / "development.db"


def test_revision_against_the_base_branch(checkout):
    init_repository(checkout)
    git(checkout, "switch", "-q", "-c", "feature")
    add_bio(checkout)
    add_note_model(checkout)
    # The development database already has the feature's schema: autogenerating against it finds nothing.
    assert checkout.invoke("db.reset").code == 0
    assert "no schema changes detected" in checkout.invoke("db.revision", "-m", "against dev").out
    before = dev_db(checkout).read_bytes()

    result = checkout.invoke("db.revision", "-m", "bio and notes", "--base", "main")
    assert result.code == 0, result.output
    script = checkout.path / result.out.strip().splitlines()[-1]
    assert upgrade_calls(script) == ["add_column", "create_table"]
    assert f'down_revision = "{HEAD}"' in script.read_text()
    # Untouched: the development database, the working tree (but the new script), git's worktrees.
    assert dev_db(checkout).read_bytes() == before
    changed = sorted(git(checkout, "ls-files", "--modified", "--others", "--exclude-standard").splitlines())
    assert changed == ["exampleapp/models.py", f"migrations/versions/{script.name}"]
    assert len(git(checkout, "worktree", "list").splitlines()) == 1
    assert git(checkout, "branch", "--show-current") == "feature"


def test_revision_against_a_base_follows_this_branchs_own_revisions(checkout):
    init_repository(checkout)
    git(checkout, "switch", "-q", "-c", "feature")
    add_note_model(checkout)
    first = checkout.invoke("db.revision", "-m", "notes", "--base", "main")
    assert first.code == 0, first.output
    assert upgrade_calls(checkout.path / first.out.strip().splitlines()[-1]) == ["create_table"]
    # The second revision is built on the first, which only this branch has.
    second = checkout.invoke("db.revision", "-m", "again", "--base", "main")
    assert "no schema changes detected" in second.out, second.output
    assert not dev_db(checkout).exists()


def test_revision_against_a_base_refuses_in_one_line(checkout):
    assert "not in a git repository" in one_error_line(checkout.invoke("db.revision", "-m", "x", "--base", "main"))
    init_repository(checkout)
    assert "unknown branch 'nope'" in one_error_line(checkout.invoke("db.revision", "-m", "x", "--base", "nope"))
    checkout.add_revision("one", HEAD)
    checkout.add_revision("two", HEAD)
    commit_all(checkout, "two heads")
    git(checkout, "switch", "-q", "-c", "feature")
    (checkout.versions / "two.py").unlink()  # this branch merged nothing: one head here, two on main
    line = one_error_line(checkout.invoke("db.revision", "-m", "x", "--base", "main"))
    assert "main's schema" in line and "2 heads" in line
    assert len(git(checkout, "worktree", "list").splitlines()) == 1


def test_check_passes_and_finds_model_drift_without_the_development_database(checkout):
    code, problems, found = check(checkout)
    assert (code, problems, found["round_tripped"]) == (0, [], 3)
    add_bio(checkout)
    result = checkout.invoke("db.check")
    assert result.code == 1
    assert "FAILED drift" in result.out and "op.add_column('users', sa.Column('bio'" in result.out
    assert one_error_line(result) == "error: db.check failed: drift"
    assert not dev_db(checkout).exists()


def test_check_finds_two_heads_and_merge_joins_them(checkout):
    checkout.add_revision("one", HEAD)
    checkout.add_revision("two", HEAD)
    code, problems, found = check(checkout)
    assert code == 1 and problems == ["heads"], found
    assert "invoke db.merge" in found["problems"][0]["message"]

    merged = checkout.invoke("db.merge")
    assert merged.code == 0, merged.output
    script = checkout.path / merged.out.strip().splitlines()[-1]
    text = script.read_text()
    assert "merge heads one and two" in text and "down_revision = (" in text
    assert checkout.head() == script.name.split("_")[1]
    assert "nothing to merge" in checkout.invoke("db.merge").out
    assert check(checkout)[:2] == (0, [])


def test_check_finds_a_downgrade_that_does_not_undo_its_upgrade(checkout):
    add_note_model(checkout)
    checkout.add_revision("notes", HEAD, upgrade=CREATE_NOTES, downgrade="pass")
    code, problems, found = check(checkout)
    assert (code, problems) == (1, ["downgrade"]), found
    assert "table notes left over" in found["problems"][0]["message"]
    assert found["problems"][0]["details"] == ["op.drop_table('notes')"]
    (checkout.versions / "notes.py").write_text(
        (checkout.versions / "notes.py")
        .read_text()
        .replace("def downgrade():\n    pass", "def downgrade():\n    op.drop_table('notes')")
    )
    assert check(checkout)[:2] == (0, [])


def test_check_finds_a_model_module_that_is_not_imported(checkout):
    add_note_model(checkout, "notes.py")
    checkout.add_revision("notes", HEAD, upgrade=CREATE_NOTES, downgrade="op.drop_table('notes')")
    code, problems, found = check(checkout)
    assert (code, problems) == (1, ["models"]), found
    assert "a model module may not be imported" in found["problems"][0]["message"]
    models = checkout.path / "exampleapp" / "models.py"
    models.write_text(models.read_text() + "\nfrom . import notes  # noqa: E402, F401\n")
    assert check(checkout)[:2] == (0, [])


def test_schema_lists_the_live_schema_and_diffs_it_with_the_models(checkout):
    assert "no database at" in one_error_line(checkout.invoke("db.schema"))
    checkout.invoke("db.reset")
    result = checkout.invoke("db.schema", "--diff")
    assert result.code == 0, result.output
    assert f"({HEAD}): 4 tables" in result.out
    assert "table users\n  id INTEGER NOT NULL PRIMARY KEY\n  email VARCHAR(255) NOT NULL\n" in result.out
    assert "  status VARCHAR(20) NOT NULL DEFAULT 'draft'" in result.out
    assert "  index ix_posts_author_id (author_id)" in result.out
    assert "fk_post_tags_post_id_posts (post_id) -> posts(id) ON DELETE CASCADE" in result.out
    assert result.out.rstrip().endswith("the models match the database")
    add_bio(checkout)
    drifted = checkout.invoke("db.schema", "--diff")
    assert "(1 operation):\n  op.add_column('users', sa.Column('bio', sa.Text(), nullable=True))" in drifted.out


def test_detect_finds_the_revision_an_unstamped_database_matches(checkout):
    checkout.invoke("db.upgrade", "--to", POSTS)
    with sqlite3.connect(dev_db(checkout)) as db:
        db.execute("drop table alembic_version")
    unconfirmed = checkout.invoke("db.detect")
    assert f"matches revision {POSTS}" in unconfirmed.out
    assert "not confirmed" in one_error_line(unconfirmed)
    result = checkout.invoke("db.detect", "--yes")
    assert result.code == 0, result.output
    assert f"matches revision {POSTS}" in result.out and f"stamped at {POSTS}" in result.out
    assert "stamped already" in one_error_line(checkout.invoke("db.detect"))


# -- on a database server of each kind -------------------------------------------------------------


def scratch_url(database) -> str:
    """The migration user's URL with its password, percent-encoded as a URL wants it."""
    scheme = database.migration_url.split("://", 1)[0]
    user, port = database.migration_user, database.server.port
    return f"{scheme}://{user}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/{database.name}"


def upgrade(checkout, database, to: str = "head") -> None:
    checkout.use_production(database)
    result = checkout.invoke("db.upgrade", "--yes", f"--to={to}", stdin=STDIN_PASSWORD, env=PRODUCTION)
    assert result.code == 0, result.output
    assert database.version() == (HEAD if to == "head" else to)


def unstamped_at(checkout, database, revision: str) -> None:
    """A database that predates the migrations: revision's schema, no alembic_version."""
    upgrade(checkout, database, revision)
    database.query("DROP TABLE alembic_version")
    assert database.version() is None and database.tables()


# What the checks could leave behind besides tables: views and sequences, and PostgreSQL's types.
LEFTOVERS = {
    "mariadb": "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
    "postgresql": "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = 'public' UNION ALL "
    "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
    "WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c') AND t.typrelid = 0",
}
# A table made as a migration would have made it: the migration user's own.
LEGACY_TABLE = {
    "mariadb": "CREATE TABLE legacy (id INT PRIMARY KEY)",
    "postgresql": 'CREATE TABLE legacy (id int PRIMARY KEY); ALTER TABLE legacy OWNER TO "{owner}"',
}
# How db.schema shows a users column of each kind's own.
USERS_COLUMNS = {
    "mariadb": ("table users\n  id INTEGER NOT NULL PRIMARY KEY\n",),
    "postgresql": (
        "table users\n  id INTEGER NOT NULL PRIMARY KEY DEFAULT nextval('users_id_seq'::regclass)\n",
        "  status VARCHAR(20) NOT NULL DEFAULT 'draft'::character varying\n",
    ),
}


def test_check_on_an_empty_database_passes_then_finds_drift_and_drops_what_it_built(
    checkout, server_kind, any_database
):
    database = any_database
    url = scratch_url(database)
    result = checkout.invoke("db.check", "--url", url)
    assert result.code == 0, result.output
    assert f"on {database.migration_user}@127.0.0.1:{database.server.port}/{database.name}: 3 round trips" in result.out
    assert result.out.rstrip().endswith("ok")
    assert PASSWORD not in result.output
    assert database.tables() == set() and database.query(LEFTOVERS[server_kind.name]) == ()

    add_bio(checkout)
    drifted = checkout.invoke("db.check", "--url", url)
    assert "FAILED drift" in drifted.out and "op.add_column('users', sa.Column('bio'" in drifted.out
    assert one_error_line(drifted) == "error: db.check failed: drift"
    assert database.tables() == set() and database.query(LEFTOVERS[server_kind.name]) == ()


def test_check_refuses_a_database_that_is_not_empty(checkout, server_kind, any_database):
    any_database.query(LEGACY_TABLE[server_kind.name].format(owner=any_database.migration_user))
    line = one_error_line(checkout.invoke("db.check", "--url", scratch_url(any_database)))
    assert "is not empty (legacy)" in line and PASSWORD not in line
    assert any_database.tables() == {"legacy"}


def test_schema_and_diff_read_a_production_database(checkout, server_kind, any_database):
    database = any_database
    upgrade(checkout, database)
    result = checkout.invoke("db.schema", "--diff", env=PRODUCTION)
    assert result.code == 0, result.output
    # Read with the application's user: no password asked for.
    assert f"{database.app_user}@127.0.0.1:{database.server.port}/{database.name} ({HEAD}): 4 tables" in result.out
    for column in USERS_COLUMNS[server_kind.name]:
        assert column in result.out
    assert "fk_post_tags_post_id_posts (post_id) -> posts(id) ON DELETE CASCADE" in result.out
    # A unique constraint is an index too: listed once.
    assert result.out.count("uq_users_email") == 1, result.out
    assert result.out.rstrip().endswith("the models match the database")
    plain = checkout.invoke("db.schema", env=PRODUCTION)
    assert plain.code == 0 and "the models" not in plain.out, plain.output
    add_bio(checkout)
    drifted = checkout.invoke("db.schema", "--diff", env=PRODUCTION)
    assert "(1 operation):\n  op.add_column('users', sa.Column('bio', sa.Text(), nullable=True))" in drifted.out


def test_detect_stamps_the_revision_a_database_matches(checkout, any_database):
    """--report reads without a password and stamps nothing; then the stamp, once confirmed."""
    database = any_database
    checkout.use_production(database)
    assert "has no tables" in one_error_line(checkout.invoke("db.detect", "--report", env=PRODUCTION))
    unstamped_at(checkout, database, POSTS)
    report = checkout.invoke("db.detect", "--report", env=PRODUCTION)
    assert report.code == 0 and report.out.rstrip().splitlines()[-1] == f"match: {POSTS}", report.output
    assert database.version() is None
    unconfirmed = checkout.invoke("db.detect", stdin=STDIN_PASSWORD, env=PRODUCTION)
    assert f"matches revision {POSTS}" in unconfirmed.out
    assert "not confirmed" in one_error_line(unconfirmed)
    assert database.version() is None
    result = checkout.invoke("db.detect", "--yes", stdin=STDIN_PASSWORD, env=PRODUCTION)
    assert result.code == 0, result.output
    assert f"matches revision {POSTS}" in result.out and f"stamped at {POSTS}" in result.out
    assert PASSWORD not in result.output
    assert database.version() == POSTS
    assert "stamped already" in one_error_line(checkout.invoke("db.detect", "--report", env=PRODUCTION))


def test_fab_detect_stamps_the_servers_database_after_confirmation(remote):
    unstamped_at(remote.server, remote.database, POSTS)
    before = remote.state()
    # No terminal and no --yes: the answer is no, before any password is read.
    unconfirmed = remote.fab("prod", "db.detect", stdin=STDIN_PASSWORD)
    assert f"matches revision {POSTS}" in unconfirmed.out
    refused(unconfirmed, "not confirmed")
    assert remote.state() == before

    result = remote.fab("prod", "db.detect", "--yes", stdin=STDIN_PASSWORD)
    assert result.code == 0, result.output
    assert f"matches revision {POSTS}" in result.out and f"stamped at {POSTS}" in result.out
    assert f"match: {POSTS}" not in result.out
    assert PASSWORD not in result.output
    assert remote.state() == (POSTS, before[1] | {"alembic_version"})
    refused(remote.fab("prod", "db.detect", "--yes", stdin=STDIN_PASSWORD), "stamped already")


def test_fab_detect_stamps_nothing_without_a_single_match(remote):
    remote.database.query("CREATE TABLE legacy (id INT PRIMARY KEY)")
    remote.refuses("no single revision matches", args=("prod", "db.detect", "--yes"))
