"""The migration user's password: asked for, never stored, injected with SQLAlchemy's URL API.
errors.mask keeps it out of any message this process prints."""

from __future__ import annotations

import getpass
import sys
from typing import TYPE_CHECKING, TextIO

from . import dialects
from .errors import DeployError, remember

if TYPE_CHECKING:  # fab's laptop side asks for passwords without importing SQLAlchemy
    from sqlalchemy.engine import URL

NOT_UTF8 = "standard input is not UTF-8 text: nothing was sent or changed"


def needs_password(url: URL) -> bool:
    """A user with an empty password (`mysql://root:@host/db`) means: ask for it."""
    return bool(url.username) and url.password == ""


def describe(url: URL) -> str:
    """user@host:port/database (a SQLite file by its path), for prompts and messages; never the password."""
    return dialects.describe(url)


def prompt_for(url: URL) -> str:
    return f"Password for {describe(url)}: "


def next_line(stdin: TextIO) -> str | None:
    """The next line of a non-terminal standard input, strictly UTF-8, or None at its end.

    A bad byte is refused here, not half-sent to a server that would then wait for the rest."""
    raw = getattr(stdin, "buffer", None)
    try:
        line = raw.readline().decode("utf-8") if raw is not None else stdin.readline()
        line.encode("utf-8")  # surrogates from a lenient decoder are not text either
    except UnicodeError:
        raise DeployError(NOT_UTF8) from None
    return line.rstrip("\r\n") if line else None


def read_password(prompt: str, stdin: TextIO | None = None) -> str:
    """Silently at a terminal; otherwise the first line of standard input (for pipelines)."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        try:
            password = getpass.getpass(prompt)
            password.encode("utf-8")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)  # end the prompt's line before the error's
            raise DeployError("no password given") from None
        except UnicodeError:
            raise DeployError(NOT_UTF8) from None
    else:
        password = next_line(stdin)
        if password is None:
            raise DeployError("no password on standard input (the first line is read as the password)")
    remember(password)
    return password


def ask(prompt: str, stdin: TextIO | None = None) -> str:
    """An answer typed at a terminal, or the next line of standard input; none at all answers ''."""
    stdin = stdin or sys.stdin
    if not stdin.isatty():
        print(prompt, end="", flush=True)
        return next_line(stdin) or ""
    try:
        answer = input(prompt)
        answer.encode("utf-8")
    except EOFError:
        return ""
    except UnicodeError:
        raise DeployError(NOT_UTF8) from None
    return answer


def with_password(url: URL, stdin: TextIO | None = None) -> URL:
    """The URL ready to connect: asks for the password when the settings leave it empty."""
    if not needs_password(url):
        return url
    return url.set(password=read_password(prompt_for(url), stdin))
