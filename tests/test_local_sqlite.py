"""`invoke db.*` on the SQLite development database, as a developer runs it."""

import os
import subprocess
import sys

import pytest
from helpers import BASE, HEAD, POSTS, one_error_line, sqlite, tables, version
from sqlalchemy import make_url

from deploy.dialects import sqlite as sqlite_dialect
from deploy.errors import DeployError
from deploy.guards.lock import migration_lock


def test_reset_builds_the_models_and_stamps_head(checkout):
    result = checkout.invoke("db.reset")
    assert result.code == 0, result.output
    assert tables(checkout) == {"users", "posts", "tags", "post_tags", "alembic_version"}
    assert version(checkout) == [HEAD]
    assert "Running upgrade" not in result.output


def test_reset_drops_stale_tables_and_a_stale_version(checkout):
    (checkout.path / "instance").mkdir()
    with sqlite(checkout) as db:
        db.execute("create table old_model (id integer primary key)")
        db.execute("create table alembic_version (version_num varchar(32) not null)")
        db.execute("insert into alembic_version values ('deadbeef0000')")
    assert checkout.invoke("db.reset").code == 0
    assert "old_model" not in tables(checkout)
    assert version(checkout) == [HEAD]


def test_reset_does_not_replay_the_history(checkout):
    # A head whose upgrade would fail: reset must stamp it, never run it.
    checkout.add_revision("neverrun", HEAD, upgrade="raise RuntimeError('replayed')")
    result = checkout.invoke("db.reset")
    assert result.code == 0, result.output
    assert version(checkout) == ["neverrun"]


def test_reset_refuses_production_settings(checkout):
    checkout.write_settings("production", SQLALCHEMY_DATABASE_URI="sqlite:///production.db")
    line = one_error_line(checkout.invoke("db.reset", "--force", env={"FLASK_CONFIG": "production"}))
    assert "refuses the 'production' settings" in line
    assert not (checkout.path / "instance" / "production.db").exists()


def test_reset_refuses_a_remote_host_even_with_force(checkout):
    checkout.write_settings("development", SQLALCHEMY_DATABASE_URI="mysql+pymysql://u:p@db.example.com/blog")
    line = one_error_line(checkout.invoke("db.reset", "--force"))
    assert "not on this machine" in line


def test_revision_without_changes_writes_nothing(checkout):
    checkout.invoke("db.reset")
    before = sorted(checkout.versions.iterdir())
    result = checkout.invoke("db.revision", "-m", "nothing new")
    assert result.code == 0, result.output
    assert "no schema changes detected" in result.out
    assert sorted(checkout.versions.iterdir()) == before


def test_revision_autogenerates_a_batch_script_formatted_by_the_hook(checkout):
    checkout.invoke("db.reset")
    models = checkout.path / "exampleapp" / "models.py"
    models.write_text(
        models.read_text().replace(
            "    name: Mapped[str] = mapped_column(String(100))\n",
            "    name: Mapped[str] = mapped_column(String(100))\n    bio: Mapped[str | None] = mapped_column(Text)\n",
        )
    )
    result = checkout.invoke("db.revision", "-m", "add user bio")
    assert result.code == 0, result.output
    path = checkout.path / result.out.strip().splitlines()[-1]
    assert path.exists() and path.parent == checkout.versions
    script = path.read_text()
    assert 'batch_op.add_column(sa.Column("bio", sa.Text(), nullable=True))' in script
    assert f'down_revision = "{HEAD}"' in script
    formatted = subprocess.run([sys.executable, "-m", "ruff", "format", "--check", str(path)], capture_output=True)
    assert formatted.returncode == 0, formatted.stdout
    # The new revision applies (SQLite batch mode) and the models then match again.
    assert checkout.invoke("db.upgrade").code == 0
    assert "no schema changes detected" in checkout.invoke("db.revision", "-m", "again").out


def test_empty_revision_is_written_without_a_database(checkout):
    result = checkout.invoke("db.revision", "-m", "hand written", "--empty")
    assert result.code == 0, result.output
    path = checkout.path / result.out.strip().splitlines()[-1]
    assert "def upgrade():\n    pass" in path.read_text()
    assert not (checkout.path / "instance" / "development.db").exists()


def test_revision_refuses_a_database_behind_head(checkout):
    checkout.invoke("db.reset")
    checkout.invoke("db.downgrade")
    line = one_error_line(checkout.invoke("db.revision", "-m", "x"))
    assert f"not at the head {HEAD}" in line and "invoke db.upgrade" in line


