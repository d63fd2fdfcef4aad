"""Settings and credentials: Flask config files in, URLs and passwords out."""

import io

import pytest
from sqlalchemy import make_url

from deploy import credentials
from deploy.errors import DeployError
from deploy.settings import load_settings, settings_name

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


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("exampleapp.nothing:configs", "cannot import the config objects"),
        ("exampleapp.config:Config", "must be a dict"),
    ],
)
def test_a_wrong_flask_config_is_one_clear_error(tmp_path, path, expected):
    with pytest.raises(DeployError, match=expected):
        load_settings(path, APP, "development", tmp_path)
