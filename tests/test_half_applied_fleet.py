"""A revision left half applied on one target of a fleet: the others go on, that one refuses until resolved.

Tenants share the server's checkout, so they share its run log: the refusal is that database's alone."""

from __future__ import annotations

from helpers import HEAD, PASSWORD, make_database, refused
from test_fleet import fab_or_hang, fleet_remote

PASSWORDS = f"{PASSWORD}\n{PASSWORD}\n"  # one per migration user: each tenant has its own
TWO_COLUMNS = (
    "op.add_column('posts', sa.Column('summary', sa.String(50)))\n    "
    "op.add_column('posts', sa.Column('legacy', sa.String(20)))"
)


def test_a_half_applied_target_refuses_alone_until_resolved(tmp_path, mariadb, sshd):
    databases = {name: make_database(mariadb) for name in ("tenant_a", "tenant_b")}
    remote = fleet_remote(tmp_path, sshd, databases)
    assert fab_or_hang(remote, "tenants", "db.upgrade", "--yes", stdin=PASSWORDS).code == 0
    broken = databases["tenant_b"]
    broken.query("ALTER TABLE posts ADD COLUMN legacy VARCHAR(20)")  # there before the revision
    remote.add_revision("twocols00001", TWO_COLUMNS)
    # The column added by hand is drift the revision meets: allowed, to see the run fail on it.
    failed = fab_or_hang(remote, "tenants", "db.upgrade", "--yes", "--allow-drift", stdin=PASSWORDS)
    refused(failed, "1 of 2 targets failed: tenant_b")
    assert "revision twocols00001 is half applied" in failed.output, failed.output
    assert databases["tenant_a"].version() == "twocols00001"
    remote.add_revision("next00000001", "op.create_table('notes', sa.Column('id', sa.Integer))")
    again = fab_or_hang(remote, "tenants", "db.upgrade", "--yes", stdin=PASSWORDS)
    refused(again, "1 of 2 targets failed: tenant_b")
    rows = {line.split()[0]: line for line in again.out.splitlines() if line.startswith("tenant_")}
    assert "has a revision left half applied by db.upgrade" in rows["tenant_b"], again.out
    assert databases["tenant_a"].version() == "next00000001"
    assert broken.version() == HEAD and "notes" not in broken.tables()
