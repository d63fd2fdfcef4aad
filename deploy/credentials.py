"""The migration user's password: asked for, never stored, injected with SQLAlchemy's URL API."""

from __future__ import annotations

import getpass
import sys
from typing import TextIO

from sqlalchemy.engine import URL

from .errors import DeployError


def needs_password(url: URL) -> bool:
    """A user with an empty password (`mysql://root:@host/db`) means: ask for it."""
    return bool(url.username) and url.password == ""


def describe(url: URL) -> str:
    """user@host:port/database, for prompts and messages; never the password."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite {url.database or ':memory:'}"
    user = f"{url.username}@" if url.username else ""
    port = f":{url.port}" if url.port else ""
    return f"{user}{url.host or 'localhost'}{port}/{url.database or ''}"


def prompt_for(url: URL) -> str:
    return f"Password for {describe(url)}: "


def read_password(prompt: str, stdin: TextIO | None = None) -> str:
    """Silently at a terminal; otherwise the first line of standard input (for pipelines)."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        try:
            return getpass.getpass(prompt)
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)  # end the prompt's line before the error's
            raise DeployError("no password given") from None
    line = stdin.readline()
    if not line:
        raise DeployError("no password on standard input (the first line is read as the password)")
    return line.rstrip("\r\n")


def with_password(url: URL, stdin: TextIO | None = None) -> URL:
    """The URL ready to connect: asks for the password when the settings leave it empty."""
    if not needs_password(url):
        return url
    return url.set(password=read_password(prompt_for(url), stdin))
