"""The documentation: the Sphinx site builds without a warning, its command reference covers every task
and option, and the README stays a front page whose links land."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README_MAX_LINES = 200
PAGES = (
    "index",
    "tutorial",
    "adoption",
    "configuration",
    "production",
    "safety",
    "troubleshooting",
    "commands",
    "benchmarks",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The HTML site, built from scratch with warnings as errors and every reference checked (-n)."""
    out = tmp_path_factory.mktemp("docs-html")
    built = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-E", "-q", "-b", "html", "docs", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def namespace(filename: str):
    """The collection that `invoke` (tasks.py) or `fab` (fabfile.py) loads."""
    spec = importlib.util.spec_from_file_location(f"docs_test_{Path(filename).stem}", REPO / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.namespace


def entry(page: str, anchor: str) -> str:
    """One command's section of the reference page, up to the next command's."""
    start = page.find(f'<section id="{anchor}">')
    assert start >= 0, f"no entry {anchor} in the command reference"
    end = page.find("<section id=", start + 1)
    return page[start : end if end > 0 else None]


def long_flags(task) -> list[str]:
    return [f"--{argument.name.replace('_', '-')}" for argument in task.get_arguments()]


def test_the_site_builds_without_warnings(site):
    for page in PAGES:
        assert (site / f"{page}.html").is_file(), page
    assert (site / "_images" / "latest.png").is_file()


def test_every_invoke_task_and_option_is_in_the_reference(site):
    page = (site / "commands.html").read_text()
    collection = namespace("tasks.py")
    assert collection.task_names
    for name in collection.task_names:
        section = entry(page, f"invoke-{name.replace('.', '-')}")
        for flag in long_flags(collection[name]):
            assert flag in section, f"invoke {name} {flag}"


def test_every_fab_task_and_option_is_in_the_reference(site):
    page = (site / "commands.html").read_text()
    collection = namespace("fabfile.py")
    environments = collection.collections["db"].configuration()["db"]["environment_tasks"]
    assert environments, "fabric.yaml declares environments"
    for name in collection.task_names:
        # Each environment is a task of the same shape; the reference shows it once, as ENV.
        anchor = "fab-env" if name in environments else f"fab-env-{name.replace('.', '-')}"
        section = entry(page, anchor)
        for flag in long_flags(collection[name]):
            assert flag in section, f"fab {name} {flag}"


def test_the_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move the detail to docs/"


def test_the_readme_links_land(site):
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if "://" not in link]
    assert local
    for link in local:
        path, _, anchor = link.partition("#")
        assert (REPO / path).exists(), link
        if anchor:
            assert path.startswith("docs/") and path.endswith(".md"), link
            html = (site / Path(path).relative_to("docs").with_suffix(".html")).read_text()
            assert f'id="{anchor}"' in html, link


def test_the_readme_keeps_its_two_commands():
    readme = (REPO / "README.md").read_text()
    assert "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/invoke db.reset" in readme
    assert "bash tests/run.sh" in readme
