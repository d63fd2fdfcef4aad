"""The pure parts, in-process: the status protocol, remote command lines, masking, refusals, results.

No server, no subprocess: these run in milliseconds, so every case the end-to-end tests would be
too slow to try one by one is tried here."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import subprocess
from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy import make_url

from deploy import credentials, errors
from deploy.commands import Migration, Reset
from deploy.database import Peer
from deploy.errors import DeployError
from deploy.guards import refusals
from deploy.settings import unencoded_password
from deploy.ssh import command_line, how_it_ended, server_error
from deploy.status import PROTOCOL, Status

STATUS = Status(
    database="app@db:3306/blog",
    database_name="blog",
    migration_user="root@db:3306/blog",
    needs_password=True,
    heads=["c"],
    current=["a"],
    pending=[["b", "add posts"], ["c", "add tags"]],
    target_behind=False,
    unstamped_tables=[],
    base="a",
)


# -- the laptop-server status ------------------------------------------------------------------


def test_status_survives_the_trip_through_json():
    assert Status.from_json(STATUS.to_json(), "prod") == STATUS
    assert json.loads(STATUS.to_json())["protocol"] == PROTOCOL


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda data: data.pop("protocol"), "the server's suite is older than yours (status protocol 0"),
        (lambda data: data.update(protocol=PROTOCOL - 1), "is older than yours"),
        (lambda data: data.update(protocol=PROTOCOL + 1), "is newer than yours"),
        (lambda data: data.pop("base"), "other fields"),
        (lambda data: data.update(extra=1), "other fields"),
    ],
)
def test_a_status_from_another_protocol_is_one_clear_line(change, expected):
    data = json.loads(STATUS.to_json())
    change(data)
    with pytest.raises(DeployError, match=re.escape(expected)):
        Status.from_json(json.dumps(data), "prod")


@pytest.mark.parametrize("text", ["", "not json", "Traceback (most recent call last):"])
def test_no_status_at_all_is_one_clear_line(text):
    with pytest.raises(DeployError, match="gave no status"):
        Status.from_json(text, "prod")


def test_status_text_lists_the_pending_revisions_or_says_it_cannot_plan():
    assert str(STATUS).endswith("pending:    2\n  b  add posts\n  c  add tags")
    unplannable = dataclasses.replace(STATUS, heads=["c", "d"], pending=None)
    assert "up to date" not in str(unplannable) and "pending:    unknown" in str(unplannable)


# -- remote command lines -------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", ["plain", "it's", "$(rm -rf /)", "a b;c", "--to=-1", "`x`"])
def test_command_lines_quote_every_word(hostile, tmp_path):
    app_dir = tmp_path / f"srv {hostile}".replace("/", "÷")
    app_dir.mkdir()
    # An interpreter that prints where it runs, its arguments and the environment variable given.
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\nprintf \'%s\\n\' "$PWD" "$X" "$@"\n')
    python.chmod(0o755)
    line = command_line(["-m", "invoke", "db.stamp", hostile], str(app_dir), str(python), {"X": hostile})
    # A real shell reads back exactly the words given, and runs nothing else.
    shell = subprocess.run(["bash", "-c", line], capture_output=True, text=True)
    assert shell.stdout.splitlines() == [str(app_dir), hostile, "-m", "invoke", "db.stamp", hostile]
    assert line.endswith("; exit $?")


def test_command_lines_check_the_server_is_set_up(tmp_path):
    """The app_dir and interpreter checks cost no round trip: they are part of the one command line,
    and fail as the server's tasks do, in one `error:` line."""
    where = "deploy@db1:22"
    for app_dir, pythons, said in [
        (tmp_path / "nowhere", ("/bin/true",), f"app_dir {tmp_path / 'nowhere'} does not exist on {where}"),
        (tmp_path, (f"{tmp_path}/py",), f"no Python at {tmp_path}/py on {where}: set environments.prod.python"),
        (tmp_path, ("/x/.venv/bin/python", "/x/venv/bin/python"), "no Python at /x/.venv/bin/python or /x/venv"),
    ]:
        line = command_line([], str(app_dir), pythons, {}, where, "prod")
        shell = subprocess.run(["bash", "-c", line], capture_output=True, text=True)
        assert shell.returncode == 1
        assert shell.stderr.startswith(f"error: {said}") and shell.stderr.count("\n") == 1, shell.stderr


