"""deploy.backups against real MariaDB and PostgreSQL servers (and SQLite): take, verify, list,
restore; no mocks. A test taking `server_kind` runs on both kinds; one marked by its kind is that kind's
own behaviour. (The password's way to pg_dump and pg_restore is in test_postgresql.py.)"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from helpers import PASSWORD, Database, PgDatabase, ProcSampler, files_containing, make_database, make_pg_database
from sqlalchemy.engine import make_url

from deploy import backups, console
from deploy.database import connect
from deploy.dialects.mariadb import OPTION_LINE_BYTES
from deploy.dialects.sqlite import SQLite
from deploy.errors import DeployError

# Quotes, backslashes, a NUL, control characters, non-ASCII and SQL that must stay data.
ODD = 'O\'Brien "q" back\\slash \0 nul\nnew\ttab ünïcødé 🎉 %s; -- DROP TABLE authors'
# What an option file could misread: its comment and quote characters, escapes, edge spaces.
HOSTILE = " a\\b\"c #d;e'f\tg\\ "
TRUNCATED = "it is truncated (the compressed data ends early)"
FAILED_RESTORE_END = "; the database is as it was before the restore (put back from a backup taken just before)"


def url_of(database: Database | PgDatabase, password: str = PASSWORD):
    return make_url(database.migration_url).set(password=password)


def execute(database: Database, *statements) -> None:
    """As root; a statement is SQL, or (SQL, parameters)."""
    with closing(database.server.admin(database=database.name)) as connection, connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(*statement) if isinstance(statement, tuple) else cursor.execute(statement)


def blog(database: Database) -> None:
    execute(
        database,
        "CREATE TABLE authors (id INT PRIMARY KEY AUTO_INCREMENT, name TEXT NOT NULL)",
        "CREATE TABLE posts (id INT PRIMARY KEY AUTO_INCREMENT, author_id INT NOT NULL,"
        " title VARCHAR(200), body BLOB, FOREIGN KEY (author_id) REFERENCES authors (id))",
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('abc123')",
        ("INSERT INTO authors (name) VALUES (%s), ('plain')", (ODD,)),
        ("INSERT INTO posts (author_id, title, body) VALUES (1, %s, %s)", (ODD, bytes(range(256)))),
    )


def big_blog(database: Database, rows: int) -> None:
    """The blog, and a table of about 100 kB a row."""
    blog(database)
    execute(
        database,
        "CREATE TABLE big (id INT PRIMARY KEY, filler LONGTEXT)",
        "INSERT INTO big VALUES " + ", ".join(f"({n}, REPEAT(MD5({n}), 3000))" for n in range(rows)),
    )


def round_trip(database: Database, password: str, directory: Path) -> tuple[backups.Backup, dict]:
    """The blog backed up with `password`, a table dropped, the backup restored: the blog is back.
    The backup and the blog's snapshot."""
    blog(database)
    before = snapshot(database)
    backup = backups.take(url_of(database, password), directory, "abc123", keep=1)
    execute(database, "DROP TABLE posts")
    backups.restore(url_of(database, password), backup.path)
    assert snapshot(database) == before
    return backup, before


def snapshot(database: Database) -> dict:
    """Every table and view: its kind, definition and rows."""
    return {
        name: (kind, database.query(f"SHOW CREATE TABLE `{name}`")[0][1], database.query(f"SELECT * FROM `{name}`"))
        for name, kind in database.query("SHOW FULL TABLES")
    }


