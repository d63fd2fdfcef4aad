"""The db.* tasks' options: the user's `invoke` shows only what a person types, fab's server entry point
takes the options only the laptop passes, and a guard switch or setting declared once reaches every place."""

from __future__ import annotations

import re

import pytest
from helpers import BIN, REPO, Checkout, run
from invoke import Config
from invoke.main import program
from invoke.parser import Parser, ParserContext

from deploy import commands, local_tasks, remote_tasks, switches, task_config
from deploy.errors import DeployError
from deploy.options import SERVER_ONLY

SERVER_ONLY_FLAGS = tuple(f"--{name.replace('_', '-')}" for name in SERVER_ONLY)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Checkout:
    return Checkout(tmp_path_factory.mktemp("options") / "app")


def task_names(listed: str) -> list[str]:
    return re.findall(r"^\s+(db\.[a-z-]+)", listed, flags=re.M)


def shows_no_server_only_option(name: str, shown: str) -> None:
    assert f"Usage: inv[oke] [--core-opts] {name}" in shown, shown
    for flag in SERVER_ONLY_FLAGS:
        assert flag not in shown, f"{name}: {shown}"
    assert "used by fab" not in shown, f"{name}: {shown}"


def test_the_users_invoke_shows_no_server_only_option(checkout, monkeypatch, capsys):
    listed = checkout.invoke("--list")
    assert listed.code == 0, listed.output
    names = task_names(listed.out)
    assert set(names) == {f"db.{name}" for name in local_tasks.db_tasks(str(REPO / "tasks.py")).task_names}
    shown = checkout.invoke("--help", "db.upgrade")  # the command itself, once
    assert shown.code == 0, shown.output
    shows_no_server_only_option("db.upgrade", shown.out)
    # Every task's help, by the `invoke` program itself, in this process: the same code, a second each less.
    monkeypatch.chdir(checkout.path)
    for name in names:
        program.run(["invoke", "--help", name], exit=False)
        shows_no_server_only_option(name, capsys.readouterr().out)


def test_fabs_server_entry_point_takes_the_server_only_options(checkout):
    server_entry = [str(BIN / "python"), "-m", "deploy.server"]
    upgrade, downgrade = (
        run([*server_entry, "--help", f"db.{name}"], checkout.path) for name in ("upgrade", "downgrade")
    )
    assert upgrade.code == 0 and downgrade.code == 0, upgrade.output + downgrade.output
    for flag in (*SERVER_ONLY_FLAGS, "--no-backup", "--expect-head"):
        assert flag in upgrade.out + downgrade.out, upgrade.out + downgrade.out
    wrong = run([*server_entry, "db.status", "--nonsense"], checkout.path)
    assert wrong.code != 0
    assert "No idea what '--nonsense' is" in wrong.output  # the words ssh.server_error reads


def parsed(task, *argv: str) -> dict:
    """`argv` as Invoke parses it for `task`: its keyword arguments."""
    (call,) = Parser(contexts=[ParserContext(name=task.name, args=task.get_arguments())]).parse_argv([task.name, *argv])
    return call.as_kwargs


def test_a_guard_switch_is_declared_once(monkeypatch):
    extra = switches.Switch("no_vacuum", "skip the vacuum after the change", ("upgrade", "downgrade"))
    assert not hasattr(commands.Guards(), "no_vacuum")
    monkeypatch.setattr(switches, "GUARDS", (*switches.GUARDS, extra))

    user = local_tasks.collection("alembic.ini")
    server = local_tasks.collection("alembic.ini", server=True)
    laptop = remote_tasks.fab_tasks(str(REPO / "fabfile.py")).collections["db"]
    for collection in (user, server, laptop):
        for name in ("upgrade", "downgrade"):
            options = {argument.name: argument for argument in collection[name].get_arguments()}
            assert options["no_vacuum"].help == extra.help and options["no_vacuum"].default is False
        assert "no_vacuum" not in {argument.name for argument in collection["restore"].get_arguments()}

    # The laptop's option, forwarded as the flag the server's task parses back.
    chosen = parsed(laptop["upgrade"], "--no-vacuum", "--yes")
    flags = switches.forwarded("upgrade", chosen)
    assert flags == ["--no-vacuum"]
    on_the_server = parsed(server["upgrade"], "--plan", *flags)
    assert on_the_server["no_vacuum"] is True and on_the_server["no_backup"] is False

    # The guards' setting it turns on.
    switched = frozenset(name for name in switches.names() if on_the_server.get(name))
    assert commands.Guards(switched=switched).no_vacuum is True
    assert commands.Guards().no_vacuum is False


def test_a_guard_setting_is_declared_once(monkeypatch):
    extra = switches.Setting("vacuum_pause", switches.SECONDS, 1.5, "seconds paused before the vacuum")
    assert not hasattr(commands.Guards(), "vacuum_pause")
    monkeypatch.setattr(switches, "SETTINGS", (*switches.SETTINGS, extra))

    def config_with(value: str) -> Config:
        monkeypatch.setenv("INVOKE_DB_SAFETY_VACUUM_PAUSE", value)
        config = Config(defaults=local_tasks.collection("alembic.ini").configuration())
        config.load_shell_env()
        return config

    # Invoke's config takes it, checked as its kind says, a bad value in one line.
    with pytest.raises(DeployError) as refused:
        task_config.read(config_with("soon"))
    assert str(refused.value) == "INVOKE_DB_SAFETY_VACUUM_PAUSE='soon': expects a number of seconds, such as 10 or 2.5"
    configured = task_config.read(config_with("4"))
    assert configured.safety == {"vacuum_pause": 4.0}

    # The guards' setting: as configured, else its declared default.
    assert commands.Guards(configured.safety).vacuum_pause == 4.0
    assert commands.Guards().vacuum_pause == 1.5


def test_guards_know_only_declared_switches_and_settings():
    with pytest.raises(TypeError, match="not guard switches: no_such"):
        commands.Guards(switched=frozenset({"no_such"}))
    with pytest.raises(TypeError, match="not guard settings: no_such"):
        commands.Guards({"no_such": 1})
    with pytest.raises(AttributeError):
        commands.Guards().no_such  # noqa: B018


def test_a_server_suite_without_the_entry_point_is_refused_in_one_line(remote):
    (remote.server.path / "deploy" / "server.py").unlink()
    remote.refuses("the server's suite is older than yours (no deploy.server): deploy it first")
