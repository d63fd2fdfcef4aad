"""A generated Flask-SQLAlchemy app of N models (foreign keys, indexes) and a history of R revisions.

The app is a Flask-Migrate project first (`flask db init`), its history written into
migrations/versions/, then taken over with `python -m deploy init` exactly as the adoption page's
"Taking over a Flask-Migrate project" says: the same models and the very same revision files serve
this suite, plain Alembic and Flask-Migrate (see project.py for the two baselines' set-up).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = "bigapp"

INIT = '''"""A generated app: {models} models, {revisions} revisions (benchmarks/generate.py)."""
import os

from flask import Flask


def create_app(config_name=None):
    from .config import configs
    from .models import db

    config_name = config_name or os.environ.get("FLASK_CONFIG") or "development"
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_object(configs[config_name])
    app.config.from_pyfile(f"{{config_name}}.cfg", silent=True)
    db.init_app(app)
    return app
'''

CONFIG = """class Config:
    SQLALCHEMY_TRACK_MODIFICATIONS = False


class DevelopmentConfig(Config):
    SQLALCHEMY_DATABASE_URI = "sqlite:///development.db"


class ProductionConfig(Config):
    pass


configs = {"development": DevelopmentConfig, "testing": DevelopmentConfig, "production": ProductionConfig}
"""

MODELS_HEAD = '''"""{models} generated models: a name (indexed), a note, a parent (foreign key, indexed)."""
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Text

NAMING_CONVENTION = {{
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
'''

# The column db.revision's benchmark changes (String(100) -> String(120)): one altered column.
NAME_COLUMN = "    name = Column(String(100), nullable=False, index=True)\n"
CHANGED_NAME_COLUMN = "    name = Column(String(120), nullable=False, index=True)\n"

REVISION = '''"""create {tables}

Revision ID: {revision}
Revises: {down}
"""
from alembic import op
import sqlalchemy as sa

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{upgrade}


def downgrade():
{downgrade}
'''


def table(i: int) -> str:
    return f"m{i:03d}"


def parent(i: int) -> int | None:
    """A tree: every model but the first refers to an earlier one."""
    return None if i == 0 else (i - 1) // 2


def model_source(i: int) -> str:
    name = table(i)
    lines = [f"\n\nclass {name.upper()}(db.Model):\n", f'    __tablename__ = "{name}"\n\n']
    lines.append("    id = Column(Integer, primary_key=True)\n")
    lines.append(NAME_COLUMN)
    lines.append("    note = Column(Text)\n")
    if parent(i) is not None:
        lines.append(f'    parent_id = Column(Integer, ForeignKey("{table(parent(i))}.id"), index=True)\n')
    return "".join(lines)


def create_ops(i: int) -> tuple[list[str], list[str]]:
    """The upgrade and downgrade lines for model i, as autogenerate would write them."""
    name = table(i)
    columns = [
        'sa.Column("id", sa.Integer(), nullable=False)',
        'sa.Column("name", sa.String(length=100), nullable=False)',
        'sa.Column("note", sa.Text(), nullable=True)',
    ]
    constraints = []
    if parent(i) is not None:
        up = table(parent(i))
        columns.append('sa.Column("parent_id", sa.Integer(), nullable=True)')
        constraints.append(
            f'sa.ForeignKeyConstraint(["parent_id"], ["{up}.id"], name=op.f("fk_{name}_parent_id_{up}"))'
        )
    constraints.append(f'sa.PrimaryKeyConstraint("id", name=op.f("pk_{name}"))')
    body = ",\n        ".join(columns + constraints)
    upgrade = [f'    op.create_table(\n        "{name}",\n        {body},\n    )']
    downgrade = []
    for column in ("name", "parent_id") if parent(i) is not None else ("name",):
        index = f"ix_{name}_{column}"
        upgrade.append(f'    op.create_index(op.f("{index}"), "{name}", ["{column}"], unique=False)')
        downgrade.append(f'    op.drop_index(op.f("{index}"), table_name="{name}")')
    downgrade.append(f'    op.drop_table("{name}")')
    return upgrade, downgrade


def revision_id(models: int, revisions: int, k: int) -> str:
    return hashlib.sha1(f"bench-{models}-{revisions}-{k}".encode()).hexdigest()[:12]


def write_app(project: Path, models: int, revisions: int) -> None:
    package = project / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(INIT.format(models=models, revisions=revisions))
    (package / "config.py").write_text(CONFIG)
    source = MODELS_HEAD.format(models=models) + "".join(model_source(i) for i in range(models))
    (package / "models.py").write_text(source)


def write_history(versions: Path, models: int, revisions: int) -> list[str]:
    """R revisions creating the N models' tables in order (each revision a slice); returns their ids."""
    if not 1 <= revisions <= models:
        raise ValueError(f"need 1 <= revisions <= models, got {models} models, {revisions} revisions")
    versions.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    down = None
    for k in range(revisions):
        members = range(k * models // revisions, (k + 1) * models // revisions)
        upgrade: list[str] = []
        downgrade: list[str] = []
        for i in members:
            up, dn = create_ops(i)
            upgrade += up
            downgrade = dn + downgrade
        rev = revision_id(models, revisions, k)
        tables = ", ".join(table(i) for i in members)
        (versions / f"{rev}_create_{table(members[0])}.py").write_text(
            REVISION.format(
                tables=tables, revision=rev, down=down, upgrade="\n".join(upgrade), downgrade="\n".join(downgrade)
            )
        )
        ids.append(rev)
        down = rev
    return ids


def change_one_column(project: Path) -> None:
    """The model change db.revision's benchmark autogenerates: m000.name String(100) -> String(120)."""
    path = project / PACKAGE / "models.py"
    text = path.read_text()
    assert NAME_COLUMN in text
    path.write_text(text.replace(NAME_COLUMN, CHANGED_NAME_COLUMN, 1))