def test_command_lines_run_the_first_interpreter_that_exists_and_say_which(tmp_path):
    """Without `python` set, .venv then venv, tried in the one command line."""
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text('#!/bin/sh\necho "ran $0 $*"\n')
    (venv / "python").chmod(0o755)
    pythons = (f"{tmp_path}/.venv/bin/python", f"{venv}/python")
    line = command_line(["-V"], str(tmp_path), pythons, {})
    shell = subprocess.run(["bash", "-c", line], capture_output=True, text=True)
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout == f"ran {venv}/python -V\n"
    assert shell.stderr == f"python: {venv}/python\n"


@pytest.mark.parametrize(
    ("exited", "expected"),
    [
        (-1, "ended without an exit status"),
        (137, "killed by signal 9"),
        (139, "killed by signal 11"),
        (3, "failed with exit status 3 and no message"),
    ],
)
def test_how_a_remote_command_ended(exited, expected):
    assert expected in how_it_ended(exited)


def test_the_servers_own_reason_is_its_last_error_line():
    assert server_error("INFO x\nerror: access denied\n\n") == "access denied"
    assert server_error("INFO x\nFAILED: two heads\n") == "two heads"
    assert server_error("Segmentation fault\n") is None


def test_an_older_suite_on_the_server_is_named_by_the_switch_it_lacks():
    from types import SimpleNamespace

    target = SimpleNamespace(app_dir="/srv/app", python="/srv/app/.venv/bin/python", environment="prod")
    server = SimpleNamespace(name="prod", where="deploy@db1:22", target=target)
    for switch in ("--conversation", "--targets"):
        said = server_error(f"No idea what '{switch}' is!\n", server)
        assert said == f"prod: the server's suite is older than yours (no {switch}): deploy it first"
    # A suite older still lacks fab's server entry point altogether: Python's words for that.
    said = server_error("/srv/app/.venv/bin/python: No module named deploy.server\n", server)
    assert said == "prod: the server's suite is older than yours (no deploy.server): deploy it first"


# -- passwords ---------------------------------------------------------------------------------------

SECRET = "r00t@pw:/%#?' x+y"


@pytest.mark.parametrize(
    "form",
    [
        SECRET,
        quote(SECRET, safe=""),
        quote(SECRET),
        quote_plus(SECRET),
        quote(SECRET, safe="").lower(),
        repr(SECRET)[1:-1],
        json.dumps(SECRET)[1:-1],
        make_url("mysql://root:@h/db").set(password=SECRET).render_as_string(hide_password=False),
    ],
)
def test_every_encoding_of_a_known_password_is_masked(form):
    errors.remember(SECRET)
    masked = errors.mask(f"failed: {form} at line 3")
    assert "***" in masked and masked.startswith("failed: ") and masked.endswith(" at line 3")
    for other in (SECRET, quote(SECRET, safe=""), quote_plus(SECRET)):
        assert other not in masked


def test_a_short_password_is_masked_only_where_a_url_holds_it():
    errors.remember("pw")
    assert errors.mask("mysql://root:pw@db/x: example pwd") == "mysql://root:***@db/x: example pwd"


@pytest.mark.parametrize("data", [b"\xff\xfepw\n", "caf\udce9\n"])
def test_input_that_is_not_utf8_is_refused(data):
    stdin = io.BytesIO(data) if isinstance(data, bytes) else io.StringIO(data)
    stream = io.TextIOWrapper(stdin, errors="surrogateescape") if isinstance(data, bytes) else stdin
    with pytest.raises(DeployError, match="not UTF-8"):
        credentials.read_password("prompt: ", stream)


