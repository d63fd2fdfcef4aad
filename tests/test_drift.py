"""Drift against the history: the live schema compared with what the migrations build at its revision
(db.drift, locally and through fab, for one target and a fleet); an upgrade refuses, before any password,
a pending operation that changes what was changed by hand, and only warns of the rest."""

from __future__ import annotations

import json
import sqlite3

from helpers import (
    HEAD,
    PASSWORD,
    PRODUCTION,
    STDIN_PASSWORD,
    Result,
    make_database,
    refused,
)
from test_fleet import fleet_remote

HAND_MADE = "index ix_hand on posts (title) is not in the migrations"
UNRELATED = "index ix_other on users (name) is not in the migrations"
REFUSED = "changes the schema where it was changed outside the migrations"
# A later revision makes the index an incident added by hand, under the same name: it would fail on it.
FORMALIZED = "op.create_index('ix_hand', 'posts', ['title'])"
# What differs by kind: the SQL of a change made by hand.
BY_HAND = {
    "mariadb": {
        "widen title": "ALTER TABLE posts MODIFY title VARCHAR(300) NOT NULL",
        "drop ix_hand": "DROP INDEX ix_hand ON posts",
    },
    "postgresql": {
        "widen title": "ALTER TABLE posts ALTER COLUMN title TYPE VARCHAR(300)",
        "drop ix_hand": "DROP INDEX ix_hand",
    },
}


def ok(result: Result) -> Result:
    assert result.code == 0, result.output
    return result


def drifted(result: Result) -> Result:
    """Drift is told, and exits 1 (for monitoring) with one error line."""
    assert result.code == 1, result.output
    assert "Traceback" not in result.output, result.output
    assert "error: drift: " in result.err, result.err
    return result


def test_drift_on_sqlite_is_told_without_types(checkout):
    ok(checkout.invoke("db.upgrade"))
    assert "no drift" in ok(checkout.invoke("db.drift")).out
    with sqlite3.connect(checkout.path / "instance" / "development.db") as db:
        db.execute("CREATE INDEX ix_hand ON posts (title)")
        db.execute("ALTER TABLE users DROP COLUMN name")
    said = drifted(checkout.invoke("db.drift")).out
    assert "against a scratch SQLite database, compared without types" in said, said
    assert f"drift: {HAND_MADE}" in said and "drift: column users.name is missing" in said, said
    report = json.loads(drifted(checkout.invoke("db.drift", "--json")).out)
    assert report["ok"] is False and report["typed"] is False and len(report["drift"]) == 2, report


def test_drift_is_told_locally_and_through_fab_with_types_against_a_scratch_database_of_its_kind(
    any_remote, server_kind
):
    remote = any_remote
    remote.upgrade()
    assert json.loads(ok(remote.fab("prod", "db.drift", "--json")).out)["drift"] == []
    remote.database.query("CREATE INDEX ix_hand ON posts (title)")
    remote.database.query(BY_HAND[server_kind.name]["widen title"])

    through_fab = drifted(remote.fab("prod", "db.drift")).out
    assert f"drift: {HAND_MADE}" in through_fab, through_fab
    assert "compared without types" in through_fab and "VARCHAR(300)" not in through_fab, through_fab
    report = json.loads(drifted(remote.fab("prod", "db.drift", "--json")).out)
    assert report["drift"] == [HAND_MADE] and report["revision"] == [HEAD], report

    # Locally on the server, against an empty database of the same kind: the changed type too. Its
    # migration user's password is left out of the URL and asked for.
    scratch = server_kind.database()
    local = drifted(
        remote.server.invoke("db.drift", "--url", scratch.migration_url, env=PRODUCTION, stdin=STDIN_PASSWORD)
    )
    assert f"drift: {HAND_MADE}" in local.out, local.out
    assert "column posts.title type is VARCHAR(300), the migrations make VARCHAR(200)" in local.out, local.out
    assert PASSWORD not in local.output
    assert scratch.tables() == set()  # emptied again


def test_an_upgrade_refuses_what_changes_drift_before_any_password_and_warns_of_the_rest(any_remote, server_kind):
    remote = any_remote
    remote.upgrade()
    remote.database.query("CREATE INDEX ix_hand ON posts (title)")
    remote.add_revision("d71f70000001", FORMALIZED)

    line = remote.refuses(REFUSED, "create_index posts.ix_hand (d71f70000001)", HAND_MADE, "`fab prod db.drift`")
    assert "db.reset" not in line, line  # production: no start over
    # The local path refuses before its password prompt too (stdin is empty: a prompt would fail otherwise).
    local = refused(remote.server.invoke("db.upgrade", "--yes", env=PRODUCTION), REFUSED, "`invoke db.drift`")
    assert "no password" not in local, local
    assert remote.database.version() == HEAD

    # Put back as the migrations built it; drift elsewhere is only a warning, and the upgrade goes on.
    remote.database.query(BY_HAND[server_kind.name]["drop ix_hand"])
    remote.database.query("CREATE INDEX ix_other ON users (name)")
    upgraded = remote.upgrade("--allow-risky").out  # PostgreSQL: the index blocks writes while built
    assert f"drift: {UNRELATED}" in upgraded and "compared without types" in upgraded, upgraded
    assert remote.database.version() == "d71f70000001"
    remote.add_revision("d71f70000002", "op.add_column('posts', sa.Column('summary', sa.String(100)))")
    locally = remote.server.invoke("db.upgrade", "--yes", env=PRODUCTION, stdin=STDIN_PASSWORD)
    assert locally.code == 0, locally.output
    assert f"warning: drift: {UNRELATED}" in locally.out, locally.out
    assert remote.database.version() == "d71f70000002"


def test_a_fleet_shows_a_row_per_target(tmp_path, mariadb, sshd):
    databases = {"tenant_a": make_database(mariadb), "tenant_b": make_database(mariadb)}
    remote = fleet_remote(tmp_path, sshd, databases)
    ok(remote.fab("tenants", "db.upgrade", "--yes", stdin=STDIN_PASSWORD * 2))
    assert "no drift" in ok(remote.fab("tenants", "db.drift")).out
    databases["tenant_b"].query("CREATE INDEX ix_hand ON posts (title)")

    result = remote.fab("tenants", "db.drift")
    line = refused(result, "1 of 2 targets drifted", "tenant_b")
    assert "tenant_a" not in line, line
    rows = {row.split()[0].rsplit("/", 1)[-1]: row for row in result.out.splitlines()[1:3]}
    assert "no drift" in rows["tenant_a"] and "1 difference" in rows["tenant_b"], result.out
    assert f"tenant_b: drift: {HAND_MADE}" in result.out, result.out
