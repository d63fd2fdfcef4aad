"""`python -m deploy.server db.*`: what `fab ENV db.*` starts in the server's checkout (ssh.py builds
its command line). The same tasks as the project's `invoke db.*`, found and configured as `invoke`
finds them (tasks.py, invoke.yaml, INVOKE_DB_*), plus the options only the laptop passes
(options.SERVER_ONLY), which the user's `invoke --help` does not show."""

from __future__ import annotations

from invoke import Collection, Exit, Program

from . import local_tasks


class ServerProgram(Program):
    def load_collection(self) -> None:
        # Invoke's own search: the project's tasks.py, its directory's invoke.yaml.
        super().load_collection()
        db = self.collection.collections.get("db")
        if db is None:
            raise Exit("error: this checkout's tasks.py has no db collection (deploy.local_tasks.db_tasks)")
        alembic_ini = db.configuration()["db"]["alembic_ini"]
        self.collection = Collection(local_tasks.collection(alembic_ini, server=True))


def main() -> None:
    ServerProgram(name="deploy.server", binary="python -m deploy.server").run()


if __name__ == "__main__":
    main()
