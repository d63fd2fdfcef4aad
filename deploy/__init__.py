"""Schema migrations for Flask-SQLAlchemy apps: Invoke locally, Fabric in production.

Module map, each using only those before it: errors, settings (Flask config, URLs),
credentials (password prompt), database (connections, their errors), safety (refusals),
alembic_ops (Alembic's API), commands (one function per user command), then the entry points
local_tasks (Invoke) and remote_tasks (Fabric).
"""
