"""A small blog: the Flask-SQLAlchemy application the suite migrates by default."""

import os

from flask import Flask


def create_app(config_name=None):
    """Build the app for a settings name (default: $FLASK_CONFIG, else development)."""
    from .config import configs
    from .models import db

    config_name = config_name or os.environ.get("FLASK_CONFIG") or "development"
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_object(configs[config_name])
    # Secrets (production URLs) live in the instance folder, outside version control.
    app.config.from_pyfile(f"{config_name}.cfg", silent=True)
    db.init_app(app)
    return app