def test_answers_and_the_password_come_from_successive_lines():
    stdin = io.TextIOWrapper(io.BytesIO(b"blog\nsecret\n"))
    assert credentials.ask("name? ", stdin) == "blog"
    assert credentials.read_password("password: ", stdin) == "secret"
    assert credentials.ask("more? ", stdin) == ""


@pytest.mark.parametrize(
    ("raw", "unencoded"),
    [
        ("mysql://app:Tr0ub@dor?42xyz@db/blog", True),
        ("mysql://app:50%off@db/blog", True),
        (f"mysql://app:{quote(SECRET, safe='')}@db/blog", False),
        ("mysql://root:@db/blog", False),
        ("sqlite:///100%.db", False),
    ],
)
def test_unencoded_passwords_are_told_from_encoded_ones(raw, unencoded):
    assert unencoded_password(raw) is unencoded


# -- refusals and results -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "refused"),
    [
        (Peer("127.0.0.1:3306", local=True), False),
        (Peer("Unix socket /run/mysqld/mysqld.sock", local=True), False),
        (Peer("10.0.0.5:3306", local=False), True),
    ],
)
def test_reset_goes_where_the_connection_really_went(peer, refused):
    url = make_url("mysql+pymysql://root:@localhost/blog")
    if refused:
        with pytest.raises(DeployError, match="the connection went to 10.0.0.5:3306, not this machine"):
            refusals.check_on_this_machine(url, peer)
    else:
        refusals.check_on_this_machine(url, peer)


def test_results_say_what_happened():
    assert str(Reset("SQLite x.db", None, 4, "c (add tags)")) == "reset SQLite x.db: 4 tables, stamped at c (add tags)"
    assert "via 127.0.0.1:3306:" in str(Reset("root@localhost/blog", "127.0.0.1:3306", 4, "c"))
    assert str(Migration("db", 0, "c (add tags)")) == "db is already at c (add tags): nothing to do"
    assert str(Migration("db", 2, "c (add tags)")) == "db is now at c (add tags)"


# -- environments and their targets ------------------------------------------------------------------


def selected(env: dict, only: str | None = None):
    from invoke import Config

    from deploy.environments import ONLY, SELECTED, selected_targets

    config = Config(
        {"environments": {"tenants": env}, SELECTED: "tenants", ONLY: only, "db": {"environment_tasks": []}}
    )
    return selected_targets(config)


def test_a_fleet_is_every_host_with_every_settings_name():
    found, concurrency = selected({"hosts": ["d@a:22", "d@b:22"], "app_dir": "/srv/x", "settings": ["acme", "globex"]})
    assert [target.name for target in found] == ["a:22/acme", "a:22/globex", "b:22/acme", "b:22/globex"]
    assert concurrency == 4
    assert found[1].label == "tenants/a:22/globex" and found[1].caller == "fab tenants --only a:22/globex"
    assert found[1].pythons == ("/srv/x/.venv/bin/python", "/srv/x/venv/bin/python")
    assert found[1].settings == "globex"
    one, _ = selected({"host": "d@a", "app_dir": "/srv/x"})
    assert [(target.name, target.label, target.caller, target.settings) for target in one] == [
        ("", "tenants", "fab tenants", "production")
    ]
    narrowed, _ = selected({"hosts": ["a", "b"], "app_dir": "/x", "concurrency": 1}, only="b")
    assert [target.host for target in narrowed] == ["b"]


@pytest.mark.parametrize(
    ("env", "only", "message"),
    [
        ({"hosts": ["a", "a"], "app_dir": "/x"}, None, "hosts in fabric.yaml names one twice"),
        ({"hosts": [], "app_dir": "/x"}, None, "environments.tenants.host is not set"),
        ({"hosts": ["a", "b"], "app_dir": "/x", "concurrency": 0}, None, "concurrency must be a whole number"),
        ({"hosts": ["a", "b"], "app_dir": "/x"}, "c", "tenants has no target c (its targets: a, b)"),
        ({"host": "a", "app_dir": "/x"}, "a", "it has only one"),
        ({"host": "a", "settings": [3], "app_dir": "/x"}, None, "settings in fabric.yaml must be a name"),
    ],
)
def test_a_wrong_fleet_is_one_line(env, only, message):
    with pytest.raises(DeployError, match=re.escape(message)):
        selected(env, only)


