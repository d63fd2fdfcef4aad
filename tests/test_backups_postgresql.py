"""deploy.safety.backups against the throwaway PostgreSQL, as test_backups.py does on MariaDB: a restore
brings back exactly what was backed up (objects made since go), damaged and failed backups are refused
in one line. (The password's way to pg_dump and pg_restore is in test_postgresql.py.)"""

from __future__ import annotations

import gzip
import shutil

import pytest
from helpers import PASSWORD, PgDatabase, make_pg_database
from sqlalchemy.engine import make_url

from deploy.errors import DeployError
from deploy.safety import backups

# Quotes, backslashes, control characters, non-ASCII and SQL that must stay data (PostgreSQL's text
# holds no NUL: that one is MariaDB's alone).
ODD = 'O\'Brien "q" back\\slash \nnew\ttab ünïcødé 🎉 %s; -- DROP TABLE authors'


def url_of(database: PgDatabase, password: str = PASSWORD):
    return make_url(database.migration_url).set(password=password)


def as_owner(database: PgDatabase, statement: str, args=None, password: str = PASSWORD) -> None:
    """Run as the migration role, so that what it makes is its own (as a migration's would be)."""
    import psycopg

    with psycopg.connect(
        host="127.0.0.1",
        port=database.server.port,
        dbname=database.name,
        user=database.migration_user,
        password=password,
        autocommit=True,
    ) as connection:
        connection.execute(statement, args)


def blog(database: PgDatabase, password: str = PASSWORD) -> None:
    as_owner(
        database,
        "CREATE TYPE mood AS ENUM ('happy', 'sad');"
        "CREATE TABLE authors (id serial PRIMARY KEY, name text NOT NULL, feeling mood);"
        "CREATE TABLE posts (id serial PRIMARY KEY, author_id int NOT NULL REFERENCES authors (id),"
        " title varchar(200), body bytea);"
        "CREATE VIEW titles AS SELECT title FROM posts;"
        "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY);"
        "INSERT INTO alembic_version VALUES ('abc123')",
        password=password,
    )
    as_owner(database, "INSERT INTO authors (name, feeling) VALUES (%s, 'happy'), ('plain', NULL)", (ODD,), password)
    as_owner(
        database, "INSERT INTO posts (author_id, title, body) VALUES (1, %s, %s)", (ODD, bytes(range(256))), password
    )


def snapshot(database: PgDatabase) -> dict:
    """Every relation and type in public: its kind, its definition as reflection, views and sequences
    see it, and its rows."""
    found = {}
    for name, kind in database.query(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'S')"
    ):
        if kind == "v":
            found[name] = (kind, database.query(f"SELECT pg_get_viewdef('{name}'::regclass)"))
        elif kind == "S":
            found[name] = (kind, database.query(f"SELECT last_value, is_called FROM {name}"))
        else:
            found[name] = (kind, database.query(f"SELECT * FROM {name} ORDER BY 1"))
    found["types"] = database.query(
        "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_type t "
        "JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname ORDER BY 1"
    )
    found["schema"] = database.schema()
    return found


def test_a_postgresql_restore_brings_back_exactly_the_database_backed_up(postgresql, tmp_path):
    database = make_pg_database(postgresql)
    blog(database)
    before = snapshot(database)
    backup = backups.take(url_of(database), tmp_path / "backups", "abc123", keep=3)
    assert (backup.revision, backup.name) == ("abc123", database.name)
    assert backup.path.name.endswith(".pgdump.gz") and backups.verify(backup.path) == backup
    assert PASSWORD not in backup.database and database.migration_user in backup.database

    as_owner(
        database,
        "UPDATE authors SET name = 'changed' WHERE id = 2;"
        "INSERT INTO authors (name) VALUES ('newcomer');"
        "DROP VIEW titles; DROP TABLE posts;"
        # Newer than the backup: a table holding a foreign key to one the restore recreates, a view on
        # it, a type and a sequence of their own. A restore that kept them would not be the backup.
        "CREATE TYPE colour AS ENUM ('red');"
        "CREATE TABLE comments (id int PRIMARY KEY, author_id int REFERENCES authors (id), tint colour);"
        "INSERT INTO comments VALUES (1, 1, 'red');"
        "CREATE VIEW newest AS SELECT max(id) AS id FROM authors;"
        "CREATE SEQUENCE tickets;"
        "ALTER TYPE mood ADD VALUE 'meh';"
        "UPDATE alembic_version SET version_num = 'def456'",
    )
    assert snapshot(database) != before

    assert backups.restore(url_of(database), backup.path) == backup
    assert snapshot(database) == before
    assert database.version() == "abc123"
    assert database.query("SELECT name FROM authors WHERE id = 1") == ((ODD,),)
    assert database.query("SELECT body FROM posts") == ((bytes(range(256)),),)
    # The serial goes on after the restored rows, not from 1.
    as_owner(database, "INSERT INTO authors (name) VALUES ('next')")
    assert database.query("SELECT max(id) FROM authors") == ((3,),)


