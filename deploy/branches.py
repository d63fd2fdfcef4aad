"""Revisions across git branches: `revision_against` (db.revision --base: autogenerate against the
schema another branch's models build, from a temporary git worktree of it) and `merge` (db.merge:
one revision over every head, as branches merged in git leave them)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from sqlalchemy.engine import URL, make_url

from . import alembic_ops, commands, database
from .commands import Project, current_of
from .database import translate_errors
from .errors import DeployError
from .guards import refusals
from .releases import git, worktree
from .renames import Renames
from .schema import plural
from .settings import SETTINGS_VARIABLE

# --- db.merge


@dataclass(frozen=True)
class Merged:
    heads: tuple[str, ...]
    path: Path | None

    def __str__(self) -> str:
        if self.path is None:
            return (
                f"{plural(len(self.heads), 'head')} ({', '.join(self.heads) or 'no revisions yet'}): nothing to merge"
            )
        # The path last, alone on its line, as db.revision prints it.
        return f"merged {', '.join(self.heads)}:\n{self.path}"


def merge(project: Project, message: str | None = None) -> Merged:
    """One merge revision over every head (alembic merge heads); nothing with a single head."""
    heads = project.heads()
    if len(heads) < 2:
        return Merged(heads, None)
    message = message or f"merge heads {', '.join(heads[:-1])} and {heads[-1]}"
    written = alembic_ops.run(command.merge, project.alembic, None, "heads", message=message)
    return Merged(heads, Path(written.path))


# --- db.revision --base (git and its worktrees: deploy.releases, which the compatibility check shares)


def build_base_schema(base_root: Path, url: URL, settings_name: str, branch: str) -> None:
    """The base branch's own `invoke db.reset`, in a subprocess (its models and ours must never
    share a process), onto the scratch database instead of its development one."""
    instance = base_root / "instance"
    instance.mkdir(exist_ok=True)
    (instance / f"{settings_name}.cfg").write_text(
        f"SQLALCHEMY_DATABASE_URI = {url.render_as_string(hide_password=False)!r}\n"
        "SQLALCHEMY_ALEMBIC_URI = None\nSQLALCHEMY_ENGINE_OPTIONS = {}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "db.reset"],
        cwd=base_root,
        env={**os.environ, SETTINGS_VARIABLE: settings_name},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        said = lines[-1].removeprefix("error: ") if lines else f"exit status {done.returncode}"
        raise DeployError(f"cannot build {branch}'s schema: {said}")


def revision_against(project: Project, message: str, base: str, renames: Renames | None = None) -> Path | None:
    """Autogenerate a revision with this checkout's models against the schema `base`'s models build,
    stamped at `base`'s head, in a scratch SQLite: neither the working tree nor the development
    database is touched. The script written, or None when there is no change; `renames` as for
    commands.revision."""
    refusals.check_single_head(project.heads())
    root = alembic_ops.root(project.alembic)
    top = Path(
        git(root, "rev-parse", "--show-toplevel", failure=f"{root} is not in a git repository: --base needs one")
    )
    commit = git(
        root,
        "rev-parse",
        "--verify",
        "--quiet",
        f"{base}^{{commit}}",
        failure=f"unknown branch {base!r}: `git branch --list` shows the branches",
    )
    settings_name = project.settings.name
    with tempfile.TemporaryDirectory(prefix="db-revision-") as folder:
        url = make_url(f"sqlite:///{Path(folder) / 'base.db'}")
        with worktree(top.resolve(), commit, Path(folder) / "base") as tree:
            build_base_schema(tree / root.relative_to(top.resolve()), url, settings_name, base)
        with database.connect(url) as connection, translate_errors(url):
            base_head = current_of(alembic_ops.current_heads(connection))
            try:
                alembic_ops.resolve(project.alembic, base_head)
            except DeployError:
                raise DeployError(
                    f"{base}'s migrations end at {base_head}, which this checkout does not have: "
                    f"merge {base} into this branch first"
                ) from None
            # This branch's own revisions since `base`, so the new one follows them.
            alembic_ops.migrate(project.alembic, connection, "head")
            connection.commit()
        return commands.revision(scratch_project(project, url), message, renames=renames)


def scratch_project(project: Project, url: URL) -> Project:
    """The project, its settings pointing at a scratch database (without the app's engine options)."""
    config = {
        **project.settings.config,
        "SQLALCHEMY_DATABASE_URI": url,
        "SQLALCHEMY_ALEMBIC_URI": None,
        "SQLALCHEMY_ENGINE_OPTIONS": {},
    }
    return dataclasses.replace(project, settings=dataclasses.replace(project.settings, config=config))
