"""One module per database, behind one registry keyed by SQLAlchemy's dialect name.

base        what a database must provide (`Dialect`), the registry, and the lookup (`dialect_for`)
mariadb     MariaDB and MySQL ("mysql", "mariadb")
postgresql  PostgreSQL ("postgresql")
sqlite      SQLite ("sqlite")
guarded     what every dialect's guarded session shares (the retry loop, open transactions told)
A new database is one new module here, named in base.MODULES (imported on the first lookup, so that
naming a database loads no driver); see docs/dialects.md.
"""

from __future__ import annotations

from .base import (
    Alteration,
    Dialect,
    database_error,
    database_file,
    describe,
    dialect_for,
    explain,
    find,
    name_of,
    registry,
)

__all__ = [
    "Alteration",
    "Dialect",
    "database_error",
    "database_file",
    "describe",
    "dialect_for",
    "explain",
    "find",
    "name_of",
    "registry",
]
