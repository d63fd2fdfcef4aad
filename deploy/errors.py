"""The one exception type users see, and how tasks show it: one line, no traceback."""

from functools import wraps


class DeployError(Exception):
    """An expected failure: printed as one line on stderr, exit status 1, no traceback."""


def one_line_errors(body):
    """Wrap a task body: a DeployError ends as `error: ...` on stderr and exit status 1."""
    from invoke import Exit

    @wraps(body)
    def run(c, *args, **kwargs):
        try:
            return body(c, *args, **kwargs)
        except DeployError as exc:
            from .credentials import mask

            # Messages may relay a driver's or a migration's own text: it may quote a password.
            raise Exit(f"error: {mask(str(exc))}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return run
