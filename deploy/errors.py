"""The one exception type users see: its message is the whole story, on one line."""


class DeployError(Exception):
    """An expected failure: printed as one line on stderr, exit status 1, no traceback."""