def test_damaged_postgresql_backups_are_refused_before_anything_changes(pg_database, tmp_path):
    blog(pg_database)
    good = backups.take(url_of(pg_database), tmp_path / "backups", "abc123", keep=3)
    as_owner(pg_database, "CREATE TABLE newer (id int PRIMARY KEY)")  # a restore would drop it
    after = snapshot(pg_database)
    data = good.path.read_bytes()
    middle = len(data) // 2
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    truncated = "it is truncated (the compressed data ends early)"
    cases = {
        # Each with the start of what it must be refused for (the file's name is in the message too).
        damaged / "case1.pgdump.gz": (data[:middle], (truncated,)),
        damaged / "case2.pgdump.gz": (
            data[:middle] + bytes(byte ^ 0xFF for byte in data[middle : middle + 16]) + data[middle + 16 :],
            ("its compressed data is corrupt", truncated),  # flipped bytes may read as an early end
        ),
        damaged / "case3.pgdump.gz": (
            gzip.compress(b"-- plain SQL, not pg_dump's custom format\nSELECT 1;\n"),
            ("it holds no pg_dump archive",),
        ),
    }
    for path, (content, _) in cases.items():
        path.write_bytes(content)
    # Cut beside its sidecar, whose recorded size gives it away first.
    in_place = tmp_path / "in-place"
    shutil.copytree(good.path.parent, in_place)
    (in_place / good.path.name).write_bytes(data[:middle])
    reasons = {path: reasons for path, (_, reasons) in cases.items()}
    reasons[in_place / good.path.name] = (f"it is {middle} bytes, not the {len(data)} recorded",)

    for path, expected in reasons.items():
        with pytest.raises(DeployError) as verified:
            backups.verify(path)
        message = str(verified.value)
        assert message.startswith(f"{path} is not a usable backup: ") and "\n" not in message, message
        assert message.removeprefix(f"{path} is not a usable backup: ").startswith(expected), message
        with pytest.raises(DeployError, match="not a usable backup"):
            backups.restore(url_of(pg_database), path)
        assert snapshot(pg_database) == after
    assert backups.verify(good.path) == good


def test_a_failing_pg_dump_leaves_no_file_and_says_why_in_one_line(pg_database, tmp_path):
    directory = tmp_path / "backups"
    wrong_password = url_of(pg_database, PASSWORD + "x")
    no_such_database = url_of(pg_database).set(database="nosuch")
    for url, reason in (
        (wrong_password, "password authentication failed"),
        (no_such_database, 'database "nosuch" does not exist'),
    ):
        with pytest.raises(DeployError) as failed:
            backups.take(url, directory, "abc123", keep=2)
        message = str(failed.value)
        assert message.startswith(f"backup of {pg_database.migration_user}@127.0.0.1:"), message
        assert reason in message and "\n" not in message and PASSWORD not in message
        assert list(directory.iterdir()) == []


def test_a_postgresql_restore_that_fails_part_way_puts_the_database_back_as_it_was(pg_database, tmp_path):
    blog(pg_database)
    good = backups.take(url_of(pg_database), tmp_path / "backups", "abc123", keep=3)
    # One statement garbled in place (the archive's strings keep their lengths): pg_restore reads the
    # archive through, but the server refuses the statement, after the restore dropped every table.
    archive = gzip.decompress(good.path.read_bytes())
    assert archive.count(b"CREATE TABLE public.posts") == 1
    broken = tmp_path / "backups" / "broken.pgdump.gz"
    broken.write_bytes(gzip.compress(archive.replace(b"CREATE TABLE public.posts", b"CREATE TABLX public.posts")))
    assert backups.verify(broken)
    as_owner(pg_database, "CREATE TABLE newer (id int PRIMARY KEY); INSERT INTO newer VALUES (7)")
    as_owner(pg_database, "UPDATE alembic_version SET version_num = 'def456'")
    before = snapshot(pg_database)

    with pytest.raises(DeployError) as failed:
        backups.restore(url_of(pg_database), broken)
    assert snapshot(pg_database) == before  # as it was
    message = str(failed.value)
    where = f"{pg_database.migration_user}@127.0.0.1:{pg_database.server.port}/{pg_database.name}"
    assert message.startswith(f"restore of {where} failed: pg_restore: error: "), message
    assert 'syntax error at or near "TABLX"' in message and "\n" not in message and PASSWORD not in message
    assert message.endswith("; the database is as it was before the restore (put back from a backup taken just before)")
    assert sorted(path.name for path in broken.parent.iterdir()) == sorted(
        [good.path.name, good.path.name + ".json", broken.name]
    )


def test_a_long_password_reaches_pg_dump_and_pg_restore_whole(postgresql, tmp_path):
    """libpq reads a password file's lines at any length: a password of kilobytes works."""
    long = "w/rd%:" * 1000
    database = make_pg_database(postgresql, password=long)
    blog(database, long)
    before = snapshot(database)
    backup = backups.take(url_of(database, long), tmp_path / "backups", "abc123", keep=1)
    as_owner(database, "DROP VIEW titles; DROP TABLE posts", password=long)
    backups.restore(url_of(database, long), backup.path)
    assert snapshot(database) == before


def test_a_postgresql_archive_without_its_note_names_its_database(pg_database, postgresql, tmp_path):
    backup = backups.take(url_of(pg_database), tmp_path / "backups", "abc123", keep=1)
    backup.path.with_name(backup.path.name + ".json").unlink()
    bare = backups.verify(backup.path)
    assert bare.name == pg_database.name
    other = make_pg_database(postgresql)
    with pytest.raises(DeployError, match=f"is a backup of {pg_database.name}, not of .*--from-database"):
        backups.check_source(bare, url_of(other))
    assert backups.check_source(bare, url_of(other), pg_database.name) == pg_database.name