def test_upgrade_downgrade_current_stamp(checkout):
    result = checkout.invoke("db.upgrade", "--to", BASE)
    assert result.code == 0, result.output
    assert version(checkout) == [BASE]
    assert f"Running upgrade  -> {BASE}, create users" in result.err
    assert checkout.invoke("db.upgrade").code == 0
    assert version(checkout) == [HEAD]
    assert checkout.invoke("db.current").out.strip() == f"{HEAD} (add tags) (head)"
    assert checkout.invoke("db.downgrade").code == 0
    assert version(checkout) == [POSTS]
    assert "posts" in tables(checkout) and "tags" not in tables(checkout)
    assert checkout.invoke("db.stamp", BASE).code == 0
    assert version(checkout) == [BASE]
    checkout.invoke("db.stamp", POSTS)
    assert checkout.invoke("db.downgrade", "--to", "base").code == 0
    assert tables(checkout) == {"alembic_version"}


def test_upgrade_at_head_says_so(checkout):
    checkout.invoke("db.reset")
    result = checkout.invoke("db.upgrade")
    assert result.code == 0 and "already at" in result.out and "nothing to do" in result.out
    assert "nothing to do" in checkout.invoke("db.upgrade", "--to", HEAD).out


def test_upgrade_to_a_revision_behind_points_at_downgrade(checkout):
    checkout.invoke("db.reset")
    line = one_error_line(checkout.invoke("db.upgrade", "--to", BASE))
    assert f"{BASE} is behind {HEAD}" in line and f"invoke db.downgrade --to={BASE}" in line
    assert version(checkout) == [HEAD]


def test_history_heads_status(checkout):
    history = checkout.invoke("db.history").out.splitlines()
    assert history == [
        f"{POSTS} -> {HEAD} (head), add tags",
        f"{BASE} -> {POSTS}, add posts",
        f"<base> -> {BASE}, create users",
    ]
    assert checkout.invoke("db.heads").out.strip() == f"{HEAD} (head)"
    checkout.invoke("db.upgrade", "--to", BASE)
    status = checkout.invoke("db.status").out
    assert f"current:    {BASE}" in status
    assert f"  {POSTS}  add posts\n  {HEAD}  add tags" in status
    checkout.invoke("db.upgrade")
    # --downgrade plans one step back unless told otherwise, as db.downgrade does.
    assert f"pending:    1\n  {HEAD}  add tags" in checkout.invoke("db.status", "--downgrade").out


def test_plain_alembic_agrees_with_invoke(checkout):
    result = checkout.alembic("upgrade", "head")
    assert result.code == 0, result.output
    assert checkout.invoke("db.current").out.startswith(HEAD)
    assert checkout.alembic("current").out.strip() == f"{HEAD} (head)"
    production = checkout.alembic("current", env={"FLASK_CONFIG": "production"})
    assert production.code != 0 and "production.cfg is missing" in production.output
    assert "Traceback" not in production.output


def test_malformed_settings_file(checkout):
    checkout.write_settings("development", SQLALCHEMY_DATABASE_URI="sqlite:///x.db")
    path = checkout.path / "instance" / "development.cfg"
    path.write_text(path.read_text() + "this is not python\n")
    assert "cannot read" in one_error_line(checkout.invoke("db.current"))


def test_multiple_heads_say_how_to_merge(checkout):
    checkout.add_revision("branch", BASE)
    line = one_error_line(checkout.invoke("db.upgrade"))
    assert "2 heads" in line and "alembic merge" in line


def test_tables_without_alembic_version_say_how_to_stamp(checkout):
    (checkout.path / "instance").mkdir()
    with sqlite(checkout) as db:
        db.execute("create table users (id integer primary key)")
    line = one_error_line(checkout.invoke("db.upgrade"))
    assert f"invoke db.stamp {BASE}" in line
    assert tables(checkout) == {"users"}


def test_failing_migration_names_the_revision_and_where_the_database_is(checkout):
    checkout.invoke("db.reset")
    checkout.add_revision("broken", HEAD, upgrade="op.execute('SELECT * FROM no_such_table')")
    line = one_error_line(checkout.invoke("db.upgrade"))
    assert "revision broken" in line and f"the database is at {HEAD}" in line
    assert version(checkout) == [HEAD]


