"""Schema migrations for Flask-SQLAlchemy apps: Invoke locally, Fabric in production.

Module map: settings (Flask config, URLs) -> credentials (password prompt) -> database
(connections, their errors) -> alembic_ops (Alembic's API) -> safety (refusals) -> commands
(one function per user command) -> local_tasks (Invoke) and remote_tasks (Fabric).
"""
