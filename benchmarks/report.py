"""The results: a Markdown table (stdout, the benchmarks page), CSV, and the growth plot (PNG);
`python -m benchmarks.report --compare OLD.json NEW.json`: two runs side by side, judged by each row's
ratio to its baseline."""

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
        if r.failure:
            targets = f"FAILED: {r.failure}"
        lines.append(
            f"| {r.command} | {r.backend} | {r.app} | {_s(r.median('ours'))} | {base} | "
            f"{_s(r.median('flask-migrate'))} | {_x(ratio)} | {_x(r.ratio('flask-migrate'))} | {targets} |"
        )
    missed = [f"{r.command} ({r.backend}, {r.app}): {t.text()}" for r in rows for t in r.targets if t.met is False]
    missed += [f"{r.command} ({r.backend}, {r.app}): FAILED: {r.failure}" for r in rows if r.failure]
    met = sum(1 for r in rows for t in r.targets if t.met)
    lines.append("")
    lines.append(f"Targets: {met} met, {len(missed)} missed." + (" Missed:" if missed else ""))
    lines += [f"- {m}" for m in missed]
    lines.append(
        "Medians of cold runs (a fresh Python each), seconds; baseline: the raw `alembic` CLI "
        "(remote: plain ssh + alembic; db.reset flatness: ours at fewer revisions)."
    )
    fleets = [r for r in rows if r.tenants]
    if fleets:
        lines += ["", fleet_table(fleets)]
    return "\n".join(lines)


def fleet_table(rows: list[Row]) -> str:
    """The fleet rows by size: wall times, their spread, and the cost per tenant."""
    lines = [
        "| tenants | runs | fleet s (min–max) | one database s | fleet/one | s per tenant | added s per tenant |",
        "|" + "---|" * 7,
    ]
    for r in rows:
        ours, one = r.median("ours"), r.median("alembic")
        if ours is None:
            lines.append(f"| {r.tenants} | 0 | FAILED: {r.failure} | {_s(one)} | — | — | — |")
            continue
        spread = f"{min(r.times['ours']):.2f}–{max(r.times['ours']):.2f}"
        lines.append(
            f"| {r.tenants} | {len(r.times['ours'])} | {ours:.3f} ({spread}) | {_s(one)} | {_x(r.ratio('alembic'))} | "
            f"{_s(r.per_tenant())} | {_s(r.added_per_tenant())} |"
        )
    lines.append("")
    lines.append(
        "Fleet: `fab fleetN db.upgrade --yes` on N tenants' databases of one MariaDB on one host against "
        "`fab one db.upgrade --yes`; s per tenant: the fleet's median over N; added: (fleet − one) / (N − 1)."
    )
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as file:
        out = csv.writer(file)
        out.writerow(
            ["group", "command", "backend", "app", "models", "revisions", "runs", "ours_s", "baseline", "baseline_s",
             "flask_migrate_s", "ours_over_baseline", "ours_over_flask_migrate", "targets", "all_targets_met",
             "tenants", "s_per_tenant", "failure", "note"]
        )  # fmt: skip
        for r in rows:
            met = [t.met for t in r.targets]
            out.writerow(
                [r.group, r.command, r.backend, r.app, r.models, r.revisions, len(r.times.get("ours", [])),
                 _s(r.median("ours")), r.baseline, _s(r.median("alembic")), _s(r.median("flask-migrate")),
                 _x(r.ratio("alembic")),
                 _x(r.ratio("flask-migrate")), "; ".join(t.text() for t in r.targets),
                 "" if not met else all(met), r.tenants or "", _s(r.per_tenant()) if r.tenants else "",
                 r.failure, r.note]
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


def compare(old_path: Path, new_path: Path) -> str:
    """Two runs, row by row. A row got worse when its ratio to its baseline (measured interleaved with it,
    in the same run) grew by more than that ratio's noise: the ratio times the relative half-ranges of
    ours and of the baseline added, the larger of the two runs'. Medians in seconds are shown beside it,
    but runs on different days are not judged by them: the machine's own speed moves them all."""
    import json

    def rows(run: dict) -> dict[tuple, dict]:
        return {(r["command"], r["backend"], r["app"]): r for r in run["rows"]}

    def spread(row: dict, tool: str) -> float:
        times = row["times"][tool]
        return (max(times) - min(times)) / 2 / row["median"][tool]

    def ratio_noise(row: dict) -> float:
        # The baseline's times are under "alembic" whatever the baseline is (ssh + alembic, fab on one database).
        return row["ours/alembic"] * (spread(row, "ours") + spread(row, "alembic"))

    runs = [json.loads(path.read_text()) for path in (old_path, new_path)]
    old, new = (rows(run) for run in runs)
    speeds = [run.get("meta", {}).get("python_loop_s") for run in runs]
    lines = [
        "| command | backend | app | before s | after s | before/baseline | after/baseline | change | noise ± |",
        "|" + "---|" * 9,
    ]
    worse = []
    for key, after in new.items():
        before = old.get(key)
        if before is None or after["ours/alembic"] is None or before["ours/alembic"] is None:
            lines.append(
                f"| {' | '.join(key)} | — | {_s(after['median'].get('ours'))} | — | "
                f"{_x(after['ours/alembic'])} | new | — |"
            )
            continue
        was, now = before["ours/alembic"], after["ours/alembic"]
        noise = max(ratio_noise(before), ratio_noise(after))
        change = f"{now - was:+.2f}"
        if now - was > noise:
            change += " worse"
            worse.append(" ".join(key))
        lines.append(
            f"| {' | '.join(key)} | {before['median']['ours']:.3f} | {after['median']['ours']:.3f} | "
            f"{_x(was)} | {_x(now)} | {change} | {noise:.2f} |"
        )
    lines += ["", "Worse by more than their noise: " + ("; ".join(worse) if worse else "none") + "."]
    if all(speeds):
        lines += ["", f"The machine's fixed Python loop (python_loop_s): {speeds[0]} s before, {speeds[1]} s after."]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "--compare":
        print(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        replot(Path(sys.argv[1]))
