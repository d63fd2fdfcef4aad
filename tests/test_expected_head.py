"""`--expect-head`: the migrations must end where the caller says, or nothing runs. fab relies on it
twice: the server's plan refuses a head that differs from the laptop's, and the run the laptop
starts once the plan is approved checks it again, with the revision the plan started from."""

from __future__ import annotations

from helpers import BASE, BIN, HEAD, POSTS, one_error_line, run, tables, version

from deploy.status import STATUS_LINE, Status


def test_upgrade_refuses_migrations_that_end_elsewhere(checkout):
    result = checkout.invoke("db.upgrade", f"--expect-head={POSTS}")
    line = one_error_line(result)
    assert line == (
        f"error: the server's migrations end at {HEAD} but yours end at {POSTS}: "
        "deploy the code first, or name a target with --to"
    ), line
    assert "Running upgrade" not in result.output
    assert not (checkout.path / "instance" / "development.db").exists() or "users" not in tables(checkout)


def test_upgrade_runs_when_the_migrations_end_as_expected(checkout):
    result = checkout.invoke("db.upgrade", f"--expect-head={HEAD}")
    assert result.code == 0, result.output
    assert version(checkout) == [HEAD]


def server_upgrade(checkout, *args: str):
    """`db.upgrade` as fab starts it on the server, with no standard input."""
    return run([str(BIN / "python"), "-m", "deploy.server", "db.upgrade", *args], checkout.path, "")


def test_the_plan_carries_the_servers_refusal_and_changes_nothing(checkout):
    checkout.invoke("db.upgrade", f"--to={BASE}")
    result = server_upgrade(checkout, "--plan", f"--expect-head={POSTS}")
    assert result.code == 0, result.output
    (told,) = [line for line in result.out.splitlines() if line.startswith(STATUS_LINE)]
    plan = Status.from_json(told[len(STATUS_LINE) :], "here")
    assert f"the server's migrations end at {HEAD} but yours end at {POSTS}" in plan.refusal
    assert [revision for revision, _ in plan.pending] == [POSTS, HEAD]
    assert version(checkout) == [BASE]


def test_an_approved_run_checks_the_head_again(checkout):
    """What fab starts once the plan is approved checks the head again, before anything changes."""
    checkout.invoke("db.upgrade", f"--to={BASE}")
    line = one_error_line(server_upgrade(checkout, f"--expect-from={BASE}", f"--expect-head={POSTS}"))
    assert f"the server's migrations end at {HEAD} but yours end at {POSTS}" in line
    assert version(checkout) == [BASE]


def test_an_approved_run_refuses_a_database_that_moved_since_the_plan(checkout):
    checkout.invoke("db.upgrade", f"--to={POSTS}")
    line = one_error_line(server_upgrade(checkout, f"--expect-from={BASE}", f"--expect-head={HEAD}"))
    assert f"is at {POSTS}" in line and f"no longer at {BASE}" in line and "nothing was run" in line, line
    assert version(checkout) == [POSTS]
