"""`python -m benchmarks.against REF`: this checkout's library against the one at git REF, on one app, on
the same machine in the same minutes: each command run with both, interleaved. Where comparing two runs
flags a row (`report --compare`), this tells a change of ours apart from the day's noise, which moves
the baselines of two runs differently.

The app is generated (`--size MODELS,REVISIONS`), so its library comes from PYTHONPATH and the two runs
differ in `deploy/` alone; both use the tasks.py and env.py this checkout's `init` writes."""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from . import project as projects
from . import report
from .run import FULL, LOCAL_COMMANDS, REPO, Context, _project, bench_project


def library_at(ref: str, scratch: Path) -> Path:
    """REF's deploy/ package, byte-compiled, in a folder of its own: a PYTHONPATH entry."""
    archive = subprocess.run(["git", "archive", ref, "deploy"], cwd=REPO, capture_output=True, check=True).stdout
    folder = scratch / f"lib-{ref}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    projects.compile_tree(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.against", description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="the git commit whose library to measure against")
    parser.add_argument("--backend", choices=("sqlite", "mariadb"), default="mariadb")
    parser.add_argument("--size", default="300,200", help="the generated app: MODELS,REVISIONS (default 300,200)")
    parser.add_argument("--command", action="append", choices=LOCAL_COMMANDS, help="only these commands")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    models, revisions = (int(n) for n in args.size.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="against-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    ctx = Context(FULL, scratch)
    try:
        projects.prepare_library(scratch)
        other = library_at(args.ref, scratch)
        app = _project(ctx, args.backend, (models, revisions))
        rows = bench_project(ctx, app, tuple(args.command or LOCAL_COMMANDS), reps=args.reps, against=other)
    finally:
        for server in reversed(ctx.started):
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(report.table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
