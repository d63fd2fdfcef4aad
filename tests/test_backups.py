"""deploy.safety.backups against a real MariaDB (and SQLite): take, verify, list, restore; no mocks."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from helpers import PASSWORD, Database, ProcSampler, files_containing, make_database
from sqlalchemy.engine import make_url

from deploy.database import connect
from deploy.errors import DeployError
from deploy.safety import backups

# Quotes, backslashes, a NUL, control characters, non-ASCII and SQL that must stay data.
ODD = 'O\'Brien "q" back\\slash \0 nul\nnew\ttab ünïcødé 🎉 %s; -- DROP TABLE authors'
# What an option file could misread: its comment and quote characters, escapes, edge spaces.
HOSTILE = " a\\b\"c #d;e'f\tg\\ "
TRUNCATED = "it is truncated (the compressed data ends early)"


def url_of(database: Database, password: str = PASSWORD):
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


def snapshot(database: Database) -> dict:
    """Every table and view: its kind, definition and rows."""
    return {
        name: (kind, database.query(f"SHOW CREATE TABLE `{name}`")[0][1], database.query(f"SELECT * FROM `{name}`"))
        for name, kind in database.query("SHOW FULL TABLES")
    }


def test_restore_brings_back_exactly_the_database_backed_up(mariadb, tmp_path):
    database = make_database(mariadb)
    blog(database)
    before = snapshot(database)
    backup = backups.take(url_of(database), tmp_path / "backups", "abc123", keep=3)
    assert (backup.revision, backup.name, backup.size) == ("abc123", database.name, backup.path.stat().st_size)
    assert PASSWORD not in backup.database and database.migration_user in backup.database
    assert sorted(path.name for path in backup.path.parent.iterdir()) == [backup.path.name, backup.path.name + ".json"]

    execute(
        database,
        ("UPDATE authors SET name = %s WHERE id = 2", ("changed",)),
        "INSERT INTO authors (name) VALUES ('newcomer')",
        "DROP TABLE posts",
        # Newer than the backup, and it holds a foreign key to a table the restore drops and recreates.
        "CREATE TABLE comments (id INT PRIMARY KEY, author_id INT, FOREIGN KEY (author_id) REFERENCES authors (id))",
        "INSERT INTO comments VALUES (1, 1)",
        "CREATE VIEW newest AS SELECT MAX(id) AS id FROM authors",
        "UPDATE alembic_version SET version_num = 'def456'",
    )
    assert snapshot(database) != before

    assert backups.restore(url_of(database), backup.path) == backup
    assert snapshot(database) == before
    assert database.version() == "abc123"
    assert database.query("SELECT name FROM authors WHERE id = 1") == ((ODD,),)


def test_damaged_backups_are_refused_before_anything_changes(mariadb, tmp_path):
    database = make_database(mariadb)
    blog(database)
    good = backups.take(url_of(database), tmp_path / "backups", "abc123", keep=3)
    execute(database, "CREATE TABLE newer (id INT PRIMARY KEY)")  # a restore would drop it
    after = snapshot(database)

    data, text = good.path.read_bytes(), gzip.decompress(good.path.read_bytes())
    middle = len(data) // 2
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    files = {
        "truncated": data[:middle],
        "corrupt": data[:middle] + bytes(byte ^ 0xFF for byte in data[middle : middle + 16]) + data[middle + 16 :],
        "unfinished": gzip.compress(text[: text.rindex(b"-- Dump completed")]),
    }
    reasons = {
        "truncated": TRUNCATED,
        "corrupt": "its compressed data is corrupt",
        "unfinished": "the dump lacks its completion marker",
    }
    cases = {}
    for number, (name, content) in enumerate(files.items()):
        # Named apart from their reasons: the file's name is part of the message.
        (damaged / f"case{number}.sql.gz").write_bytes(content)
        cases[damaged / f"case{number}.sql.gz"] = reasons[name]
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
            backups.restore(url_of(database), path)
        assert snapshot(database) == after
    assert backups.verify(good.path) == good


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


def test_a_failing_dump_leaves_no_file_and_says_why_in_one_line(mariadb, tmp_path):
    database = make_database(mariadb)
    directory = tmp_path / "backups"
    wrong_password = url_of(database, PASSWORD + "x")
    no_such_database = url_of(database).set(database="nosuch")
    for url, reason in ((wrong_password, "Access denied"), (no_such_database, "'nosuch'")):
        with pytest.raises(DeployError) as failed:
            backups.take(url, directory, "abc123", keep=2)
        message = str(failed.value)
        assert message.startswith(f"backup of {database.migration_user}@127.0.0.1:"), message
        assert reason in message and "\n" not in message and PASSWORD not in message
        assert list(directory.iterdir()) == []


def test_backup_and_restore_leak_the_password_nowhere(mariadb, tmp_path, monkeypatch):
    database = make_database(mariadb)
    blog(database)
    # Megabytes: more than the pipes hold, so the tools are still running while progress holds them.
    execute(
        database,
        "CREATE TABLE big (id INT PRIMARY KEY, filler LONGTEXT)",
        "INSERT INTO big VALUES " + ", ".join(f"({n}, REPEAT(MD5({n}), 3000))" for n in range(40)),
    )
    before = snapshot(database)
    monkeypatch.setattr(backups, "PROGRESS_SECONDS", 0)
    sampler = ProcSampler(PASSWORD, deadline=60)
    reported: list[int] = []

    def progress(done: int) -> None:
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


def test_a_users_option_file_cannot_override_the_password(mariadb, tmp_path, monkeypatch):
    """~/.my.cnf holds a [client] password for some other user: the URL's own is the one used."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".my.cnf").write_text("[client]\npassword=not-this-one\n")
    monkeypatch.setenv("HOME", str(home))
    database = make_database(mariadb, password=HOSTILE)
    blog(database)
    before = snapshot(database)
    backup = backups.take(url_of(database, HOSTILE), tmp_path / "backups", "abc123", keep=1)
    execute(database, "DROP TABLE posts")
    backups.restore(url_of(database, HOSTILE), backup.path)
    assert snapshot(database) == before


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
        "case2.sqlite.gz": (gzip.compress(raw[: len(raw) // 2]), backups.SQLITE.incomplete),
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


def test_a_restore_that_fails_part_way_puts_the_database_back_as_it_was(mariadb, tmp_path):
    database = make_database(mariadb)
    blog(database)
    good = backups.take(url_of(database), tmp_path / "backups", "abc123", keep=3)
    # The tables are dropped and authors loaded before the broken statement is reached.
    broken = break_one_statement(good, b"INSERT INTO `posts`", tmp_path / "backups" / "broken.sql.gz")
    execute(database, "CREATE TABLE newer (id INT PRIMARY KEY)", "INSERT INTO newer VALUES (7)")
    execute(database, "UPDATE alembic_version SET version_num = 'def456'")
    before = snapshot(database)
    assert backups.verify(broken)  # it passes every check a file can have

    with pytest.raises(DeployError) as failed:
        backups.restore(url_of(database), broken)
    assert snapshot(database) == before  # as it was
    message = str(failed.value)
    assert message.startswith(f"restore of {database.migration_user}@127.0.0.1:{mariadb.port}/{database.name} failed: ")
    # The client's own error line, not the dashes it prints around the statement.
    assert "ERROR 1064 (42000) at line" in message and "error in your SQL syntax" in message and "---" not in message
    assert message.endswith("; the database is as it was before the restore (put back from a backup taken just before)")
    assert "\n" not in message and PASSWORD not in message
    # The backup taken for the way back is gone again: the directory holds what it held.
    assert sorted(path.name for path in broken.parent.iterdir()) == sorted(
        [good.path.name, good.path.name + ".json", broken.name]
    )

    # A backup the caller took first is the way back, and stays.
    taken = backups.take(url_of(database), tmp_path / "backups", "def456", keep=3)
    with pytest.raises(DeployError, match=f"as it was before the restore \\(put back from {taken.path.name}\\)$"):
        backups.restore(url_of(database), broken, before=taken)
    assert snapshot(database) == before and backups.verify(taken.path) == taken


def test_a_password_too_long_for_the_tools_is_refused_before_anything_is_sent(mariadb, tmp_path):
    """The MariaDB tools read their option file in pieces of 4094 bytes and would take the rest of the
    password line for options, named in their error. The longest that fits works; longer is refused."""
    room = backups.OPTION_LINE_BYTES - len('password=""')
    longest = ('"' + "w/rd%:" * room)[: room - 1]  # the quote is written escaped: two bytes
    database = make_database(mariadb, password=longest)
    blog(database)
    before = snapshot(database)
    good = backups.take(url_of(database, longest), tmp_path / "backups", "abc123", keep=3)
    execute(database, "DROP TABLE posts")
    backups.restore(url_of(database, longest), good.path)
    assert snapshot(database) == before

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


def test_a_restores_own_words_stay_whole_when_the_password_is_one_of_them(mariadb, tmp_path, monkeypatch):
    """Masking looks at what the message relays (the client's line), never at the suite's wording."""
    from deploy import credentials

    # This process remembers every password to mask it: this one is forgotten after the test.
    monkeypatch.setattr(credentials, "_known_passwords", set())
    word = "restore"
    database = make_database(mariadb, password=word)
    blog(database)
    good = backups.take(url_of(database, word), tmp_path / "backups", "abc123", keep=1)
    broken = break_one_statement(good, b"INSERT INTO `posts`", tmp_path / "broken.sql.gz")
    with pytest.raises(DeployError) as failed:
        backups.restore(url_of(database, word), broken)
    shown = credentials.mask_message(failed.value.marked)
    assert shown == str(failed.value) and shown.startswith("restore of ") and "before the restore" in shown


def test_a_restore_stopped_by_sigterm_puts_the_database_back_first(mariadb, tmp_path, monkeypatch):
    """A service stopped or a terminal closed mid-load: SIGTERM (or SIGHUP) ends the restore only once
    the database is as it was. The signal comes once the load has dropped the tables."""
    database = make_database(mariadb)
    blog(database)
    # Megabytes, so that the load is fed in several chunks.
    execute(
        database,
        "CREATE TABLE big (id INT PRIMARY KEY, filler LONGTEXT)",
        "INSERT INTO big VALUES " + ", ".join(f"({n}, REPEAT(MD5({n}), 3000))" for n in range(20)),
    )
    good = backups.take(url_of(database), tmp_path / "backups", "abc123", keep=1)
    execute(database, "CREATE TABLE newer (id INT PRIMARY KEY)")
    before = snapshot(database)
    monkeypatch.setattr(backups, "PROGRESS_SECONDS", 0)
    chunks = []

    def terminated(signum, frame):
        raise RuntimeError("the process would have ended here")

    def progress(done: int) -> None:
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
