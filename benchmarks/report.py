"""The results: a Markdown table (stdout, the benchmarks page), CSV, and the growth plot (PNG)."""

from __future__ import annotations

import csv
from pathlib import Path

from .measure import Row


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    head = "| command | backend | app | ours s | baseline s | flask-migrate s | ours/baseline | ours/f-m | targets |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        base = _s(r.median("alembic"))
        if r.baseline != "alembic" and r.median("alembic") is not None:
            base += f" ({r.baseline})"
        ratio = r.ratio("alembic")
        targets = "; ".join(t.text() for t in r.targets) or "—"
        lines.append(
            f"| {r.command} | {r.backend} | {r.app} | {_s(r.median('ours'))} | {base} | "
            f"{_s(r.median('flask-migrate'))} | {_x(ratio)} | {_x(r.ratio('flask-migrate'))} | {targets} |"
        )
    missed = [f"{r.command} ({r.backend}, {r.app}): {t.text()}" for r in rows for t in r.targets if t.met is False]
    met = sum(1 for r in rows for t in r.targets if t.met)
    lines.append("")
    lines.append(f"Targets: {met} met, {len(missed)} missed." + (" Missed:" if missed else ""))
    lines += [f"- {m}" for m in missed]
    lines.append(
        "Medians of cold runs (a fresh Python each), seconds; baseline: the raw `alembic` CLI "
        "(remote: plain ssh + alembic; db.reset flatness: ours at fewer revisions)."
    )
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as file:
        out = csv.writer(file)
        out.writerow(
            ["group", "command", "backend", "app", "models", "revisions", "runs", "ours_s", "baseline", "baseline_s",
             "flask_migrate_s", "ours_over_baseline", "ours_over_flask_migrate", "targets", "all_targets_met", "note"]
        )  # fmt: skip
        for r in rows:
            met = [t.met for t in r.targets]
            out.writerow(
                [r.group, r.command, r.backend, r.app, r.models, r.revisions, len(r.times.get("ours", [])),
                 _s(r.median("ours")), r.baseline, _s(r.median("alembic")), _s(r.median("flask-migrate")),
                 _x(r.ratio("alembic")),
                 _x(r.ratio("flask-migrate")), "; ".join(t.text() for t in r.targets),
                 "" if not met else all(met), r.note]
            )  # fmt: skip


def plot(rows: list[Row], path: Path) -> None:
    """One panel per local command: median time against the app's size (models, revisions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    local = [r for r in rows if r.group == "local"]
    commands = list(dict.fromkeys(r.command for r in local))
    if not commands:
        return
    fig, axes = plt.subplots(1, len(commands), figsize=(4.2 * len(commands), 4.2), squeeze=False)
    colours = {"ours": "tab:blue", "alembic": "tab:orange", "flask-migrate": "tab:green"}
    styles = {"sqlite": "-", "mariadb": "--"}
    for ax, command in zip(axes[0], commands, strict=True):
        for backend in ("sqlite", "mariadb"):
            # The growth series: the example and the generated apps whose revisions grow with the models.
            series = sorted(
                (r for r in local if r.command == command and r.backend == backend and len(r.times) > 1),
                key=lambda r: (r.models or 0, r.revisions or 0),
            )
            for tool, colour in colours.items():
                points = [(r.models, r.median(tool)) for r in series if r.median(tool) is not None]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, styles[backend], marker="o", color=colour, label=f"{tool} ({backend})")
        ax.set_title(command)
        ax.set_xscale("log")
        ax.set_xlabel("models (log)")
        ax.set_ylabel("median s (cold process)")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        "Median of cold runs against the app's size: example (4 tables, 3 revisions), generated 30/100/300 models "
        "with 20/70/200 revisions; solid SQLite, dashed MariaDB (300 models only)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def replot(json_path: Path) -> None:
    """Redraw the PNG beside a results JSON: `python -m benchmarks.report benchmarks/results/latest.json`."""
    import json

    data = json.loads(json_path.read_text())
    rows = [
        Row(r["group"], r["command"], r["backend"], r["app"], r["models"], r["revisions"], r["times"], r["baseline"])
        for r in data["rows"]
    ]
    plot(rows, json_path.with_suffix(".png"))


if __name__ == "__main__":
    import sys

    replot(Path(sys.argv[1]))
