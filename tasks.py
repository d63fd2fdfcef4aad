"""Local tasks: `invoke db.reset`, `invoke db.revision -m "..."`, `invoke --list` for the rest."""

from invoke import Collection

from deploy.local_tasks import db

namespace = Collection(db)
