"""Settings and credentials: Flask config files in, URLs and passwords out."""

import io
import re
import sys

import pytest
from sqlalchemy import make_url

from deploy import credentials
from deploy.errors import DeployError
from deploy.settings import load_metadata, load_settings, settings_name

CONFIGS = "exampleapp.config:configs"
APP = "exampleapp.models:db"


def write(root, name, text_):
    path = root / "instance" / f"{name}.cfg"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text_)
    return path


def test_settings_name_follows_flask_config(monkeypatch):
    monkeypatch.delenv("FLASK_CONFIG", raising=False)
    assert settings_name() == "development"
    monkeypatch.setenv("FLASK_CONFIG", "production")
    assert settings_name() == "production"


def test_relative_sqlite_lives_in_the_instance_folder(tmp_path):
    settings = load_settings(CONFIGS, APP, "development", tmp_path)
    assert make_url(settings.database_url).database == str(tmp_path / "instance" / "development.db")
    assert settings.migration_url == settings.database_url


def test_instance_file_overrides_and_alembic_uri_wins(tmp_path):
    write(
        tmp_path,
        "production",
        "SQLALCHEMY_DATABASE_URI = 'mysql+pymysql://app:pw@db/blog'\n"
        "SQLALCHEMY_ALEMBIC_URI = 'mysql+pymysql://root:@db/blog'\n",
    )
    settings = load_settings(CONFIGS, APP, "production", tmp_path)
    assert settings.database_url.username == "app"
    assert settings.migration_url.username == "root"
    assert credentials.needs_password(settings.migration_url)
    assert not credentials.needs_password(settings.database_url)


def test_missing_production_file_is_named(tmp_path):
    settings = load_settings(CONFIGS, APP, "production", tmp_path)
    with pytest.raises(DeployError, match=r"production\.cfg is missing"):
        _ = settings.migration_url


@pytest.mark.parametrize("body", ["SQLALCHEMY_DATABASE_URI = 'mysql://a:secret@h/db\n", "x = undefined_secret\n"])
def test_malformed_file_is_named_without_its_content(tmp_path, body):
    write(tmp_path, "production", body)
    with pytest.raises(DeployError) as caught:
        load_settings(CONFIGS, APP, "production", tmp_path)
    assert "production.cfg" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_unparseable_url_does_not_echo_it(tmp_path):
    write(tmp_path, "production", "SQLALCHEMY_DATABASE_URI = 'not a url secret'\n")
    with pytest.raises(DeployError) as caught:
        _ = load_settings(CONFIGS, APP, "production", tmp_path).database_url
    assert "secret" not in str(caught.value)


def test_unknown_settings_name_lists_the_choices(tmp_path):
    with pytest.raises(DeployError, match="unknown settings 'prod': choose one of development, production, testing"):
        load_settings(CONFIGS, APP, "prod", tmp_path)


@pytest.mark.parametrize("char", list("@:/%#?' "))
def test_password_with_special_character_survives_the_url_api(char, tmp_path):
    password = f"a{char}b{char}"
    url = credentials.with_password(
        make_url("mysql+pymysql://root:@db.example/blog"), io.StringIO(password + "\nnext\n")
    )
    assert url.password == password
    # Rendered and parsed again (what a str() of the URL would go through), it is still the same.
    assert make_url(url.render_as_string(hide_password=False)).password == password
    assert password not in str(url) and password not in repr(url)


def test_password_is_the_first_line_of_stdin_when_not_a_terminal():
    assert credentials.read_password("prompt: ", io.StringIO("first line\nsecond\n")) == "first line"


def test_empty_stdin_is_a_clear_error():
    with pytest.raises(DeployError, match="no password on standard input"):
        credentials.read_password("prompt: ", io.StringIO(""))


def test_no_prompt_without_the_empty_password_convention():
    stdin = io.StringIO("unused\n")
    for raw in ("sqlite:///x.db", "mysql+pymysql://app:pw@h/db", "mysql+pymysql://app@h/db"):
        assert credentials.with_password(make_url(raw), stdin) == make_url(raw)
    assert stdin.read() == "unused\n"


def test_describe_never_shows_the_password():
    url = make_url("mysql+pymysql://root:s3cret@db:3307/blog")
    assert credentials.describe(url) == "root@db:3307/blog"


