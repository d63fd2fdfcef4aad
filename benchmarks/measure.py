"""Cold runs, timed round-robin, and the rows they make."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TOOLS = ("ours", "alembic", "flask-migrate")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Variant:
    """One tool's way of doing the work: a fresh Python each run."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    stdin: str | None = None
    prepare: Callable[[], None] | None = None  # untimed, before each run
    after: Callable[[], None] | None = None  # untimed, after each run


class BenchError(RuntimeError):
    pass


def run_timed(variant: Variant, argv: list[str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """One run of `variant` (or of `argv` in its place, as profiling runs it), timed, its prepare and
    after hooks around it, untimed."""
    if variant.prepare:
        variant.prepare()
    started = time.perf_counter()
    done = subprocess.run(
        argv or variant.argv,
        cwd=variant.cwd,
        env=variant.env,
        input=variant.stdin.encode() if variant.stdin is not None else None,
        stdin=subprocess.DEVNULL if variant.stdin is None else None,
        capture_output=True,
        timeout=900,
    )
    elapsed = time.perf_counter() - started
    if variant.after:
        variant.after()
    return elapsed, done


def run_once(variant: Variant) -> float:
    elapsed, done = run_timed(variant)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")[-3000:]
        raise BenchError(f"{' '.join(variant.argv)} exited {done.returncode} in {variant.cwd}:\n{output}")
    return elapsed


def measure(label: str, variants: dict[str, Variant], reps: int, warmup: bool = False) -> dict[str, list[float]]:
    """`reps` timed runs of each variant, interleaved (round-robin, order rotated every repetition) so
    that the machine's noise falls on all of them alike; an untimed warm-up round first if asked."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(-1 if warmup else 0, reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = run_once(variants[name])
            if rep >= 0:
                times[name].append(elapsed)
        if rep >= 0:
            shown = "  ".join(f"{name} {times[name][-1]:.2f}s" for name in names)
            progress(f"{label}: {rep + 1}/{reps}  {shown}")
    return times


@dataclass
class Target:
    name: str  # e.g. "<=1.1x alembic"
    value: float | None
    limit: float
    unit: str = "x"  # "x" ratio, "s" difference in seconds, "s/tenant" seconds per tenant

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value <= self.limit

    def text(self) -> str:
        if self.value is None:
            return f"{self.name}: n/a"
        if self.unit == "x":
            shown = f"{self.value:.2f}x"
        elif self.unit == "s":
            shown = f"{self.value:+.2f}s"
        else:
            shown = f"{self.value:.3f} {self.unit}"
        return f"{self.name}: {shown} {'met' if self.met else 'MISSED'}"


@dataclass
class Row:
    group: str  # local | remote | derived
    command: str
    backend: str
    app: str
    models: int | None
    revisions: int | None
    times: dict[str, list[float]]
    baseline: str = "alembic"  # what the "alembic" column is: alembic CLI, or plain ssh + alembic
    note: str = ""
    targets: list[Target] = field(default_factory=list)
    argv: dict[str, list[str]] = field(default_factory=dict)
    tenants: int | None = None  # a fleet's row: how many databases it upgraded
    failure: str = ""  # a row whose runs failed: the last line said, and no times

    def median(self, tool: str) -> float | None:
        values = self.times.get(tool)
        return statistics.median(values) if values else None

    def per_tenant(self) -> float | None:
        """A fleet's wall time over its tenants, seconds."""
        ours = self.median("ours")
        return ours / self.tenants if ours is not None and self.tenants else None

    def added_per_tenant(self) -> float | None:
        """What each tenant past the first adds to one database's run (the baseline), seconds."""
        ours, one = self.median("ours"), self.median("alembic")
        return (ours - one) / (self.tenants - 1) if ours is not None and one is not None and self.tenants > 1 else None

    def ratio(self, tool: str) -> float | None:
        ours, other = self.median("ours"), self.median(tool)
        return ours / other if ours is not None and other else None

    def as_dict(self) -> dict:
        return {
            "group": self.group,
            "command": self.command,
            "backend": self.backend,
            "app": self.app,
            "models": self.models,
            "revisions": self.revisions,
            "baseline": self.baseline,
            "note": self.note,
            "times": self.times,
            "median": {tool: self.median(tool) for tool in self.times},
            "ours/alembic": self.ratio("alembic"),
            "ours/flask-migrate": self.ratio("flask-migrate"),
            "targets": [
                {"target": t.name, "value": t.value, "limit": t.limit, "unit": t.unit, "met": t.met}
                for t in self.targets
            ],
            "argv": self.argv,
            "tenants": self.tenants,
            "per_tenant": self.per_tenant(),
            "failure": self.failure,
        }