@pytest.mark.parametrize(
    "task", ["db.current", "db.upgrade", "db.downgrade", "db.stamp head", "db.history", "db.heads", "db.status"]
)
def test_commands_without_models_do_not_import_them(checkout, task):
    checkout.invoke("db.reset")
    result = checkout.invoke(*task.split(), env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.code == 0, result.output
    imported = {line.split("|")[-1].strip() for line in result.err.splitlines() if line.startswith("import time:")}
    assert "alembic" in imported  # the probe works...
    assert not {"exampleapp.models", "flask_sqlalchemy"} & imported  # ...and the models stayed out


def test_engine_options_from_the_settings_are_used(checkout):
    path = checkout.write_settings("development", SQLALCHEMY_DATABASE_URI="sqlite:///development.db")
    path.write_text(path.read_text() + "SQLALCHEMY_ENGINE_OPTIONS = {'connect_args': {'no_such_option': 1}}\n")
    assert "no_such_option" in one_error_line(checkout.invoke("db.reset"))


def test_reset_refuses_a_host_hidden_in_the_query_string(checkout):
    url = "mysql+pymysql://root:pw@/blog?host=db.prod.example.com"
    checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=url)
    assert "not on this machine" in one_error_line(checkout.invoke("db.reset", "--force"))


def test_a_stamp_typo_changes_nothing(checkout):
    checkout.invoke("db.upgrade", "--to", BASE)
    assert "Can't locate revision identified by 'typo'" in one_error_line(checkout.invoke("db.stamp", "typo"))
    assert version(checkout) == [BASE]
    fresh = checkout.invoke("db.stamp", "typo", env={"FLASK_CONFIG": "testing"})
    assert "Can't locate revision" in one_error_line(fresh)
    assert not (checkout.path / "instance" / "testing.db").exists()


def test_an_empty_version_table_still_counts_as_unstamped(checkout):
    (checkout.path / "instance").mkdir()
    with sqlite(checkout) as db:
        db.execute("create table users (id integer primary key)")
        db.execute("create table alembic_version (version_num varchar(32) not null)")
    assert f"invoke db.stamp {BASE}" in one_error_line(checkout.invoke("db.upgrade"))


def test_a_new_project_autogenerates_its_first_revision(checkout):
    for script in checkout.versions.glob("*.py"):
        script.unlink()
    result = checkout.invoke("db.revision", "-m", "initial")
    assert result.code == 0, result.output
    script = (checkout.path / result.out.strip().splitlines()[-1]).read_text()
    assert 'op.create_table(\n        "users"' in script and "down_revision = None" in script
    assert checkout.invoke("db.upgrade").code == 0
    assert tables(checkout) == {"users", "posts", "tags", "post_tags", "alembic_version"}


def test_a_broken_revision_file_is_one_clear_error(checkout):
    dangling = checkout.add_revision("dangling", "no_such_parent")
    assert "no_such_parent" in one_error_line(checkout.invoke("db.heads"))
    dangling.unlink()
    (checkout.versions / "syntax.py").write_text("revision = 'x'\ndown_revision = (\n")
    assert "cannot load the migration scripts" in one_error_line(checkout.invoke("db.upgrade"))


def point_at(checkout, app, config=None):
    """alembic.ini naming only `flask_app` (and `flask_config` when given)."""
    ini = checkout.path / "alembic.ini"
    lines = [line for line in ini.read_text().splitlines() if not line.startswith(("flask_app", "flask_config"))]
    at = lines.index("[post_write_hooks]")
    keys = [f"flask_app = {app}"] + ([f"flask_config = {config}"] if config else [])
    ini.write_text("\n".join(lines[:at] + keys + lines[at:]) + "\n")


def test_one_key_naming_the_app_factory_is_enough(checkout):
    point_at(checkout, "exampleapp:create_app")
    assert checkout.invoke("db.reset").code == 0
    assert version(checkout) == [HEAD]
    checkout.write_settings("production", SQLALCHEMY_DATABASE_URI="sqlite:///production.db")
    result = checkout.invoke("db.upgrade", "--yes", env={"FLASK_CONFIG": "production"})
    assert result.code == 0, result.output
    assert (checkout.path / "instance" / "production.db").exists()
    unknown = one_error_line(checkout.invoke("db.current", env={"FLASK_CONFIG": "nope"}))
    assert "failed for the 'nope' settings (KeyError)" in unknown


def test_one_key_naming_the_db_reads_the_instance_file(checkout):
    point_at(checkout, "exampleapp.models:db")
    assert "development.cfg is missing" in one_error_line(checkout.invoke("db.reset"))
    checkout.write_settings("development", SQLALCHEMY_DATABASE_URI="sqlite:///development.db")
    assert checkout.invoke("db.reset").code == 0
    assert version(checkout) == [HEAD]


