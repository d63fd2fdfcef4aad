"""db.restore's guards end to end, through `invoke` and `fab` (the in-process checks are in
test_backups.py): another database's backup is refused before any question unless the operator names
that database (--from-database), and the typed confirmation then names both; a load that fails leaves
the database as it was and says why; the backup being restored survives the retention of the backup
taken first. Real MariaDB, real sshd; the backups are the suite's own."""

from __future__ import annotations

import gzip
import re

from helpers import HEAD, PASSWORD, PRODUCTION, STDIN_PASSWORD, Database, make_database, one_error_line, refused
from test_backups import url_of

from deploy import backups


def another_database_with_a_row(database: Database, directory) -> tuple[Database, backups.Backup]:
    """A second database: a copy of `database` (migrated to HEAD) holding one user of its own, and its
    backup in `directory`, as a fleet's tenants sharing one backup directory leave them."""
    other = make_database(database.server)
    copy = backups.take(url_of(database), directory.parent / "copy", HEAD, keep=1)
    backups.restore(url_of(other), copy.path)
    other.query("INSERT INTO users (id, email, name) VALUES (7, 'other@example.com', 'Other')")
    return other, backups.take(url_of(other), directory, HEAD, keep=3)


def test_invoke_restores_another_databases_backup_only_when_told_and_confirmed_by_both_names(checkout, database):
    checkout.use_production(database)
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=PRODUCTION).code == 0
    other, theirs = another_database_with_a_row(database, checkout.path / "instance" / "backups")
    name = theirs.path.name
    answers = f"{database.name}\n{PASSWORD}\n"

    plain = checkout.invoke("db.restore", name, stdin=answers, env=PRODUCTION)
    line = one_error_line(plain)
    assert line == (
        f"error: {name} is a backup of {other.migration_user}@127.0.0.1:{database.server.port}/{other.name}, not of "
        f"{database.migration_user}@127.0.0.1:{database.server.port}/{database.name}: to replace {database.name} "
        f"with it all the same, add --from-database {other.name}; nothing changed"
    )
    assert "Type the database name" not in plain.out  # refused before any question
    assert database.query("SELECT id FROM users") == ()

    restored = checkout.invoke("db.restore", name, "--from-database", other.name, stdin=answers, env=PRODUCTION)
    assert restored.code == 0, restored.output
    assert f"Replace {database.name} with the backup of {other.name}? Type the database name ({database.name})" in (
        restored.out
    )
    assert database.query("SELECT id, email FROM users") == ((7, "other@example.com"),)
    assert PASSWORD not in restored.output


def test_fab_restores_another_databases_backup_only_when_told_and_confirmed_by_both_names(remote):
    remote.upgrade()
    database = remote.database
    other, theirs = another_database_with_a_row(database, remote.server.path / "instance" / "backups")
    name = theirs.path.name

    refused(
        remote.fab("prod", "db.restore", name, stdin=f"{database.name}\n{PASSWORD}\n"),
        f"{name} is a backup of {other.migration_user}@127.0.0.1:",
        f"add --from-database {other.name}; nothing changed",
    )
    told = ("prod", "db.restore", name, "--from-database", other.name)
    refused(remote.fab(*told, stdin=f"{other.name}\n{PASSWORD}\n"), "not confirmed")
    assert database.query("SELECT id FROM users") == ()

    restored = remote.fab(*told, stdin=f"{database.name}\n{PASSWORD}\n")
    assert restored.code == 0, restored.output
    assert f"Replace {database.name} with the backup of {other.name}? Type the database name ({database.name})" in (
        restored.out
    )
    assert database.query("SELECT id, email FROM users") == ((7, "other@example.com"),)


def test_restoring_the_oldest_backup_kept_does_not_lose_it_to_the_backup_taken_first(checkout, database):
    """The backup taken before a restore counts against `backups_kept`: the one being restored stays."""
    checkout.use_production(database)
    env = {**PRODUCTION, "INVOKE_DB_SAFETY_BACKUPS_KEPT": "1"}
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=env).code == 0
    [kept] = (checkout.path / "instance" / "backups").glob("*.sql.gz")  # of the empty database

    restored = checkout.invoke("db.restore", kept.name, stdin=f"{database.name}\n{PASSWORD}\n", env=env)
    assert restored.code == 0, restored.output
    assert database.tables() == set()
    assert kept.is_file()


def test_invoke_restore_whose_load_fails_says_why_and_leaves_the_database_as_it_was(checkout, database):
    checkout.use_production(database)
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=PRODUCTION).code == 0
    checkout.add_revision("notes0000001", HEAD, "op.create_table('notes', sa.Column('id', sa.Integer))")
    assert checkout.invoke("db.upgrade", "--yes", stdin=STDIN_PASSWORD, env=PRODUCTION).code == 0
    directory = checkout.path / "instance" / "backups"
    # The backup at HEAD, its last statement garbled: it passes every check a file can have, and the
    # server refuses it after the restore has dropped and recreated every table.
    text = gzip.decompress(next(directory.glob(f"*-{HEAD}.sql.gz")).read_bytes())
    assert text.count(b"INSERT INTO `alembic_version`") == 1
    broken = directory / "broken.sql.gz"
    broken.write_bytes(gzip.compress(text.replace(b"INSERT INTO `alembic_version`", b"INSERT INTO BROKEN")))
    database.query("INSERT INTO users (id, email, name) VALUES (1, 'a@example.com', 'Ann')")
    tables = database.tables()

    failed = checkout.invoke("db.restore", broken.name, stdin=f"{database.name}\n{PASSWORD}\n", env=PRODUCTION)
    line = one_error_line(failed)
    assert line.startswith(f"error: restore of {database.migration_user}@127.0.0.1:{database.server.port}/"), line
    # The client's own error line, not the statement it echoes between dashes.
    assert re.search(r"failed: ERROR \d+ \(\w+\) at line \d+: .*BROKEN", line) and "---" not in line, line
    assert line.endswith(f"the database is as it was before the restore (put back from {newest(directory)})"), line
    assert database.tables() == tables and database.version() == "notes0000001"
    assert database.query("SELECT id, email FROM users") == ((1, "a@example.com"),)
    assert "current:    notes0000001" in checkout.invoke("db.status", env=PRODUCTION).out


def newest(directory) -> str:
    """The newest backup's file name (the one a restore takes first)."""
    return backups.list_backups(directory)[0].path.name
