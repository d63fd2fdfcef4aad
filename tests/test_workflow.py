"""The branch workflow (deploy/checks.py, deploy/branches.py): db.check, db.merge, db.schema, db.revision --base,
db.detect, on real SQLite files and real git repositories."""

import ast
import json
import sqlite3
import subprocess

from helpers import one_error_line

BASE, POSTS, HEAD = "747f7d2e75b9", "06bd3f51a453", "776f3cb23823"
BIO = "    bio: Mapped[str | None] = mapped_column(Text)\n"
NOTE_MODEL = (
    '\n\nclass Note(db.Model):\n    __tablename__ = "notes"\n\n'
    "    id: Mapped[int] = mapped_column(primary_key=True)\n    text: Mapped[str] = mapped_column(Text)\n"
)
CREATE_NOTES = (
    'op.create_table("notes", sa.Column("id", sa.Integer(), primary_key=True), '
    'sa.Column("text", sa.Text(), nullable=False))'
)


def git(checkout, *args):
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=checkout.path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


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
    changed = sorted(line[3:] for line in git(checkout, "status", "--porcelain").splitlines())
    assert changed == ["exampleapp/models.py", f"migrations/versions/{script.name}"]
    assert len(git(checkout, "worktree", "list").splitlines()) == 1
    assert git(checkout, "branch", "--show-current").strip() == "feature"


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