@pytest.mark.parametrize(
    "raw", ["mysql+pymysql://app:Pa@sswordSECRET@db/blog", "mysql+pymysql://app:Pa@ss:w0rdSECRET@db/blog"]
)
def test_unencoded_password_in_a_file_is_refused_without_showing_it(tmp_path, raw):
    write(tmp_path, "production", f"SQLALCHEMY_DATABASE_URI = {raw!r}\n")
    with pytest.raises(DeployError) as caught:
        _ = load_settings(CONFIGS, APP, "production", tmp_path).database_url
    assert "percent-encode" in str(caught.value)
    assert "SECRET" not in str(caught.value)


def test_the_two_urls_must_name_the_same_database(tmp_path):
    write(
        tmp_path,
        "production",
        "SQLALCHEMY_DATABASE_URI = 'mysql+pymysql://app:pw@db/blog'\n"
        "SQLALCHEMY_ALEMBIC_URI = 'mysql+pymysql://root:@db/other'\n",
    )
    with pytest.raises(DeployError, match="name different databases"):
        _ = load_settings(CONFIGS, APP, "production", tmp_path).migration_url


def test_a_wrong_flask_config_is_one_clear_error(tmp_path):
    with pytest.raises(DeployError, match="cannot import the config objects"):
        load_settings("exampleapp.nothing:configs", APP, "development", tmp_path)


def test_a_single_config_class_serves_every_settings_name(tmp_path):
    write(tmp_path, "production", "SQLALCHEMY_DATABASE_URI = 'sqlite:////srv/blog.db'\n")
    for name in ("development", "production", "anything"):
        settings = load_settings("exampleapp.config:DevelopmentConfig", APP, name, tmp_path)
        expected = "/srv/blog.db" if name == "production" else str(tmp_path / "instance" / "development.db")
        assert settings.database_url.database == expected


# An app package the way Flask's docs and Flask-Migrate projects write one: no settings names anywhere.
FACTORY_APP = """
import os
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()


class Config:
    SQLALCHEMY_DATABASE_URI = os.environ.get("BLOG_DATABASE_URL", "sqlite:///from-config-class.db")


class Note(db.Model):
    id = db.Column(db.Integer, primary_key=True)


def create_app(config_class=Config, greeting=None):
    app = Flask(__name__)
    app.config.from_object(config_class)
    app.config["GREETING"] = greeting
    db.init_app(app)
    return app
"""


@pytest.fixture
def factory_app(tmp_path, monkeypatch):
    package = tmp_path / "notesapp"
    package.mkdir()
    (package / "__init__.py").write_text(FACTORY_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [name for name in sys.modules if name.split(".")[0] == "notesapp"]:
        del sys.modules[name]


@pytest.mark.parametrize(
    ("spec", "greeting"),
    [
        ("notesapp", None),  # flask's own search: create_app(), called with no arguments
        ("notesapp:create_app", None),
        ("notesapp:create_app(greeting='hi')", "hi"),  # literal arguments, as `flask --app` takes them
        ("notesapp:create_app(greeting='{settings}')", "staging"),  # the settings name, where asked for
    ],
)
def test_the_app_is_found_the_way_flask_finds_it(factory_app, spec, greeting):
    settings = load_settings(None, spec, "staging", factory_app)
    assert settings.database_url.database.endswith("from-config-class.db")
    assert settings.config["GREETING"] == greeting
    assert set(load_metadata(spec, "staging", factory_app).tables) == {"note"}


def test_a_db_finds_the_app_beside_it(factory_app):
    settings = load_settings(None, "notesapp:db", "development", factory_app)
    assert settings.database_url.database.endswith("from-config-class.db")
    assert set(load_metadata("notesapp:db", "development", factory_app).tables) == {"note"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("notesapp:nothing", "Failed to find attribute 'nothing'"),
        ("notesapp:create_app(os.environ)", "Failed to parse arguments as literal values"),
        ("nosuchmodule:app", "cannot import the application 'nosuchmodule'"),
    ],
)
def test_an_app_that_cannot_be_found_is_one_clear_error(factory_app, spec, expected):
    with pytest.raises(DeployError, match=re.escape(expected)):
        load_settings(None, spec, "development", factory_app)


def test_an_app_that_fails_names_the_command_that_shows_why(factory_app):
    """The command is pasted as is: the settings name in place of {settings}, one shell word."""
    spec = "notesapp:create_app(config_class='{settings}')"  # from_object('staging'): no such module
    with pytest.raises(DeployError) as failure:
        load_settings(None, spec, "staging", factory_app)
    command = """FLASK_CONFIG=staging flask --app "notesapp:create_app(config_class='staging')" shell"""
    expected = f"run `{command}` to see why"
    assert str(failure.value).endswith(expected), failure.value
