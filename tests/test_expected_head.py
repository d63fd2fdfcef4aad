"""`--expect-head`: the migrations must end where the caller says, or nothing runs. fab relies on it
twice: the laptop compares the server's head with its own, and the server, told `go`, checks again
the head it sent in its status."""

from __future__ import annotations

from helpers import BASE, BIN, HEAD, POSTS, one_error_line, run, tables, version

from deploy.status import GO, STATUS_LINE


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


def test_after_go_the_server_checks_the_head_again(checkout):
    """In a conversation the expected head is checked after `go` too, before anything changes."""
    checkout.invoke("db.upgrade", f"--to={BASE}")
    server_entry = [str(BIN / "python"), "-m", "deploy.server"]  # what fab starts on the server
    result = run([*server_entry, "db.upgrade", "--conversation", f"--expect-head={POSTS}"], checkout.path, f"{GO}\n")
    told = [line for line in result.out.splitlines() if line.startswith(STATUS_LINE)]
    assert len(told) == 1, result.output  # the status went out first: the refusal came after go
    line = one_error_line(result)
    assert f"the server's migrations end at {HEAD} but yours end at {POSTS}" in line
    assert version(checkout) == [BASE]
