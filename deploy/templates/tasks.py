"""Local tasks: `invoke db.reset`, `invoke db.revision -m "..."`, `invoke --list` for the rest."""

from invoke import Collection

from deploy.local_tasks import db_tasks

namespace = Collection(db_tasks(__file__))