# -- the tasks' own settings (Invoke's config) ----------------------------------------------------------


def test_invokes_environment_config_reaches_the_guards_as_numbers(monkeypatch):
    from invoke import Config

    from deploy import task_config

    monkeypatch.setenv("INVOKE_DB_SAFETY_LOCK_WAIT", "30")
    monkeypatch.setenv("INVOKE_DB_SAFETY_RETRIES", "2")
    config = Config(defaults={"db": task_config.invoke_defaults("alembic.ini")})
    config.load_shell_env()
    found = task_config.read(config)
    assert found.safety == {"lock_wait": 30.0, "retries": 2}
    assert found.reset_settings == ["development", "testing"]


def test_masking_touches_what_a_message_relays_never_the_suites_own_words(monkeypatch):
    from deploy.errors import own, relayed

    monkeypatch.setattr(errors, "_known_passwords", {"wrong"})
    marked = own(f"access denied for app@db: wrong user or password ({relayed('server said: wrong')})")
    assert DeployError(marked).marked == marked and "\x02" not in str(DeployError(marked))
    assert errors.mask_message(marked) == "access denied for app@db: wrong user or password (server said: ***)"
    # A message that marks nothing may relay anything: all of it is masked.
    assert errors.mask_message("the tool said: wrong") == "the tool said: ***"


def test_a_test_starts_with_no_password_remembered_by_the_tests_before_it():
    """Masking in-process must not depend on the order tests run in (those above remember several)."""
    assert errors.mask("secret pw Tr0ub4dor") == "secret pw Tr0ub4dor"


def test_the_run_log_keeps_the_suites_own_words_and_masks_what_they_relay(tmp_path, monkeypatch):
    from deploy.errors import own, relayed
    from deploy.guards import runlog

    monkeypatch.setattr(errors, "_known_passwords", {"wrong"})
    with pytest.raises(DeployError), runlog.recorded(tmp_path, "db.upgrade", "app@db/blog", "a", "b"):
        raise DeployError(own(f"access denied for app@db/blog: wrong user or password ({relayed('said: wrong')})"))
    outcome = runlog.last_run(tmp_path).outcome
    assert outcome == "failed: access denied for app@db/blog: wrong user or password (said: ***)"


def test_a_fleet_merges_ssh_config_into_fabrics_config_before_its_threads_start(monkeypatch, tmp_path):
    """Reading ssh_config re-merges Fabric's whole config: a thread reading the config meanwhile can find
    a key missing (a full run once ended in such a traceback). The fleet builds every host's Server in
    the calling thread and connects in parallel only."""
    import threading
    from contextlib import ExitStack

    from fabric import Config
    from invoke import Context

    from deploy import fleet
    from deploy.environments import Target

    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("")
    context = Context(Config(overrides={"ssh_config_path": str(ssh_config), "timeouts": {"connect": 2}}))
    merged_in = []
    merge = Config.load_ssh_config

    def recorded(self):
        merged_in.append(threading.current_thread())
        return merge(self)

    monkeypatch.setattr(Config, "load_ssh_config", recorded)
    # Three hosts on loopback ports nobody listens on: each connection is refused at once.
    targets = [Target("tenants", f"t{n}", f"127.0.0.{n}:1", "/app", ("python3",), f"t{n}") for n in (1, 2, 3)]
    outcomes = {target: fleet.Outcome(target) for target in targets}
    with ExitStack() as stack:
        assert fleet.open_hosts(context, targets, 3, ["db.status"], stack, outcomes) == {}
    assert len(merged_in) == 3 and all(thread is threading.main_thread() for thread in merged_in)
    assert all("cannot reach" in str(outcome.error) for outcome in outcomes.values())
