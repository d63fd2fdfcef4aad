"""Alembic environment: the database and models come from the Flask settings (the deploy library)."""

from deploy.alembic_env import run_migrations

run_migrations()
