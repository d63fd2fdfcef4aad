"""The migration user's password: asked for, never stored, injected with SQLAlchemy's URL API,
and masked out of any message this process prints."""

from __future__ import annotations

import getpass
import json
import re
import sys
from typing import TYPE_CHECKING, TextIO
from urllib.parse import quote, quote_plus

from . import dialects
from .errors import RELAYED, DeployError, plain

if TYPE_CHECKING:  # fab's laptop side asks for passwords without importing SQLAlchemy
    from sqlalchemy.engine import URL

MASK = "***"
SHORT = 4
NOT_UTF8 = "standard input is not UTF-8 text: nothing was sent or changed"

# Every password this process has been given or connected with: the one thing `mask` hides.
# Process state, not configuration: it lives exactly as long as the passwords do.
_known_passwords: set[str] = set()


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


def remember(password: str | None) -> None:
    if password:
        _known_passwords.add(password)


def mask(text: str) -> str:
    """`text` with every known password, in each encoding a message may carry it, replaced by ***."""
    forms = {form for password in _known_passwords for form in _encodings(password)}
    # Longest first: a raw password can be part of one of its encodings.
    for form in sorted(forms, key=len, reverse=True):
        # A password of a few letters is masked where a URL holds it, not inside every word.
        text = text.replace(form, MASK) if len(form) >= SHORT else text.replace(f":{form}@", f":{MASK}@")
    return text


def mask_message(text: str) -> str:
    """A message for output, without its marks: where it marks what it relays (errors.relayed), only
    that is masked, the suite's own wording never; a message that marks nothing is masked whole."""
    if RELAYED[0] not in text:
        return mask(text)
    pieces = re.split(f"{re.escape(RELAYED[0])}(.*?){re.escape(RELAYED[1])}", text, flags=re.DOTALL)
    return plain("".join(mask(piece) if index % 2 else piece for index, piece in enumerate(pieces)))


def _encodings(password: str) -> set[str]:
    from sqlalchemy.engine import make_url

    # As SQLAlchemy renders it in a URL (str(engine.url) with the password shown).
    rendered = make_url("x://u:@h").set(password=password).render_as_string(hide_password=False)
    percent = {quote(password, safe=""), quote(password), quote_plus(password), rendered[len("x://u:") : -len("@h")]}
    return {
        password,
        repr(password)[1:-1],
        json.dumps(password)[1:-1],
        *percent,
        *(form.lower() for form in percent),  # %2F and %2f decode alike
    }
