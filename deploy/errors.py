"""The one exception type users see, and how tasks show it: one line, no traceback (unless asked)."""

import os
import sys
import traceback
from functools import wraps

# Set to 1 for the full traceback behind any one-line error, for bug reports. fab passes it on.
DEBUG = "DEPLOY_DEBUG"


# Masking hides passwords in what a message relays (a driver's, a tool's, a migration's own words), never
# in the suite's own wording ("wrong user or password" stays whole when a password is "wrong"). A message
# marks what it relays between these two characters; one that marks nothing is masked whole.
RELAYED = ("\x02", "\x03")


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


def debugging() -> bool:
    return os.environ.get(DEBUG, "") not in ("", "0")


def one_line_errors(body):
    """Wrap a task body: a DeployError ends as `error: ...` on stderr and exit status 1."""
    from invoke import Exit

    @wraps(body)
    def run(c, *args, **kwargs):
        from .credentials import mask, mask_message

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
