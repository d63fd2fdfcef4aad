"""Where a command's time goes, for the targets it misses: one run under cProfile with -X importtime,
summarised (top cumulative functions, the library's own functions, the slowest imports)."""

from __future__ import annotations

import pstats
import re
import sys
import tempfile
from pathlib import Path

from .measure import Variant, run_timed

SITE = re.compile(r".*/(site-packages|lib/python3\.\d+)/")


def _short(path: str) -> str:
    path = SITE.sub("", path)
    marker = "/deploy/"
    return "deploy/" + path.split(marker, 1)[1] if marker in path else path


def _importtime(stderr: str, top: int) -> list[str]:
    rows = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append((int(match.group(2)), len(match.group(3)), match.group(4)))
    # The top three levels (top-level imports and what they import), slowest first, nesting shown.
    if not rows:
        return []
    level = min(indent for _, indent, _ in rows)
    heads = sorted((r for r in rows if r[1] <= level + 4), reverse=True)[:top]
    return [f"{us / 1e6:7.3f}s  {' ' * (indent - level)}import {name}" for us, indent, name in heads]


def profile(variant: Variant, top: int = 25) -> dict:
    """Run `variant` once under cProfile; its prepare/after hooks around it as in the measurement."""
    argv = variant.argv
    rest = argv[1:] if argv[0] == sys.executable else argv
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as scratch:
        out = Path(scratch) / "run.prof"
        profiled = [sys.executable, "-X", "importtime", "-m", "cProfile", "-o", str(out), *rest]
        wall, done = run_timed(variant, profiled)
        if not out.exists():
            return {"argv": argv, "error": done.stderr.decode(errors="replace")[-2000:]}
        stats = pstats.Stats(str(out))
        entries = []
        for (filename, line, function), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():
            entries.append((cumtime, tottime, calls, f"{_short(filename)}:{line}({function})"))
        entries.sort(reverse=True)
        fmt = [f"{cum:7.3f}s cum {tot:7.3f}s own {calls:7d}x  {where}" for cum, tot, calls, where in entries]
        ours = [line for line, entry in zip(fmt, entries, strict=True) if entry[3].startswith("deploy/")]
        own = sorted(entries, key=lambda e: e[1], reverse=True)
        # Who calls the costliest functions (by own time): a built-in's cost is read from its callers.
        callers = {}
        by_own = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:8]
        for (filename, line, function), (_cc, _calls, _tot, _cum, called_by) in by_own:
            ranked = sorted(called_by.items(), key=lambda item: item[1][3], reverse=True)[:4]
            callers[f"{_short(filename)}:{line}({function})"] = [
                f"{ct:7.3f}s {nc:6d}x  {_short(cf)}:{cl}({cfn})" for (cf, cl, cfn), (_c, nc, _t, ct) in ranked
            ]
        return {
            "argv": argv,
            "wall_profiled_s": round(wall, 3),
            "total_s": round(stats.total_tt, 3),
            "top_cumulative": fmt[:top],
            "deploy_cumulative": ours[:15],
            "top_own_time": [f"{tot:7.3f}s own {calls:7d}x  {where}" for _, tot, calls, where in own[:12]],
            "callers_of_top_own_time": callers,
            "slowest_imports": _importtime(done.stderr.decode(errors="replace"), 20),
        }