class MariaDBBlog:
    """The blog the tests back up, on MariaDB: what each kind does its own way, for the shared tests."""

    suffix = ".sql.gz"
    odd = ODD
    # Made after the backup; the one with a foreign key to a table the restore drops and recreates.
    changes = (
        ("UPDATE authors SET name = %s WHERE id = 2", ("changed",)),
        "INSERT INTO authors (name) VALUES ('newcomer')",
        "DROP TABLE posts",
        "CREATE TABLE comments (id INT PRIMARY KEY, author_id INT, FOREIGN KEY (author_id) REFERENCES authors (id))",
        "INSERT INTO comments VALUES (1, 1)",
        "CREATE VIEW newest AS SELECT MAX(id) AS id FROM authors",
        "UPDATE alembic_version SET version_num = 'def456'",
    )
    # Why a dump fails: a wrong password, a database that does not exist.
    dump_failures = ("Access denied", "'nosuch'")

    def __init__(self, database: Database):
        self.database = database

    def fill(self) -> None:
        blog(self.database)

    def execute(self, *statements) -> None:
        execute(self.database, *statements)

    def snapshot(self) -> dict:
        return snapshot(self.database)

    def incomplete(self, good: backups.Backup) -> tuple[bytes, str]:
        """A whole gzip stream that is not a whole backup, and the reason it is refused."""
        text = gzip.decompress(good.path.read_bytes())
        return gzip.compress(text[: text.rindex(b"-- Dump completed")]), "the dump lacks its completion marker"

    def broken(self, good: backups.Backup, into: Path) -> Path:
        """The tables are dropped and authors loaded before the broken statement is reached."""
        return break_one_statement(good, b"INSERT INTO `posts`", into)

    def check_failure(self, said: str) -> None:
        """The client's own error line, not the dashes it prints around the statement."""
        assert "ERROR 1064 (42000) at line" in said and "error in your SQL syntax" in said and "---" not in said


# PostgreSQL's text holds no NUL: that one is MariaDB's alone.
PG_ODD = ODD.replace("\0 nul", "")


