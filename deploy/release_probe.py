"""The other release's half of the compatibility check (deploy/compatibility.py): run as a script in a
process of its own, in the folder of that release's alembic.ini (a temporary git worktree), it loads
that release's models as its flask_app names them and works every mapper against a scratch database
built at the new schema, as that code would: select each mapped column, insert a row setting only what
the model sets, update it, delete it; each in a transaction rolled back.

It imports nothing of the suite: the release's own code, Flask and SQLAlchemy only, so that the suite
and the application of two releases never share a process. It reads {"url", "settings"} as JSON on
stdin (the URL never in argv or the environment) and prints one JSON line: the tables it worked, and
each failure as {table, step, columns, sets, error}."""

from __future__ import annotations

import configparser
import datetime
import decimal
import json
import os
import sys
import uuid
from pathlib import Path

SETTINGS_PLACEHOLDER = "{settings}"


def flask_target(root: Path, settings: str):
    """What the release's alembic.ini names in flask_app: a Flask-SQLAlchemy db, a MetaData, or an app."""
    from flask.cli import locate_app, prepare_import

    ini = configparser.ConfigParser(interpolation=None)
    ini.read(root / "alembic.ini")
    for path in reversed((ini.get("alembic", "prepend_sys_path", fallback="") or "").split()):
        sys.path.insert(0, str((root / path).resolve()))
    spec = ini.get("alembic", "flask_app").replace(SETTINGS_PLACEHOLDER, settings)
    path, _, attribute = spec.partition(":")
    module_name = prepare_import(str(root / path))
    __import__(module_name)
    found = getattr(sys.modules[module_name], attribute, None) if attribute.isidentifier() else None
    if found is None or not hasattr(found, "metadata"):
        found = locate_app(module_name, attribute or None)
    return found


def models_of(target):
    """The MetaData and the mappers of what flask_app names."""
    extensions = getattr(target, "extensions", None)
    if isinstance(extensions, dict) and "sqlalchemy" in extensions:
        target = extensions["sqlalchemy"]
    model = getattr(target, "Model", None)
    registry = getattr(model, "registry", None)
    mappers = sorted(registry.mappers, key=lambda mapper: mapper.class_.__name__) if registry is not None else []
    metadata = target if not hasattr(target, "metadata") else target.metadata
    return metadata, mappers


class Values:
    """A value of each column's type, different each time (unique constraints)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, column):
        import sqlalchemy as sa

        self.count += 1
        n = self.count
        kind = column.type
        if isinstance(kind, sa.Enum) and kind.enums:
            return kind.enums[0] if kind.enum_class is None else next(iter(kind.enum_class))
        if isinstance(kind, sa.JSON):
            return {}
        try:
            python = kind.python_type
        except NotImplementedError:
            python = str
        if python is bool:
            return n % 2 == 0
        if python is int:
            return 1000 + n
        if python is float:
            return float(n)
        if python is decimal.Decimal:
            return decimal.Decimal(n)
        if python is datetime.datetime:
            return datetime.datetime(2000, 1, 1) + datetime.timedelta(seconds=n)
        if python is datetime.date:
            return datetime.date(2000, 1, 1) + datetime.timedelta(days=n)
        if python is datetime.time:
            return datetime.time(0, 0, n % 60)
        if python is datetime.timedelta:
            return datetime.timedelta(seconds=n)
        if python is bytes:
            return str(n).encode()
        if python is uuid.UUID:
            return uuid.uuid4()
        if python in (dict, list):
            return python()
        length = getattr(kind, "length", None) or 20
        return f"r{n}"[:length]


def required(table) -> list:
    """The columns a row of `table` cannot be written without: NOT NULL, no default of any kind."""
    return [
        column
        for column in table.columns
        if not column.nullable
        and column.default is None
        and column.server_default is None
        and column.computed is None
        and column.identity is None
        and column is not table.autoincrement_column
    ]


def fill(connection, table, values: Values, depth: int = 0) -> dict:
    """Values for `table`'s required columns; a required foreign key gets a parent row, inserted first."""
    row = {}
    for column in required(table):
        keys = list(column.foreign_keys)
        parent = keys[0].column.table if keys else None
        if parent is not None and parent is not table and depth < 5:
            parent_row = fill(connection, parent, values, depth + 1)
            inserted = connection.execute(parent.insert().values(parent_row))
            key = dict(zip([c.name for c in parent.primary_key.columns], inserted.inserted_primary_key, strict=False))
            row[column.name] = key.get(keys[0].column.name, parent_row.get(keys[0].column.name))
        else:
            row[column.name] = values(column)
    return row


def first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


