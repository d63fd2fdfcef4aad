"""Revision checksums: a revision edited after it ran is told by db.status and refused by upgrades and
downgrades, locally and through fab, until `db.accept` records the file as it is now."""

from __future__ import annotations

from helpers import HEAD, POSTS, STDIN_PASSWORD, all_tables, ok, one_error_line, refused

from deploy.review import checksums

EDITED = "7e57ed000001"


def edit(path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def test_an_edited_revision_is_told_refused_and_accepted(checkout):
    path = checkout.add_revision(EDITED, HEAD, upgrade="op.create_table('notes', sa.Column('id', sa.Integer))")
    ok(checkout.invoke("db.reset"))
    checkout.invoke("db.downgrade", "--to=-1")
    ok(checkout.invoke("db.upgrade"))
    assert "edited:" not in ok(checkout.invoke("db.status")).out

    # Only the text: a comment.
    edit(path, '"""7e57ed000001"""', '"""7e57ed000001: notes"""')
    status = ok(checkout.invoke("db.status")).out
    assert f"edited:     {EDITED} ({path}) was edited after it ran here: only its text changed" in status, status
    line = one_error_line(checkout.invoke("db.downgrade", "--to=-1"))
    assert f"`invoke db.accept {EDITED}` after review" in line and "`invoke db.reset`" in line, line
    assert checkout.invoke("db.current").out.startswith(EDITED)

    # The operations: another table.
    edit(path, "sa.Column('id', sa.Integer))", "sa.Column('id', sa.Integer))\n    op.create_table('more')")
    assert "its upgrade's operations changed" in ok(checkout.invoke("db.status")).out

    accepted = ok(checkout.invoke("db.accept", EDITED[:6]))
    assert f"{EDITED} ({path.name}) is accepted" in accepted.out, accepted.out
    assert "edited:" not in ok(checkout.invoke("db.status")).out
    ok(checkout.invoke("db.downgrade", "--to=-1"))


def test_only_applied_revisions_can_be_accepted(checkout):
    checkout.invoke("db.reset")
    checkout.invoke("db.downgrade", "--to=-1")
    line = one_error_line(checkout.invoke("db.accept", HEAD))
    assert f"{HEAD} is not applied" in line, line
    assert "Can't locate revision identified by 'nosuch'" in one_error_line(checkout.invoke("db.accept", "nosuch"))


def test_revisions_applied_before_checksums_were_kept_are_counted_not_judged(checkout):
    checkout.invoke("db.reset")  # stamps head: no revision has run here
    status = ok(checkout.invoke("db.status")).out
    assert "checksums:  none kept for 3 applied revisions (they did not run here)" in status, status
    checkout.invoke("db.downgrade", "--to=-1")
    checkout.invoke("db.upgrade")
    assert "none kept for 2 applied revisions" in ok(checkout.invoke("db.status")).out


def test_the_checksums_table_is_not_the_models_to_compare(checkout):
    """Autogenerate and the schema checks leave the suite's own table alone."""
    checkout.invoke("db.reset")
    checkout.invoke("db.downgrade", "--to=-1")
    ok(checkout.invoke("db.upgrade"))
    assert checksums.TABLE in all_tables(checkout)
    result = ok(checkout.invoke("db.revision", "-m", "nothing new"))
    assert "no schema changes detected" in result.out, result.output
    assert checksums.TABLE not in ok(checkout.invoke("db.schema")).out


def test_fab_refuses_an_edited_revision_before_any_password_and_accepts_it(any_remote):
    remote = any_remote
    remote.upgrade()
    (path,) = remote.server.versions.glob(f"*_{POSTS}_*.py")
    edit(path, "def upgrade():", "def upgrade():\n    op.create_table('hand_made', sa.Column('id', sa.Integer))")
    status = ok(remote.fab("prod", "db.status"))
    assert f"{POSTS}" in status.out and "its upgrade's operations changed" in status.out, status.out
    remote.add_revision("7e57ed000002", "pass")
    line = remote.refuses("was edited after it ran here", f"`fab prod db.accept {POSTS}` after review")
    assert "db.reset" not in line  # production: no start over
    refused(remote.fab("prod", "db.downgrade", "--to=-1", stdin=STDIN_PASSWORD), "was edited after it ran here")
    ok(remote.fab("prod", "db.accept", POSTS, stdin=STDIN_PASSWORD))
    ok(remote.upgrade())
    assert remote.database.version() == "7e57ed000002"
