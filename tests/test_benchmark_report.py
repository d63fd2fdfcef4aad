"""How two benchmark runs are compared: by each row's ratio to the baseline measured with it."""

import json

from benchmarks.report import compare


def run(path, ours, alembic):
    """A results file with one row: `ours` and its baseline's repetitions, seconds."""
    median = lambda times: sorted(times)[len(times) // 2]  # noqa: E731
    row = {
        "command": "db.current",
        "backend": "sqlite",
        "app": "example",
        "baseline": "alembic",
        "times": {"ours": ours, "alembic": alembic},
        "median": {"ours": median(ours), "alembic": median(alembic)},
        "ours/alembic": median(ours) / median(alembic),
    }
    path.write_text(json.dumps({"rows": [row]}))
    return path


def test_a_machine_slower_on_the_second_day_makes_no_row_worse(tmp_path):
    before = run(tmp_path / "before.json", [0.60, 0.61, 0.62], [0.50, 0.51, 0.52])
    after = run(tmp_path / "after.json", [0.90, 0.92, 0.93], [0.75, 0.76, 0.78])
    assert compare(before, after).endswith("Worse by more than their noise: none.")


def test_a_row_that_grew_against_its_baseline_is_worse(tmp_path):
    before = run(tmp_path / "before.json", [0.60, 0.61, 0.62], [0.50, 0.51, 0.52])
    after = run(tmp_path / "after.json", [0.70, 0.71, 0.72], [0.50, 0.51, 0.52])
    assert compare(before, after).endswith("Worse by more than their noise: db.current sqlite example.")


def test_a_growth_within_the_runs_spread_is_noise(tmp_path):
    before = run(tmp_path / "before.json", [0.55, 0.61, 0.70], [0.45, 0.51, 0.58])
    after = run(tmp_path / "after.json", [0.60, 0.66, 0.72], [0.46, 0.51, 0.57])
    assert compare(before, after).endswith("Worse by more than their noise: none.")