class Prober:
    def __init__(self, engine) -> None:
        self.engine = engine
        self.values = Values()
        self.failures: list[dict] = []

    def failed(self, table: str, step: str, exc: BaseException, columns=(), sets=()) -> None:
        self.failures.append(
            {"table": table, "step": step, "columns": list(columns), "sets": sorted(sets), "error": first_line(exc)}
        )

    def missing_columns(self, columns) -> list[str]:
        """Of mapped `columns`, those a SELECT of their own table fails on."""
        import sqlalchemy as sa

        failing = []
        for column in columns:
            with self.engine.connect() as connection:
                try:
                    connection.execute(sa.select(column).select_from(column.table).limit(1)).all()
                except sa.exc.DBAPIError:
                    failing.append(column.name)
        return failing

    def parents(self, connection, table, name: str) -> dict | None:
        """A row's required values, its parent rows inserted first; None when a parent cannot be."""
        import sqlalchemy as sa

        try:
            return fill(connection, table, self.values)
        except sa.exc.DBAPIError as exc:
            self.failed(name, "parent", exc)
            return None

    def mapper(self, mapper) -> None:
        """Select, insert, update and delete a row of a mapped class, as the ORM does for that code."""
        import sqlalchemy as sa
        from sqlalchemy.orm import Session

        name = mapper.local_table.name
        columns = [column for column in mapper.columns if isinstance(column, sa.Column)]
        with Session(self.engine, autoflush=False) as session:
            try:
                session.execute(sa.select(mapper.class_).limit(1)).all()
            except sa.exc.DBAPIError as exc:
                self.failed(name, "select", exc, self.missing_columns(columns))
            session.rollback()
            try:
                self.write(session, mapper, name)
            finally:
                session.rollback()

    def write(self, session, mapper, name: str) -> None:
        import sqlalchemy as sa

        try:
            instance = mapper.class_()
        except TypeError:  # a constructor of its own, with arguments: an instance without it
            instance = mapper.class_manager.new_instance()
        sets = set()
        for table in mapper.tables:
            row = self.parents(session.connection(), table, name)
            if row is None:
                return
            for column_name, value in row.items():
                try:
                    prop = mapper.get_property_by_column(table.columns[column_name])
                except sa.orm.exc.UnmappedColumnError:
                    continue
                setattr(instance, prop.key, value)
            sets |= {column.name for column in table.columns if column.name in row or column.default is not None}
        try:
            session.add(instance)
            session.flush()
        except sa.exc.DBAPIError as exc:
            self.failed(name, "insert", exc, sets=sets)
            return
        changed = []
        for prop in mapper.column_attrs:
            column = prop.columns[0]
            if (
                isinstance(column, sa.Column)
                and not column.primary_key
                and not column.foreign_keys
                and column.computed is None
                and column is not mapper.polymorphic_on
                and column is not mapper.version_id_col
            ):
                setattr(instance, prop.key, self.values(column))
                changed.append(column.name)
        try:
            session.flush()
        except sa.exc.DBAPIError as exc:
            self.failed(name, "update", exc, changed)
            return
        try:
            # A DELETE of the row per table, the subclass's first, as the ORM's flush runs them; not
            # session.delete(), which loads the related rows of other tables first.
            for table in reversed(mapper.tables):
                keys = table.primary_key.columns
                where = [key == getattr(instance, mapper.get_property_by_column(key).key) for key in keys]
                session.execute(table.delete().where(*where))
        except sa.exc.DBAPIError as exc:
            self.failed(name, "delete", exc)

    def table(self, table) -> None:
        """A table no class maps (an association table): its rows are written whole, as a relationship does."""
        import sqlalchemy as sa

        with self.engine.connect() as connection:
            try:
                connection.execute(sa.select(*table.columns).limit(1)).all()
            except sa.exc.DBAPIError as exc:
                self.failed(table.name, "select", exc, self.missing_columns(list(table.columns)))
            connection.rollback()
            try:
                self.write_row(connection, table)
            finally:
                connection.rollback()

    def write_row(self, connection, table) -> None:
        import sqlalchemy as sa

        row = self.parents(connection, table, table.name)
        if row is None:
            return
        try:
            connection.execute(table.insert().values(row))
        except sa.exc.DBAPIError as exc:
            self.failed(table.name, "insert", exc, sets=row)
            return
        try:
            connection.execute(table.delete().where(*[table.c[key] == value for key, value in row.items()]))
        except sa.exc.DBAPIError as exc:
            self.failed(table.name, "delete", exc)


def main() -> None:
    asked = json.loads(sys.stdin.read())
    root = Path.cwd()
    os.environ.setdefault("FLASK_CONFIG", asked["settings"])
    try:
        metadata, mappers = models_of(flask_target(root, asked["settings"]))
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        print(json.dumps({"loaded": False, "error": f"{type(exc).__name__}: {lines[0] if lines else ''}"}))
        return
    import sqlalchemy as sa

    engine = sa.create_engine(asked["url"], poolclass=sa.pool.NullPool)
    prober = Prober(engine)
    mapped = set()
    for mapper in mappers:
        if isinstance(mapper.local_table, sa.Table):
            mapped |= set(mapper.tables)
            prober.mapper(mapper)
    for table in metadata.sorted_tables:
        if table not in mapped:
            prober.table(table)
    tables = {
        table.name: {"maps": [column.name for column in table.columns]}
        for table in metadata.sorted_tables
        if table.schema is None
    }
    engine.dispose()
    print(json.dumps({"loaded": True, "tables": tables, "failures": prober.failures}))


if __name__ == "__main__":
    main()