class PostgreSQLBlog:
    """As MariaDBBlog, on PostgreSQL; made by the migration role, so that what it makes is its own (as a
    migration's would be), with an enum type, a view and sequences besides."""

    suffix = ".pgdump.gz"
    odd = PG_ODD
    # As MariaDB's, and besides a view on a newer table, a type and a sequence of their own: a restore
    # that kept them would not be the backup.
    changes = (
        "UPDATE authors SET name = 'changed' WHERE id = 2;"
        "INSERT INTO authors (name) VALUES ('newcomer');"
        "DROP VIEW titles; DROP TABLE posts;"
        "CREATE TYPE colour AS ENUM ('red');"
        "CREATE TABLE comments (id int PRIMARY KEY, author_id int REFERENCES authors (id), tint colour);"
        "INSERT INTO comments VALUES (1, 1, 'red');"
        "CREATE VIEW newest AS SELECT max(id) AS id FROM authors;"
        "CREATE SEQUENCE tickets;"
        "ALTER TYPE mood ADD VALUE 'meh';"
        "UPDATE alembic_version SET version_num = 'def456'",
    )
    dump_failures = ("password authentication failed", 'database "nosuch" does not exist')

    def __init__(self, database: PgDatabase, password: str = PASSWORD):
        self.database = database
        self.password = password

    def execute(self, *statements) -> None:
        """As the migration role; a statement is SQL, or (SQL, parameters)."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.database.server.port,
            dbname=self.database.name,
            user=self.database.migration_user,
            password=self.password,
            autocommit=True,
        ) as connection:
            for statement in statements:
                connection.execute(*statement) if isinstance(statement, tuple) else connection.execute(statement)

    def fill(self) -> None:
        self.execute(
            "CREATE TYPE mood AS ENUM ('happy', 'sad');"
            "CREATE TABLE authors (id serial PRIMARY KEY, name text NOT NULL, feeling mood);"
            "CREATE TABLE posts (id serial PRIMARY KEY, author_id int NOT NULL REFERENCES authors (id),"
            " title varchar(200), body bytea);"
            "CREATE VIEW titles AS SELECT title FROM posts;"
            "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY);"
            "INSERT INTO alembic_version VALUES ('abc123')",
            ("INSERT INTO authors (name, feeling) VALUES (%s, 'happy'), ('plain', NULL)", (PG_ODD,)),
            ("INSERT INTO posts (author_id, title, body) VALUES (1, %s, %s)", (PG_ODD, bytes(range(256)))),
        )

    def snapshot(self) -> dict:
        """Every relation and type in public: its kind, its definition as reflection, views and sequences
        see it, and its rows."""
        database, found = self.database, {}
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

    def incomplete(self, good: backups.Backup) -> tuple[bytes, str]:
        return gzip.compress(b"-- plain SQL, not pg_dump's custom format\nSELECT 1;\n"), "it holds no pg_dump archive"

    def broken(self, good: backups.Backup, into: Path) -> Path:
        """One statement garbled in place (the archive's strings keep their lengths): pg_restore reads the
        archive through, but the server refuses the statement, after the restore dropped every table."""
        archive = gzip.decompress(good.path.read_bytes())
        assert archive.count(b"CREATE TABLE public.posts") == 1
        into.write_bytes(gzip.compress(archive.replace(b"CREATE TABLE public.posts", b"CREATE TABLX public.posts")))
        return into

    def check_failure(self, said: str) -> None:
        assert said.startswith("pg_restore: error: ") and 'syntax error at or near "TABLX"' in said, said


BLOGS = {"mariadb": MariaDBBlog, "postgresql": PostgreSQLBlog}


@pytest.fixture
def any_blog(server_kind, any_database) -> MariaDBBlog | PostgreSQLBlog:
    """An empty database of each kind in turn, as the blog it is filled as."""
    return BLOGS[server_kind.name](any_database)


def test_restore_brings_back_exactly_the_database_backed_up(any_blog, tmp_path):
    database = any_blog.database
    any_blog.fill()
    before = any_blog.snapshot()
    backup = backups.take(url_of(database), tmp_path / "backups", "abc123", keep=3)
    assert (backup.revision, backup.name, backup.size) == ("abc123", database.name, backup.path.stat().st_size)
    assert backup.path.name.endswith(any_blog.suffix) and backups.verify(backup.path) == backup
    assert PASSWORD not in backup.database and database.migration_user in backup.database
    assert sorted(path.name for path in backup.path.parent.iterdir()) == [backup.path.name, backup.path.name + ".json"]

    any_blog.execute(*any_blog.changes)
    assert any_blog.snapshot() != before

    assert backups.restore(url_of(database), backup.path) == backup
    assert any_blog.snapshot() == before
    assert database.version() == "abc123"
    assert database.query("SELECT name FROM authors WHERE id = 1") == ((any_blog.odd,),)
    assert database.query("SELECT body FROM posts") == ((bytes(range(256)),),)
    # The counter goes on after the restored rows, not from 1.
    any_blog.execute("INSERT INTO authors (name) VALUES ('next')")
    assert database.query("SELECT max(id) FROM authors") == ((3,),)


def test_damaged_backups_are_refused_before_anything_changes(any_blog, tmp_path):
    any_blog.fill()
    good = backups.take(url_of(any_blog.database), tmp_path / "backups", "abc123", keep=3)
    any_blog.execute("CREATE TABLE newer (id INT PRIMARY KEY)")  # a restore would drop it
    after = any_blog.snapshot()

    data = good.path.read_bytes()
    middle = len(data) // 2
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    incomplete, incomplete_reason = any_blog.incomplete(good)
    files = {
        "truncated": (data[:middle], TRUNCATED),
        "corrupt": (
            data[:middle] + bytes(byte ^ 0xFF for byte in data[middle : middle + 16]) + data[middle + 16 :],
            "its compressed data is corrupt",
        ),
        "incomplete": (incomplete, incomplete_reason),
    }
    cases = {}
    for number, (content, reason) in enumerate(files.values()):
        # Named apart from their reasons: the file's name is part of the message.
        path = damaged / f"case{number}{any_blog.suffix}"
        path.write_bytes(content)
        cases[path] = reason
    # Cut beside its sidecar, whose recorded size gives it away first.
    in_place = tmp_path / "in-place"
    shutil.copytree(good.path.parent, in_place)
    (in_place / good.path.name).write_bytes(data[:middle])
    cases[in_place / good.path.name] = f"it is {middle} bytes, not the {len(data)} recorded"

    for path, reason in cases.items():
        with pytest.raises(DeployError) as verified:
            backups.verify(path)
        message = str(verified.value)
        assert message.startswith(f"{path} is not a usable backup: ") and "\n" not in message
        said = message.removeprefix(f"{path} is not a usable backup: ")
        # Flipped bytes may also read as a stream that ends early: either way it is refused.
        assert said.startswith(reason) or (reason.endswith("corrupt") and said == TRUNCATED), message
        with pytest.raises(DeployError, match="not a usable backup"):
            backups.restore(url_of(any_blog.database), path)
        assert any_blog.snapshot() == after
    assert backups.verify(good.path) == good


@pytest.mark.mariadb
def test_retention_keeps_the_newest_of_each_database(mariadb, tmp_path):
    one, other = make_database(mariadb), make_database(mariadb)
    directory = tmp_path / "backups"
    of_other = backups.take(url_of(other), directory, "r0", keep=1)
    taken = [backups.take(url_of(one), directory, f"r{n}", keep=2) for n in range(1, 5)]

    listed = backups.list_backups(directory, one.name)
    assert [backup.revision for backup in listed] == ["r4", "r3"]
    assert listed == [taken[3], taken[2]] == backups.list_backups(directory, url_of(one))
    assert backups.list_backups(directory) == [*listed, of_other]
    kept = [taken[3].path, taken[2].path, of_other.path]
    assert sorted(directory.iterdir()) == sorted([*kept, *(path.with_name(path.name + ".json") for path in kept)])
    for backup in listed:
        line = str(backup)
        assert backup.size == backup.path.stat().st_size > 0
        assert backup.revision in line and str(backup.path) in line and "\n" not in line


def test_a_failing_dump_leaves_no_file_and_says_why_in_one_line(any_blog, tmp_path):
    database = any_blog.database
    directory = tmp_path / "backups"
    wrong_password = url_of(database, PASSWORD + "x")
    no_such_database = url_of(database).set(database="nosuch")
    for url, reason in zip((wrong_password, no_such_database), any_blog.dump_failures, strict=True):
        with pytest.raises(DeployError) as failed:
            backups.take(url, directory, "abc123", keep=2)
        message = str(failed.value)
        assert message.startswith(f"backup of {database.migration_user}@127.0.0.1:"), message
        assert reason in message and "\n" not in message and PASSWORD not in message
        assert list(directory.iterdir()) == []


@pytest.mark.mariadb
def test_backup_and_restore_leak_the_password_nowhere(mariadb, tmp_path, monkeypatch):
    database = make_database(mariadb)
    # Megabytes: more than the pipes hold, so the tools are still running while progress holds them.
    big_blog(database, rows=40)
    before = snapshot(database)
    monkeypatch.setattr(backups, "PROGRESS_SECONDS", 0)
    sampler = ProcSampler(PASSWORD, deadline=60)
    reported: list[int] = []

    def progress(done: int, fraction: float | None) -> None:
        """Hold the running tool until the sampler has read all of /proc at least once meanwhile."""
        if not reported:
            rounds = sampler.rounds
            while sampler.rounds < rounds + 2 and sampler.is_alive():
                time.sleep(0.01)
        reported.append(done)

    sampler.start()
    try:
        backup = backups.take(url_of(database), tmp_path / "backups", "abc123", keep=2, progress=progress)
        dumped, reported[:] = list(reported), []
        execute(database, "DROP TABLE big")
        backups.restore(url_of(database), backup.path, progress=progress)
    finally:
        sampler.stop.set()
        sampler.join()

    assert sampler.saw(b"mariadb-dump\0--defaults-file=/dev/fd/") and sampler.saw(b"mariadb\0--defaults-file=/dev/fd/")
    assert not sampler.leaks, sampler.leaks
    for sizes in (dumped, reported):
        assert sizes == sorted(sizes) and sizes[-1] > 3_000_000
    assert snapshot(database) == before
    assert files_containing(tmp_path, PASSWORD) == []
    assert PASSWORD.encode() not in gzip.decompress(backup.path.read_bytes())


@pytest.mark.mariadb
def test_a_users_option_file_cannot_override_the_password(mariadb, tmp_path, monkeypatch):
    """~/.my.cnf holds a [client] password for some other user: the URL's own is the one used."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".my.cnf").write_text("[client]\npassword=not-this-one\n")
    monkeypatch.setenv("HOME", str(home))
    round_trip(make_database(mariadb, password=HOSTILE), HOSTILE, tmp_path / "backups")


def test_sqlite_backup_and_restore(tmp_path):
    path = tmp_path / "app.db"
    url = make_url(f"sqlite:///{path}")
    with closing(sqlite3.connect(path)) as db:
        db.executescript(
            "CREATE TABLE alembic_version (version_num TEXT PRIMARY KEY);"
            "INSERT INTO alembic_version VALUES ('abc123');"
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('one'), ('two');"
        )
        before = list(db.iterdump())
    backup = backups.take(url, tmp_path / "backups", "abc123", keep=1)
    assert backup.path.name.endswith(".sqlite.gz") and backups.verify(backup.path) == backup
    with closing(sqlite3.connect(path)) as db:
        db.executescript("CREATE TABLE newer (id); DELETE FROM notes; UPDATE alembic_version SET version_num='x'")
    backups.restore(url, backup.path)
    with closing(sqlite3.connect(path)) as db:
        assert list(db.iterdump()) == before
    with pytest.raises(DeployError, match="not a backup of a mysql database"):
        backups.restore(make_url("mysql+pymysql://u:p@127.0.0.1:1/db"), backup.path)


def test_a_truncated_sqlite_backup_is_refused_for_what_it_is(tmp_path):
    """SQLite files have no completion marker: the gzip stream's end and the header's size must tell."""
    path = tmp_path / "app.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO notes (body) VALUES (?)", ((f"{n:08x}" * 40,) for n in range(4000)))
        db.commit()
    backup = backups.take(make_url(f"sqlite:///{path}"), tmp_path / "backups", "abc123", keep=1)
    data, raw = backup.path.read_bytes(), path.read_bytes()
    assert len(raw) > 1_000_000
    cases = {
        # Half the compressed stream.
        "case1.sqlite.gz": (data[: len(data) // 2], TRUNCATED),
        # A whole gzip stream of half the database: only its header's page count gives it away.
        "case2.sqlite.gz": (gzip.compress(raw[: len(raw) // 2]), SQLite.backup_incomplete),
    }
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DeployError) as verified:
            backups.verify(tmp_path / name)
        assert str(verified.value) == f"{tmp_path / name} is not a usable backup: {reason}"
    assert backups.verify(backup.path) == backup


def break_one_statement(backup: backups.Backup, statement: bytes, into: Path) -> Path:
    """The backup with `statement` garbled: still a whole gzip stream, the dump's marker at its end."""
    text = gzip.decompress(backup.path.read_bytes())
    assert text.count(statement) == 1
    into.write_bytes(gzip.compress(text.replace(statement, statement.replace(b"INTO", b"INTO BROKEN"))))
    return into


def test_a_restore_that_fails_part_way_puts_the_database_back_as_it_was(any_blog, tmp_path):
    database = any_blog.database
    any_blog.fill()
    good = backups.take(url_of(database), tmp_path / "backups", "abc123", keep=3)
    broken = any_blog.broken(good, tmp_path / "backups" / f"broken{any_blog.suffix}")
    any_blog.execute("CREATE TABLE newer (id INT PRIMARY KEY)", "INSERT INTO newer VALUES (7)")
    any_blog.execute("UPDATE alembic_version SET version_num = 'def456'")
    before = any_blog.snapshot()
    assert backups.verify(broken)  # it passes every check a file can have

    with pytest.raises(DeployError) as failed:
        backups.restore(url_of(database), broken)
    assert any_blog.snapshot() == before  # as it was
    message = str(failed.value)
    start = f"restore of {database.migration_user}@127.0.0.1:{database.server.port}/{database.name} failed: "
    assert message.startswith(start), message
    any_blog.check_failure(message.removeprefix(start))
    assert message.endswith(FAILED_RESTORE_END)
    assert "\n" not in message and PASSWORD not in message
    # The backup taken for the way back is gone again: the directory holds what it held.
    assert sorted(path.name for path in broken.parent.iterdir()) == sorted(
        [good.path.name, good.path.name + ".json", broken.name]
    )

    # A backup the caller took first is the way back, and stays.
    taken = backups.take(url_of(database), tmp_path / "backups", "def456", keep=3)
    with pytest.raises(DeployError, match=f"as it was before the restore \\(put back from {taken.path.name}\\)$"):
        backups.restore(url_of(database), broken, before=taken)
    assert any_blog.snapshot() == before and backups.verify(taken.path) == taken


@pytest.mark.mariadb
def test_a_password_too_long_for_the_tools_is_refused_before_anything_is_sent(mariadb, tmp_path):
    """The MariaDB tools read their option file in pieces of 4094 bytes and would take the rest of the
    password line for options, named in their error. The longest that fits works; longer is refused."""
    room = OPTION_LINE_BYTES - len('password=""')
    longest = ('"' + "w/rd%:" * room)[: room - 1]  # the quote is written escaped: two bytes
    database = make_database(mariadb, password=longest)
    good, before = round_trip(database, longest, tmp_path / "backups")

    for extra in ("w", "w/rd%:" * 200):
        too_long = longest + extra
        mariadb.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (database.migration_user, too_long))
        url = url_of(database, too_long)
        with connect(url) as connection:  # the server and PyMySQL take it
            assert connection.exec_driver_sql("SELECT 1").scalar() == 1
        for attempt, args in ((backups.take, (tmp_path / "backups", "abc123", 3)), (backups.restore, (good.path,))):
            with pytest.raises(DeployError) as refused:
                attempt(url, *args)
            message = str(refused.value)
            assert message == (
                f"backup of {database.migration_user}@127.0.0.1:{mariadb.port}/{database.name} failed: the password "
                "is too long for mariadb-dump (its option files hold lines of at most 4094 bytes, `password=`, "
                f"quotes and escapes included): nothing was sent; give {database.migration_user} a shorter password"
            )
            assert snapshot(database) == before
        assert len(list((tmp_path / "backups").iterdir())) == 2  # the good one and its note


@pytest.mark.mariadb
def test_a_backup_of_another_database_is_refused_unless_the_operator_names_it(mariadb, tmp_path):
    one, other = make_database(mariadb), make_database(mariadb)
    blog(one)
    backup = backups.verify(backups.take(url_of(one), tmp_path / "backups", "abc123", keep=1).path)
    where = f"127.0.0.1:{mariadb.port}"
    assert backups.check_source(backup, url_of(one)) is None

    def refusal(url, from_database=None, of=backup) -> str:
        with pytest.raises(DeployError) as refused:
            backups.check_source(of, url, from_database)
        return str(refused.value)

    assert refusal(url_of(other)) == (
        f"{backup.path.name} is a backup of {one.migration_user}@{where}/{one.name}, not of "
        f"{other.migration_user}@{where}/{other.name}: to replace {other.name} with it all the same, "
        f"add --from-database {one.name}; nothing changed"
    )
    assert backups.check_source(backup, url_of(other), one.name) == one.name
    assert refusal(url_of(other), other.name).endswith(f", not of {other.name}: nothing changed")
    assert refusal(url_of(one), other.name).endswith(
        f"is a backup of {one.name} itself, not of {other.name}: nothing changed"
    )
    # The same name on another server is another database.
    elsewhere = url_of(one).set(host="localhost")
    assert refusal(elsewhere).endswith(f"add --from-database {one.name}; nothing changed")
    assert backups.check_source(backup, elsewhere, one.name) == one.name

    # A file without its note: the dump's own header names the database.
    backup.path.with_name(backup.path.name + ".json").unlink()
    bare = backups.verify(backup.path)
    assert (bare.name, bare.database) == (one.name, "")
    assert refusal(url_of(other), of=bare).startswith(f"{backup.path.name} is a backup of {one.name}, not of ")
    assert backups.check_source(bare, url_of(one)) is None


def sqlite_database(path: Path) -> bytes:
    """A SQLite file of several pages, with a row per page or so; its bytes."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO notes (body) VALUES (?)", ((f"{n:04x}" * 200,) for n in range(50)))
        db.commit()
    return path.read_bytes()


def test_a_sqlite_backup_whose_pages_are_damaged_is_refused_before_anything_changes(tmp_path):
    raw = sqlite_database(tmp_path / "app.db")
    page = int.from_bytes(raw[16:18], "big")
    # Page 2, the table's root: its b-tree header overwritten; the file's header and size still right.
    damaged = raw[:page] + b"\xee" * 16 + raw[page + 16 :]
    path = tmp_path / "case.sqlite.gz"
    path.write_bytes(gzip.compress(damaged))
    before = (tmp_path / "app.db").read_bytes()
    with pytest.raises(DeployError) as refused:
        backups.restore(make_url(f"sqlite:///{tmp_path / 'app.db'}"), path)
    assert str(refused.value).startswith(f"{path} is not a usable backup: SQLite finds the database in it damaged (")
    assert (tmp_path / "app.db").read_bytes() == before


def test_a_sqlite_restore_is_one_transaction_and_may_create_the_file(tmp_path):
    sqlite_database(tmp_path / "app.db")
    backup = backups.take(make_url(f"sqlite:///{tmp_path / 'app.db'}"), tmp_path / "backups", "abc123", keep=1)
    # A checkout whose database does not exist yet: nothing to back up first, and the restore makes it.
    fresh = tmp_path / "fresh" / "app.db"
    backups.restore(make_url(f"sqlite:///{fresh}"), backup.path)
    with closing(sqlite3.connect(fresh)) as restored, closing(sqlite3.connect(tmp_path / "app.db")) as original:
        assert list(restored.iterdump()) == list(original.iterdump())
    # A load SQLite refuses leaves nothing half done, and says so.
    (tmp_path / "directory.db").mkdir()
    with pytest.raises(DeployError) as failed:
        backups.restore(make_url(f"sqlite:///{tmp_path / 'directory.db'}"), backup.path)
    assert str(failed.value) == (
        f"restore of SQLite {tmp_path / 'directory.db'} failed: unable to open database file; "
        "the database is as it was before the restore (it is loaded in one transaction)"
    )


@pytest.mark.mariadb
def test_a_restores_own_words_stay_whole_when_the_password_is_one_of_them(mariadb, tmp_path, monkeypatch):
    """Masking looks at what the message relays (the client's line), never at the suite's wording."""
    from deploy import errors

    # This process remembers every password to mask it: this one is forgotten after the test.
    monkeypatch.setattr(errors, "_known_passwords", set())
    word = "restore"
    database = make_database(mariadb, password=word)
    blog(database)
    good = backups.take(url_of(database, word), tmp_path / "backups", "abc123", keep=1)
    broken = break_one_statement(good, b"INSERT INTO `posts`", tmp_path / "broken.sql.gz")
    with pytest.raises(DeployError) as failed:
        backups.restore(url_of(database, word), broken)
    shown = errors.mask_message(failed.value.marked)
    assert shown == str(failed.value) and shown.startswith("restore of ") and "before the restore" in shown


@pytest.mark.mariadb
def test_a_restore_stopped_by_sigterm_puts_the_database_back_first(mariadb, tmp_path, monkeypatch):
    """A service stopped or a terminal closed mid-load: SIGTERM (or SIGHUP) ends the restore only once
    the database is as it was. The signal comes once the load has dropped the tables."""
    database = make_database(mariadb)
    # Megabytes, so that the load is fed in several chunks.
    big_blog(database, rows=20)
    good = backups.take(url_of(database), tmp_path / "backups", "abc123", keep=1)
    execute(database, "CREATE TABLE newer (id INT PRIMARY KEY)")
    before = snapshot(database)
    monkeypatch.setattr(backups, "PROGRESS_SECONDS", 0)
    chunks = []

    def terminated(signum, frame):
        raise RuntimeError("the process would have ended here")

    def progress(done: int, fraction: float | None) -> None:
        """From the second chunk on, the drops that lead the first are in the client's hands."""
        chunks.append(done)
        if len(chunks) == 2:
            deadline = time.monotonic() + 60
            while "newer" in database.tables() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "newer" not in database.tables()  # the load has begun: the drops ran
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, terminated)  # what ends this process otherwise
    try:
        with pytest.raises(DeployError) as stopped:
            backups.restore(url_of(database), good.path, progress=progress)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert snapshot(database) == before
    assert str(stopped.value) == (
        f"restore of {database.migration_user}@127.0.0.1:{mariadb.port}/{database.name} failed: stopped by "
        "SIGTERM; the database is as it was before the restore (put back from a backup taken just before)"
    )


@pytest.mark.postgresql
def test_a_long_password_reaches_pg_dump_and_pg_restore_whole(postgresql, tmp_path):
    """libpq reads a password file's lines at any length: a password of kilobytes works (MariaDB's tools
    refuse one: test_a_password_too_long_for_the_tools_is_refused_before_anything_is_sent)."""
    long = "w/rd%:" * 1000
    database = make_pg_database(postgresql, password=long)
    blog = PostgreSQLBlog(database, long)
    blog.fill()
    before = blog.snapshot()
    backup = backups.take(url_of(database, long), tmp_path / "backups", "abc123", keep=1)
    blog.execute("DROP VIEW titles; DROP TABLE posts")
    backups.restore(url_of(database, long), backup.path)
    assert blog.snapshot() == before


@pytest.mark.postgresql
def test_a_postgresql_archive_without_its_note_names_its_database(pg_database, postgresql, tmp_path):
    backup = backups.take(url_of(pg_database), tmp_path / "backups", "abc123", keep=1)
    backup.path.with_name(backup.path.name + ".json").unlink()
    bare = backups.verify(backup.path)
    assert bare.name == pg_database.name
    other = make_pg_database(postgresql)
    with pytest.raises(DeployError, match=f"is a backup of {pg_database.name}, not of .*--from-database"):
        backups.check_source(bare, url_of(other))
    assert backups.check_source(bare, url_of(other), pg_database.name) == pg_database.name


# -- progress on a long wait ------------------------------------------------------------------------------


def test_a_backup_and_its_restore_tell_how_much_is_done_and_how_long_is_left(database, tmp_path, monkeypatch, capsys):
    big_blog(database, rows=40)
    monkeypatch.setattr(backups, "PROGRESS_SECONDS", 0)
    monkeypatch.setattr(console, "PROGRESS_EVERY", 0)  # a line for every chunk, not every few seconds
    url, directory = url_of(database), tmp_path / "backups"
    for told in ("first backup", "backup"):  # the second knows the first's size
        shown = console.Progress(told, "MB")
        backup = backups.take(url, directory, "abc123", keep=2, progress=shown.update)
        shown.end()
    shown = console.Progress("restore", "MB")
    backups.restore(url, backup.path, progress=shown.update)
    said = capsys.readouterr().err.splitlines()
    first = [told for told in said if told.startswith("first backup: ")]
    assert first and all(re.fullmatch(r"first backup: [\d,.]+ MB, [\d,.]+ MB/s", told) for told in first), said
    # The whole is known from the first backup's dump, which the second is as big as, and the restore reads
    # (with the drops it sends first: its last line may be past the whole, where no time left is told).
    for label in ("backup", "restore"):
        lines = [told for told in said if told.startswith(f"{label}: ")]
        pattern = rf"{label}: [\d,.]+ MB, [\d,.]+ MB/s, about [\d hmins]+ left"
        assert len(lines) > 2 and all(re.fullmatch(pattern, told) for told in lines[:-1]), said


def test_progress_at_a_terminal_is_one_line_redrawn_then_kept(capsys):
    shown = console.Progress("backfill posts")
    shown.terminal = True
    shown.update(10, 0.5)
    shown.update(20, 1.0)
    shown.end("done, 20 rows")
    told = capsys.readouterr().err
    assert told.count("\r") == 2 and told.count("\n") == 2, repr(told)
    assert told.endswith("about 0 s left\x1b[K\nbackfill posts: done, 20 rows\n"), repr(told)


def test_progress_without_a_terminal_says_a_line_every_few_seconds(capsys):
    shown = console.Progress("backup", "MB")
    shown.update(1_000_000)
    shown.update(2_000_000)  # within PROGRESS_EVERY of the first: not said
    assert capsys.readouterr().err.count("backup: ") == 1
    assert shown.told(30_000_000, 0.25, 10.0) == "30.0 MB, 3.0 MB/s, about 30 s left"
    assert shown.told(30_000_000, None, 10.0) == "30.0 MB, 3.0 MB/s"
    assert shown.told(30_000_000, 1.5, 10.0).endswith("time left unknown")  # past an estimate of the whole
    rows = console.Progress("backfill posts", start=100)
    assert rows.told(400, 0.5, 100.0) == "400 rows, 3 rows/s, about 1 min 40 s left"
