"""`python -m benchmarks [--quick]`: the benchmark (see docs/benchmarks.md).

GROUPS lists the benchmark groups; each takes the run's Context and returns its rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import project as projects
from . import report
from ._tests import REPO, MariaDB, SSHServer
from .measure import TOOLS, Row, Target, Variant, measure, progress
from .profiling import profile

RESULTS = Path(__file__).resolve().parent / "results"
LOCAL_COMMANDS = ("db.current", "db.upgrade (at head)", "db.upgrade (empty)", "db.reset", "db.revision")


@dataclass
class Plan:
    reps: int  # timed cold runs per tool and command
    heavy_reps: int  # the same for the 300-model apps (hundreds of CREATE TABLEs a run; ours' upgrade ~25 s)
    sqlite_sizes: list[tuple[int, int]]  # generated (models, revisions), all commands
    mariadb_sizes: list[tuple[int, int]]
    flat_low: tuple[int, int]  # db.reset at few revisions, same models as the largest size
    fleet_sizes: tuple[int, ...]  # tenants per fleet row (heavy_reps above 64)
    estimate_sizes: tuple[int, ...]  # rows of the tables the estimates group times each operation on
    stall_rows: int  # rows of the table the stall group changes under the application's writes


FULL = Plan(
    5,
    3,
    [(30, 20), (100, 70), (300, 200)],
    [(300, 200)],
    (300, 20),
    (16, 64, 256),
    (10_000, 100_000, 1_000_000),
    1_000_000,
)
QUICK = Plan(2, 2, [(30, 20)], [(30, 20)], (30, 5), (16,), (10_000, 100_000), 20_000)


@dataclass
class Context:
    plan: Plan
    scratch: Path
    out: Path = RESULTS  # where the results go
    started: list = field(default_factory=list)  # servers we started, stopped at the end
    profiles: list[dict] = field(default_factory=list)
    projects: list = field(default_factory=list)
    profiled: set = field(default_factory=set)
    _mariadb: MariaDB | None = None

    @property
    def reps(self) -> int:
        return self.plan.reps

    def mariadb(self) -> MariaDB:
        """One throwaway MariaDB for the run (tests/servers.py), on a free loopback port."""
        if self._mariadb is None:
            server = MariaDB(self.scratch / "mariadb")
            self.started.append(server)
            progress("starting a throwaway MariaDB (tests/servers.py)")
            server.start()
            self._mariadb = server
        return self._mariadb

    def sshd(self, base: Path) -> SSHServer:
        """A throwaway sshd (tests/servers.py) in `base`, stopped at the end."""
        server = SSHServer(base / "sshd")
        self.started.append(server)
        server.start()
        return server

    def profile_misses(self, row: Row, variants: dict[str, Variant]) -> None:
        """For a missed target: one profiled run of ours and of the baseline it was measured against."""
        missed = [t for t in row.targets if t.met is False]
        if not missed:
            return
        # Once per command and app: the cause is in the same code on either backend, and a profiled
        # run of a slow command costs as much as a whole measurement.
        key = (row.command, row.app, tuple(t.name for t in missed))
        if key in self.profiled:
            self.profiles.append(
                {
                    "command": row.command,
                    "backend": row.backend,
                    "app": row.app,
                    "missed": [t.text() for t in missed],
                    "profile": "as on the other backend",
                }
            )
            return
        self.profiled.add(key)
        progress(f"profiling {row.command} ({row.backend}, {row.app}): missed {', '.join(t.name for t in missed)}")
        entry = {"command": row.command, "backend": row.backend, "app": row.app, "missed": [t.text() for t in missed]}
        for tool in ("ours", *{("flask-migrate" if "flask-migrate" in t.name else "alembic") for t in missed}):
            if tool in variants:
                entry[tool] = profile(variants[tool])
        self.profiles.append(entry)


# -- local benchmarks ------------------------------------------------------------------------------


def _local_targets(row: Row, largest: bool) -> list[Target]:
    targets = [Target("<=1.1x alembic", row.ratio("alembic"), 1.1)]
    if largest and row.command in ("db.current", "db.upgrade (at head)"):
        targets.append(Target("<=0.6x flask-migrate", row.ratio("flask-migrate"), 0.6))
    return targets


def _project(ctx: Context, backend: str, size: tuple[int, int] | None) -> projects.Project:
    name = f"{backend}-{'example' if size is None else f'{size[0]}m{size[1]}r'}"
    path = ctx.scratch / name
    url = projects.mariadb_url(ctx.mariadb()) if backend == "mariadb" else ""
    progress(f"setting up {name}")
    if size is None:
        made = projects.example_project(path, backend, url)
    else:
        made = projects.generated_project(path, *size, backend, url)
    ctx.projects.append(made)
    return made


def bench_project(
    ctx: Context,
    project: projects.Project,
    commands=LOCAL_COMMANDS,
    tools=TOOLS,
    reps=None,
    largest=False,
    against: Path | None = None,
) -> list[Row]:
    """Each command by each tool, interleaved; with `against` (another library's folder), ours against
    ours run with that library instead, in the baseline's column."""
    env = projects.env()
    projects.check_run(project.argv("alembic", "db.upgrade (empty)"), project.path)  # to head
    rows = []
    for command in commands:
        if against is None:
            variants = {tool: Variant(project.argv(tool, command), project.path, env) for tool in tools}
        else:
            argv = project.argv("ours", command)
            other = projects.env(PYTHONPATH=str(against))
            variants = {"ours": Variant(argv, project.path, env), "alembic": Variant(argv, project.path, other)}
        if command == "db.upgrade (empty)":
            for variant in variants.values():
                variant.prepare = project.drop_everything
        if command == "db.revision":
            project.change_models()
            before = project.revision_files()

            def remove_new(before=before) -> None:
                new = project.revision_files() - before
                if len(new) != 1:
                    raise RuntimeError(f"db.revision benchmark: expected one new revision, got {sorted(new)}")
                for path in new:
                    path.unlink()

            for variant in variants.values():
                variant.after = remove_new
        try:
            label = f"{project.backend} {project.label} {command}"
            # A warm-up round for the first command: bytecode compiled, files in the page cache.
            times = measure(label, variants, reps or ctx.reps, warmup=command == commands[0])
        finally:
            if command == "db.revision":
                project.restore_models()
        row = Row("local", command, project.backend, project.label, project.models, project.revisions, times)
        row.argv = {name: v.argv for name, v in variants.items()}
        if command == "db.reset":
            row.note = (
                "alembic: drop all, create_all, alembic stamp head; flask-migrate: the same, flask_migrate.stamp()"
            )
        if against is not None:
            row.baseline = f"ours with {against.name}"
        elif len(tools) == len(TOOLS):
            row.targets = _local_targets(row, largest)
        if command == "db.revision":
            # Profile with the model change in place.
            project.change_models()
            try:
                ctx.profile_misses(row, variants)
            finally:
                project.restore_models()
        else:
            ctx.profile_misses(row, variants)
        rows.append(row)
    return rows


def _local(ctx: Context, backend: str, sizes: list[tuple[int, int]], heavy_reps: int | None) -> list[Row]:
    rows = bench_project(ctx, _project(ctx, backend, None))
    largest = max(sizes)
    for size in sizes:
        reps = heavy_reps if size == largest else None
        rows += bench_project(ctx, _project(ctx, backend, size), reps=reps, largest=size == largest)
    # db.reset flat in the number of revisions: the same models with fewer revisions; the two resets
    # measured interleaved in one round-robin, so the machine's load falls on both alike.
    low = _project(ctx, backend, ctx.plan.flat_low)
    projects.check_run(low.argv("alembic", "db.upgrade (empty)"), low.path)
    high = next(p for p in ctx.projects if (p.backend, p.models, p.revisions) == (backend, *largest))
    env = projects.env()
    variants = {
        "ours": Variant(high.argv("ours", "db.reset"), high.path, env),
        "alembic": Variant(low.argv("ours", "db.reset"), low.path, env),  # the row's baseline column
    }
    command = f"db.reset {largest[1]}r vs {low.revisions}r"
    times = measure(f"{backend} {command}", variants, ctx.reps if backend == "sqlite" else heavy_reps, warmup=True)
    flat = Row("derived", command, backend, f"{largest[0]}m", largest[0], largest[1], times)
    flat.baseline = f"ours@{low.revisions}r"
    flat.note = f"ours at {largest[1]} revisions / ours at {low.revisions} revisions, same {largest[0]} models"
    flat.argv = {name: v.argv for name, v in variants.items()}
    flat.targets = [Target(f"<=1.1x ours@{low.revisions}r", flat.ratio("alembic"), 1.1)]
    if flat.targets[0].met is False:
        progress(f"profiling {command} ({backend}): missed")
        ctx.profiles.append(
            {
                "command": command,
                "backend": backend,
                "missed": [flat.targets[0].text()],
                "ours": profile(variants["ours"]),
                f"ours@{low.revisions}r": profile(variants["alembic"]),
            }
        )
    rows.append(flat)
    return rows


def local_sqlite(ctx: Context) -> list[Row]:
    return _local(ctx, "sqlite", ctx.plan.sqlite_sizes, ctx.plan.heavy_reps)


def local_mariadb(ctx: Context) -> list[Row]:
    return _local(ctx, "mariadb", ctx.plan.mariadb_sizes, ctx.plan.heavy_reps)


def remote_ssh(ctx: Context) -> list[Row]:
    from .remote import remote_benchmarks

    return remote_benchmarks(ctx)


def fleet(ctx: Context) -> list[Row]:
    from .fleet import fleet_benchmarks

    return fleet_benchmarks(ctx)


def estimates(ctx: Context) -> list[Row]:
    from .estimates import estimate_benchmarks

    return estimate_benchmarks(ctx)


def stall(ctx: Context) -> list[Row]:
    from .stall import stall_benchmarks

    return stall_benchmarks(ctx)


# The benchmark groups, run in this order.
GROUPS = [local_sqlite, local_mariadb, remote_ssh, fleet, estimates, stall]


# -- main ------------------------------------------------------------------------------------------


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def python_loop_s() -> float:
    """How fast this machine runs Python on the day: the median of 5 timings of one fixed loop, s.
    Recorded with each run, so that two runs' seconds can be read against their machines."""
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for number in range(2_000_000):
            total += number
        timings.append(time.perf_counter() - started)
    return round(sorted(timings)[2], 3)


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 repetitions, a 30-model app")
    parser.add_argument("--only", action="append", choices=[g.__name__ for g in GROUPS], help="run only these groups")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    parser.add_argument(
        "--tmp",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None,
        help="where the apps, databases and servers live (default: /dev/shm, a tmpfs, when there is one: "
        "the tools are measured, not the disk's fsyncs; SQLite commits every DDL statement)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    groups = [g for g in GROUPS if not args.only or g.__name__ in args.only]

    signal.signal(signal.SIGTERM, _interrupt)
    started = time.time()
    scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=args.tmp))
    ctx = Context(plan, scratch, args.out)
    rows: list[Row] = []
    try:
        projects.prepare_library(scratch)
        for group in groups:
            progress(f"== {group.__name__}")
            rows += group(ctx)
    finally:
        for server in reversed(ctx.started):
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--", "deploy", "migrations", "exampleapp")),
        "quick": args.quick,
        "plan": plan.__dict__,
        "groups": [g.__name__ for g in groups],
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "scratch": str(scratch.parent),
        "load_average_at_end": os.getloadavg(),
        "python_loop_s": python_loop_s(),
        "duration_s": round(time.time() - started, 1),
    }
    if not rows:  # groups that write results of their own (estimates, stall): the command results stay as they are
        return 0
    table = report.table(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else "latest"
    (args.out / f"{name}.json").write_text(
        json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows], "profiles": ctx.profiles}, indent=1) + "\n"
    )
    report.write_csv(rows, args.out / f"{name}.csv")
    (args.out / f"{name}.md").write_text(table + "\n")
    report.plot(rows, args.out / f"{name}.png")
    progress(f"wrote {args.out}/{name}.json, .csv, .md, .png in {meta['duration_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
