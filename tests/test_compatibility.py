"""Two releases live at once (deploy/compatibility.py, deploy/release_probe.py): the code of a release
still running, loaded from a git worktree in a process of its own, worked against the schema the
pending revisions build, on real git repositories and scratch SQLite files; `db.check --compatible-with`."""

import json

import pytest
from helpers import HEAD, git, one_error_line, release

from deploy import alembic_ops, compatibility

DROP_TITLE = "op.drop_column('posts', 'title')"
ADD_NICK = "op.add_column('users', sa.Column('nick', sa.String(20), nullable=False))"
ADD_NICK_DEFAULT = "op.add_column('users', sa.Column('nick', sa.String(20), nullable=False, server_default='x'))"
TITLE = "    title: Mapped[str] = mapped_column(String(200))\n"


@pytest.fixture
def released(checkout) -> str:
    """The example app, committed as the release running in production."""
    git(checkout, "init", "-q", "-b", "main")
    return release(checkout, "the release in production")


def verdict(checkout, running: str) -> compatibility.Verdict:
    config = alembic_ops.load_config(checkout.path / "alembic.ini")
    revisions = compatibility.pending_since(config, running)
    return compatibility.check(config, running, revisions, "heads", "development")


def stop_mapping_title(checkout) -> None:
    models = checkout.path / "exampleapp" / "models.py"
    models.write_text(models.read_text().replace(TITLE, ""))


def test_a_dropped_column_the_running_release_maps_is_told_until_a_release_stops_mapping_it(checkout, released):
    checkout.add_revision("drop_title", HEAD, DROP_TITLE)
    found = verdict(checkout, released)
    short = released[:7]
    assert found.failures == [
        f"release {short} still maps posts.title, which revision drop_title (drop_title) drops: "
        "drop it one release after the code stops using it"
    ]
    assert found.note == f"incompatible with the running release {short}"
    assert not (checkout.path.parent / "release").exists()
    assert len(git(checkout, "worktree", "list").splitlines()) == 1  # the release's worktree is gone

    # The next release stops mapping it (the revision not yet in it): then the drop is compatible.
    later = checkout.path.parent / "drop_title.py"
    (checkout.versions / "drop_title.py").rename(later)
    stop_mapping_title(checkout)
    stopped = release(checkout, "stop using posts.title")
    later.rename(checkout.versions / "drop_title.py")
    found = verdict(checkout, stopped)
    assert found.compatible, found
    assert found.revisions == ["drop_title"]
    assert found.note == f"compatible with the running release {stopped[:7]}"


def test_a_not_null_column_without_a_default_is_caught_by_the_insert(checkout, released):
    checkout.add_revision("nick", HEAD, ADD_NICK)
    found = verdict(checkout, released)
    assert found.failures == [
        f"release {released[:7]} inserts into users without nick, which revision nick (nick) makes NOT NULL "
        "without a server default: give it a server default, or make it NOT NULL one release after the code sets it"
    ]


def test_a_not_null_column_with_a_server_default_is_compatible(checkout, released):
    checkout.add_revision("nick", HEAD, ADD_NICK_DEFAULT)
    found = verdict(checkout, released)
    assert found.compatible, found
    assert str(found) == f"1 revision compatible with release {released[:7]}"


def test_a_release_that_cannot_be_loaded_is_told_in_one_line_as_unchecked(checkout, released):
    models = checkout.path / "exampleapp" / "models.py"
    models.write_text("import no_such_module\n" + models.read_text())
    broken = release(checkout, "a release that does not import")
    models.write_text(models.read_text().replace("import no_such_module\n", ""))
    checkout.add_revision("drop_title", HEAD, DROP_TITLE)
    found = verdict(checkout, broken)
    assert not found.compatible and not found.failures
    assert found.unchecked == (
        f"release {broken[:7]} cannot be checked (its models did not load: ModuleNotFoundError: No module named "
        "'no_such_module'): 1 pending revision not checked against it"
    )
    assert found.note.startswith("unchecked: release ")

    config = alembic_ops.load_config(checkout.path / "alembic.ini")
    unknown = compatibility.check(config, "f" * 40, ["drop_title"], "heads", "development")
    assert "is not a commit of the git repository" in unknown.unchecked


def test_db_check_compatible_with_a_release_in_ci(checkout, released):
    # A revision that only adds what the running release does not use: round trips, matches the models.
    models = checkout.path / "exampleapp" / "models.py"
    anchor = "    name: Mapped[str] = mapped_column(String(100))\n"
    models.write_text(
        models.read_text().replace(anchor, anchor + "    bio: Mapped[str | None] = mapped_column(Text)\n")
    )
    checkout.add_revision(
        "bio",
        HEAD,
        "op.add_column('users', sa.Column('bio', sa.Text(), nullable=True))",
        "op.drop_column('users', 'bio')",
    )
    passed = checkout.invoke("db.check", "--compatible-with", "main")
    assert passed.code == 0, passed.output
    assert f"1 revision compatible with release main ({released[:7]})" in passed.out

    checkout.add_revision(
        "nick", "bio", ADD_NICK, "op.drop_column('users', 'nick')"
    )  # the models do not have it either: drift as well
    failed = checkout.invoke("db.check", "--json", "--compatible-with", "main")
    assert "db.check failed: " in one_error_line(failed) and "compatible" in one_error_line(failed)
    report = json.loads(failed.out.strip().splitlines()[-1])
    (problem,) = [problem for problem in report["problems"] if problem["check"] == "compatible"]
    assert problem["details"] == [
        f"release main ({released[:7]}) inserts into users without nick, which revision nick (nick) makes NOT NULL "
        "without a server default: give it a server default, or make it NOT NULL one release after the code sets it"
    ]
