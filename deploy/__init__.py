"""Schema migrations for Flask-SQLAlchemy apps: Invoke locally, Fabric in production.

The package's modules in layers, lowest first: a module imports only from its own layer or the layers
below it, never up (tests/test_layers.py holds every module to this, and to no import circles).
"""

LAYERS = (
    # The ground: the one error type and its masking, declared switches, plain process plumbing; the script
    # another release's models run in (it imports nothing of the suite).
    ("errors", "switches", "forking", "release_probe"),
    # What differs by database, one module each, behind a registry keyed by SQLAlchemy's dialect name.
    ("dialects", "dialects.base", "dialects.guarded", "dialects.mariadb", "dialects.postgresql", "dialects.sqlite"),
    # Settings and secrets: the Flask config, the Invoke config, the environments of fabric.yaml, the
    # password prompt, and the status a server reports; the console: confirmations, Ctrl-C, progress.
    ("settings", "task_config", "environments", "credentials", "status", "console"),
    # Connections and their errors.
    ("database",),
    # The guards: refusals, the lock, short lock waits, the run log; backups and restore, a rehearsal's copy.
    ("guards", "guards.refusals", "guards.lock", "guards.timeouts", "guards.runlog", "backups", "rehearsal"),
    # Alembic's API, the env.py that every migration runs through, the renames it writes for autogenerate,
    # and their expand and contract operations.
    ("alembic_ops", "alembic_env", "renames", "expand"),
    # What reads revisions, their data and the live schema: the lint, the half-applied diagnosis, the data
    # prechecks, the revision checksums, the operations' costs, the schema snapshot; the releases running
    # against a database, and the code of one against the schema pending revisions build.
    (
        "review",
        "review.lint",
        "review.diagnosis",
        "review.prechecks",
        "review.checksums",
        "review.costs",
        "schema",
        "backfill",
        "releases",
        "compatibility",
    ),
    # One function per command, returning results.
    ("commands", "checks", "branches"),
    # The laptop's side of fab: one SSH connection per host, fleets.
    ("ssh", "fleet"),
    # The entry points: parse options, call a command, print its result.
    ("options", "local_tasks", "remote_tasks", "server", "scaffold", "__main__"),
    # What `init` writes into a project: the project's own files, which call the entry points.
    ("templates.tasks", "templates.fabfile", "templates.migrations.env"),
)
