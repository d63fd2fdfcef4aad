"""The one exception type users see, and how tasks show it: one line, no traceback (unless asked), with
every password this process knows masked out of what it relays."""

import json
import os
import re
import sys
import traceback
from functools import wraps
from urllib.parse import quote, quote_plus

# Set to 1 for the full traceback behind any one-line error, for bug reports. fab passes it on.
DEBUG = "DEPLOY_DEBUG"


# Masking hides passwords in what a message relays (a driver's, a tool's, a migration's own words), never
# in the suite's own wording ("wrong user or password" stays whole when a password is "wrong"). A message
# marks what it relays between these two characters; one that marks nothing is masked whole.
RELAYED = ("\x02", "\x03")
MASK = "***"
SHORT = 4

# Every password this process has been given or connected with: the one thing `mask` hides.
# Process state, not configuration: it lives exactly as long as the passwords do.
_known_passwords: set[str] = set()


def relayed(text: str) -> str:
    """`text`, which came from elsewhere, marked as relayed: masking will look at it."""
    return RELAYED[0] + plain(text) + RELAYED[1]


def own(message: str) -> str:
    """`message` declared the suite's own wording but for what it marks relayed() (maybe nothing)."""
    return relayed("") + message


def plain(text: str) -> str:
    """`text` without its marks."""
    return text.replace(RELAYED[0], "").replace(RELAYED[1], "")


class DeployError(Exception):
    """An expected failure: printed as one line on stderr, exit status 1, no traceback.

    str() is the plain message; `marked` keeps what it relays marked, for masking."""

    def __init__(self, message: object = "", *args: object) -> None:
        self.marked = message if isinstance(message, str) else None
        super().__init__(plain(message) if isinstance(message, str) else message, *args)


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


def debugging() -> bool:
    return os.environ.get(DEBUG, "") not in ("", "0")


def one_line_errors(body):
    """Wrap a task body: a DeployError ends as `error: ...` on stderr and exit status 1."""
    from invoke import Exit

    @wraps(body)
    def run(c, *args, **kwargs):
        try:
            result = body(c, *args, **kwargs)
            # Output to a pipe is buffered: a reader gone (`| head -1`) shows here, not in the flush at exit.
            sys.stdout.flush()
            return result
        except DeployError as exc:
            if debugging():
                print(mask(traceback.format_exc()), file=sys.stderr)
            # Messages may relay a driver's or a migration's own text: it may quote a password.
            raise Exit(f"error: {mask_message(exc.marked or str(exc))}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None
        except BrokenPipeError:
            # The reader went away (`invoke db.history | head`): nothing left to say, and no traceback.
            # Python's advice: point stdout at devnull, so the flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=141) from None  # as a shell reports SIGPIPE

    return run