def test_the_debug_switch_shows_the_traceback_behind_the_one_line(checkout):
    plain = checkout.invoke("db.upgrade", "--to", "zzz")
    assert "Traceback" not in plain.output
    debug = checkout.invoke("db.upgrade", "--to", "zzz", env={"DEPLOY_DEBUG": "1"})
    assert "Traceback (most recent call last)" in debug.err and "DeployError" in debug.err
    assert debug.code == plain.code == 1
    assert [line for line in debug.err.splitlines() if line.startswith("error: ")] == [one_error_line(plain)]


def test_revision_environment_on_still_tells_blank_from_autogenerate(checkout):
    """alembic.ini's revision_environment runs env.py for blank revisions too: neither may break."""
    ini = checkout.path / "alembic.ini"
    ini.write_text(ini.read_text().replace("[alembic]\n", "[alembic]\nrevision_environment = true\n", 1))
    checkout.invoke("db.reset")
    blank = checkout.invoke("db.revision", "-m", "by hand", "--empty")
    assert blank.code == 0, blank.output
    assert blank.out.strip().endswith("_by_hand.py")
    checkout.invoke("db.upgrade")
    unchanged = checkout.invoke("db.revision", "-m", "nothing")
    assert unchanged.code == 0 and "no schema changes detected" in unchanged.out, unchanged.output


def test_a_reader_that_goes_away_gets_no_traceback(checkout):
    """`invoke db.status | head -1`: the pipe closes before the task is done writing."""
    checkout.invoke("db.reset")
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", "db.status"],
        cwd=checkout.path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader is gone before the first line
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_commands_read_the_scripts_once_however_many_revisions_they_run(checkout, tmp_path):
    """Revisions run one Alembic call each (to stop between them), but the scripts are parsed once:
    parsing every file again per revision made long histories quadratic."""
    assert checkout.invoke("db.reset").code == 0
    loads = tmp_path / "loads"
    down = checkout.head()
    for n in range(6):
        revision = f"5c1e0000000{n}"
        script = checkout.add_revision(revision, down)
        if n == 0:  # counts each time Alembic parses this file
            script.write_text(script.read_text() + f"\nopen({str(loads)!r}, 'a').write('.')\n")
        down = revision
    result = checkout.invoke("db.upgrade")
    assert result.code == 0, result.output
    assert version(checkout) == [down]
    assert result.err.count("Running upgrade") == 6
    assert loads.read_text() == ".", loads.read_text()
    # db.reset and db.stamp, which run no revision, read the history once too.
    for command in (("db.reset",), ("db.stamp", "head")):
        loads.unlink()
        assert checkout.invoke(*command).code == 0
        assert loads.read_text() == ".", (command, loads.read_text())


def test_the_migration_lock_leaves_no_file_in_the_working_tree(checkout):
    """A database at the project's root, as many apps keep it: `git status` must show nothing new but
    it (instance/, where the run log goes, is out of version control)."""
    database = checkout.path / "app.db"
    checkout.write_settings("development", SQLALCHEMY_DATABASE_URI=f"sqlite:///{database}")
    before = set(checkout.path.rglob("*"))
    result = checkout.invoke("db.upgrade")
    assert result.code == 0, result.output
    new = set(checkout.path.rglob("*")) - before
    assert {path for path in new if not path.is_relative_to(checkout.path / "instance")} == {database}


def test_every_path_to_a_sqlite_database_finds_its_one_lock(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    with migration_lock(make_url(f"sqlite:///{tmp_path}/data/app.db"), None, wait=0):
        for same in ("sqlite:///data/app.db", f"sqlite:///{tmp_path}/link/app.db", "sqlite:///link/../data/app.db"):
            with pytest.raises(DeployError, match="another migration holds the lock"):
                with migration_lock(make_url(same), None, wait=0):
                    pass
        with migration_lock(make_url("sqlite:///data/other.db"), None, wait=0):
            pass  # another database: another lock
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["data", "link"]


@pytest.mark.parametrize("mode", [0o777, 0o755], ids=["writable-by-all", "not-a-folder"])
def test_a_lock_folder_others_could_have_made_is_refused(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(sqlite_dialect, "LOCK_FOLDER_ROOT", tmp_path)
    folder = tmp_path / f"flask-schema-deploy-{os.geteuid()}"
    if mode == 0o777:
        folder.mkdir()
        folder.chmod(mode)
    else:
        folder.symlink_to(tmp_path)
    with pytest.raises(DeployError, match="is not a folder of this user's alone: remove it"):
        with migration_lock(make_url(f"sqlite:///{tmp_path}/app.db"), None, wait=0):
            pass
