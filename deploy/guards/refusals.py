"""Refusals: checks that stop a command before it changes anything."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import dialects
from ..credentials import describe
from ..errors import DeployError

if TYPE_CHECKING:  # fab's laptop side imports these refusals without SQLAlchemy
    from sqlalchemy.engine import URL

    from ..database import Peer

LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1"}


def check_single_head(heads: tuple[str, ...]) -> None:
    """Several heads: Alembic cannot know which order the user means."""
    if len(heads) > 1:
        raise DeployError(
            f"the migrations have {len(heads)} heads ({', '.join(heads)}): merge them with "
            '`alembic merge -m "merge heads" heads`, commit, then try again'
        )


def check_expected_head(heads: tuple[str, ...], expected: str) -> None:
    """The code on the server must be the code the user reviewed."""
    if tuple(heads) != (expected,):
        raise DeployError(
            f"the server's migrations end at {', '.join(heads) or 'nothing'} but yours end at "
            f"{expected}: deploy the code first, or name a target with --to"
        )


def check_stamped(where: str, tables: list[str], stamped: bool, base: str | None, stamp_command: str) -> None:
    """Tables but no alembic_version: the database predates the migrations."""
    if tables and not stamped:
        raise DeployError(
            f"{where} has tables but no alembic_version, so its revision is unknown: if its schema "
            f"is that of the first revision, run `{stamp_command} {base}`, then upgrade"
        )


def check_resettable(settings_name: str, allowed: list[str], url: URL, force: bool) -> None:
    """db.reset drops every table: only development settings, and --force beyond a SQLite file."""
    if settings_name not in allowed:
        raise DeployError(
            f"db.reset drops every table and refuses the {settings_name!r} settings (allowed: {', '.join(allowed)})"
        )
    dialect = dialects.find(url)
    if dialect is not None and not dialect.server_programs:  # a file, here by definition
        return
    # A host the URL itself names as remote (or hides in its query string) is refused before any
    # prompt; the open connection has the last word (check_on_this_machine): drivers read hosts
    # from engine options and option files too.
    if url.host not in LOCAL_HOSTS or "host" in url.query:
        raise DeployError(f"db.reset refuses {describe(url)}: it is not on this machine")
    if not force:
        raise DeployError(f"db.reset would drop every table of {describe(url)}: add --force to do it")


def check_on_this_machine(url: URL, peer: Peer) -> None:
    """Judged on the open connection: the URL's host is one of several sources a driver reads
    (engine options' connect_args, option files, the query string)."""
    if not peer.local and peer.proof:  # this machine's address, but its server is not shown to be here
        raise DeployError(
            f"db.reset refuses {describe(url)}: the connection goes to {peer.address}, but {peer.proof} "
            "(a port forward to another machine looks the same)"
        )
    if not peer.local:
        raise DeployError(f"db.reset refuses {describe(url)}: the connection went to {peer.address}, not this machine")
