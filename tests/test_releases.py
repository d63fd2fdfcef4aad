"""The release running against a database (deploy/releases.py), recorded by each upgrade and stamp outside
development and shown by db.status, and a production upgrade's check of that release's code against the
schema it would build (deploy/compatibility.py): locally on a SQLite file with production settings, and
through fab on each kind of database server (real git checkouts on both sides)."""

from helpers import PRODUCTION, STDIN_PASSWORD, git, ok, one_error_line, release

DROP_TITLE = "op.drop_column('posts', 'title')"
ADD_BIO = "op.add_column('users', sa.Column('bio', sa.Text(), nullable=True))"
ADD_NICK = "op.add_column('users', sa.Column('nick', sa.String(20), nullable=False))"
TITLE = "    title: Mapped[str] = mapped_column(String(200))\n"
INCOMPATIBLE = "pass --allow-incompatible"


def production(checkout, *args: str):
    return checkout.invoke(*args, env=PRODUCTION)


def test_a_production_upgrade_records_its_release_and_refuses_what_the_running_one_cannot_run(checkout):
    git(checkout, "init", "-q", "-b", "main")
    checkout.write_settings("production", SQLALCHEMY_DATABASE_URI="sqlite:///production.db")
    first = release(checkout, "the first release")
    ok(production(checkout, "db.upgrade", "--yes"))
    assert f"release:    {first[:7]} (db.upgrade to 776f3cb23823" in ok(production(checkout, "db.status")).out

    # A revision that drops a column the running release still maps: refused before anything runs.
    checkout.add_revision("drop_title", "776f3cb23823", DROP_TITLE)
    line = one_error_line(production(checkout, "db.upgrade", "--yes"))
    assert (
        f"release {first[:7]} still maps posts.title, which revision drop_title (drop_title) drops: "
        "drop it one release after the code stops using it"
    ) in line
    assert INCOMPATIBLE in line
    assert ok(production(checkout, "db.current")).out.startswith("776f3cb23823 (add tags)")

    # The next release stops mapping it and is the one running (not yet recorded: --running says so).
    later = checkout.path.parent / "drop_title.py"
    (checkout.versions / "drop_title.py").rename(later)
    models = checkout.path / "exampleapp" / "models.py"
    models.write_text(models.read_text().replace(TITLE, ""))
    second = release(checkout, "stop using posts.title")
    later.rename(checkout.versions / "drop_title.py")
    status = ok(production(checkout, "db.status", "--running", second)).out
    assert f"release:    {second} (named with --running)" in status
    done = ok(production(checkout, "db.upgrade", "--yes", "--allow-risky", "--running", second))
    assert f"compatible with the running release {second[:7]}" in done.out
    # The checkout's commit that ran it is the release recorded now.
    assert f"release:    {second[:7]} (db.upgrade to drop_title" in ok(production(checkout, "db.status")).out


def test_allow_incompatible_applies_in_a_maintenance_window(checkout):
    git(checkout, "init", "-q", "-b", "main")
    checkout.write_settings("production", SQLALCHEMY_DATABASE_URI="sqlite:///production.db")
    first = release(checkout, "the first release")
    ok(production(checkout, "db.upgrade", "--yes"))
    checkout.add_revision("nick", "776f3cb23823", ADD_NICK)
    line = one_error_line(production(checkout, "db.upgrade", "--yes"))
    assert f"release {first[:7]} inserts into users without nick, which revision nick (nick) makes NOT NULL" in line
    done = ok(production(checkout, "db.upgrade", "--yes", "--allow-incompatible", "--allow-risky"))
    assert f"warning: incompatible: release {first[:7]} inserts into users without nick" in done.out
    assert f"incompatible with the running release {first[:7]}" in done.out


def test_through_fab_the_plan_checks_the_release_running_on_the_server(any_remote):
    remote = any_remote
    git(remote.server, "init", "-q", "-b", "main")
    first = release(remote.server, "deployed")
    remote.upgrade()
    status = ok(remote.fab("prod", "db.status")).out
    assert f"release:    {first[:7]} (db.upgrade to 776f3cb23823" in status

    # A compatible revision: the plan says so, and the release recorded follows the upgrade.
    remote.add_revision("bio", ADD_BIO)
    second = release(remote.server, "add users.bio")
    done = remote.upgrade()
    assert f"compatible with the running release {first[:7]}" in done.out
    assert f"release:    {second[:7]} (db.upgrade to bio" in ok(remote.fab("prod", "db.status")).out

    # A NOT NULL column without a default, which the running release does not write: refused before any
    # password; passes in a maintenance window.
    remote.add_revision("nick", ADD_NICK)
    remote.refuses(
        f"release {second[:7]} inserts into users without nick, which revision nick (nick) makes NOT NULL without "
        "a server default",
        INCOMPATIBLE,
        args=("prod", "db.upgrade", "--yes"),
    )
    result = remote.fab("prod", "db.upgrade", "--yes", "--allow-incompatible", "--allow-risky", stdin=STDIN_PASSWORD)
    assert result.code == 0, result.output
    assert f"incompatible: release {second[:7]} inserts into users without nick" in result.out
    assert remote.database.version() == "nick"

    # A dropped column the running release maps: refused; passes once the release serving stops mapping it
    # (deployed, its app servers restarted, before any upgrade recorded it: --running names it).
    remote.add_revision("drop_title", DROP_TITLE)
    release(remote.server, "drop posts.title")  # deployed, not yet run: the release recorded still serves
    remote.refuses(
        f"release {second[:7]} still maps posts.title, which revision drop_title (drop_title) drops: drop it one "
        "release after the code stops using it",
        args=("prod", "db.upgrade", "--yes", "--allow-risky"),
    )
    models = remote.server.path / "exampleapp" / "models.py"
    models.write_text(models.read_text().replace(TITLE, ""))
    fourth = release(remote.server, "stop using posts.title")
    done = remote.upgrade("--allow-risky", f"--running={fourth}")
    assert f"compatible with the running release {fourth[:7]}" in done.out
    assert remote.database.version() == "drop_title"


def test_a_release_that_is_not_a_commit_is_unchecked_not_refused(checkout):
    git(checkout, "init", "-q", "-b", "main")
    checkout.write_settings("production", SQLALCHEMY_DATABASE_URI="sqlite:///production.db")
    release(checkout, "the first release")
    ok(production(checkout, "db.upgrade", "--yes"))
    checkout.add_revision("drop_title", "776f3cb23823", DROP_TITLE)
    done = ok(production(checkout, "db.upgrade", "--yes", "--allow-risky", "--running", "v0.9-gone"))
    assert "unchecked: release v0.9-gone cannot be checked ('v0.9-gone' is not a commit of the git repository" in (
        done.out
    )
