"""Production safety: what stops or guards a command that changes a database.

refusals   checks that stop a command before it changes anything
Each guard that differs by database kind keeps one implementation per kind, in a table keyed by
SQLAlchemy's backend name ("mysql" for MariaDB/MySQL, "sqlite", ...), chosen by `for_dialect`.
"""

from sqlalchemy.engine import URL

from ..errors import DeployError
from .refusals import (
    check_expected_head,
    check_on_this_machine,
    check_resettable,
    check_single_head,
    check_stamped,
    confirm,
    confirm_database,
)

__all__ = [
    "check_expected_head",
    "check_on_this_machine",
    "check_resettable",
    "check_single_head",
    "check_stamped",
    "confirm",
    "confirm_database",
    "for_dialect",
]


def for_dialect(implementations: dict, url: URL, what: str):
    """The one place a guard's implementation is chosen by the database's kind."""
    backend = url.get_backend_name()
    if backend not in implementations:
        raise DeployError(f"{what} is not supported on {backend} databases (supported: {', '.join(implementations)})")
    return implementations[backend]
