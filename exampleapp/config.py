"""Config classes by settings name; instance/<name>.cfg overrides them."""


class Config:
    SQLALCHEMY_TRACK_MODIFICATIONS = False


class DevelopmentConfig(Config):
    # Relative SQLite paths live in the instance folder (Flask-SQLAlchemy's rule).
    SQLALCHEMY_DATABASE_URI = "sqlite:///development.db"


class TestingConfig(Config):
    SQLALCHEMY_DATABASE_URI = "sqlite:///testing.db"


class ProductionConfig(Config):
    # No URL here: instance/production.cfg on the server provides
    # SQLALCHEMY_DATABASE_URI (the app's user) and SQLALCHEMY_ALEMBIC_URI (the migration user).
    pass


configs = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}
