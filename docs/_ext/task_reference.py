"""The command reference, built from the tasks themselves so that it cannot drift from them.

`{task-reference} invoke` renders the `db` collection that a project's tasks.py gets from
`deploy.local_tasks.db_tasks`; `{task-reference} fab` the fabfile's, from `deploy.remote_tasks.fab_tasks`,
with its environment tasks shown once as `ENV`; `{task-reference} init` the `python -m deploy init`
command. Each entry is the task's docstring and its options' help, exactly as `--help` prints them.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from invoke.parser import ParserContext

ROOT = Path(__file__).resolve().parents[2]
# Inline code in docstrings and help is written `like this`, as in the rest of the project.
CODE = re.compile(r"`([^`]+)`")
# Where the tasks, their help and the environments come from: a change there rebuilds the page.
SOURCES = (
    "tasks.py",
    "fabfile.py",
    "fabric.yaml",
    "deploy/local_tasks.py",
    "deploy/remote_tasks.py",
    "deploy/switches.py",
    "deploy/options.py",
    "deploy/scaffold.py",
)


def text_with_code(text: str) -> list[nodes.Node]:
    """`text` as inline nodes, its backquoted spans as literals."""
    parts = CODE.split(" ".join(text.split()))
    # re.split puts the backquoted spans at the odd places.
    return [nodes.literal(part, part) if index % 2 else nodes.Text(part) for index, part in enumerate(parts) if part]


def namespace(filename: str):
    """The `namespace` collection of the project's tasks.py or fabfile.py, as invoke and fab load it."""
    spec = importlib.util.spec_from_file_location(f"task_reference_{Path(filename).stem}", ROOT / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.namespace


def invoke_entries():
    """(program, task name, task) for every task of tasks.py."""
    collection = namespace("tasks.py")
    return [("invoke", name, collection[name]) for name in sorted(collection.task_names)]


def fab_entries():
    """(program, task name, task) for the fabfile's tasks; its environments are one `ENV` entry."""
    from deploy.remote_tasks import environment_task

    collection = namespace("fabfile.py")
    environments = set(collection.collections["db"].configuration()["db"]["environment_tasks"])
    entries = [("fab", "ENV", environment_task("ENV"))]
    for name in sorted(collection.task_names):
        if name not in environments:
            entries.append(("fab ENV", name, collection[name]))
    return entries


def entry_id(program: str, name: str) -> str:
    """The anchor of one entry: `invoke-db-upgrade`, `fab-env-db-upgrade`, `fab-env`."""
    return nodes.make_id(f"{program} {name}")


def section(program: str, name: str, title: str) -> nodes.section:
    node = nodes.section(ids=[entry_id(program, name)], names=[nodes.fully_normalize_name(title)])
    node += nodes.title("", "", nodes.literal(title, title))
    return node


def options_list(pairs: list[tuple[str, str]]) -> nodes.Node:
    """Flags and their help as a definition list."""
    found = nodes.definition_list()
    for flags, help_text in pairs:
        item = nodes.definition_list_item()
        item += nodes.term("", "", nodes.literal(flags, flags))
        item += nodes.definition("", nodes.paragraph("", "", *text_with_code(help_text or "")))
        found += item
    return found


def task_section(program: str, name: str, task) -> nodes.section:
    positional = [argument.upper() for argument in task.positional]
    title = f"{program} {name}"
    node = section(program, name, title)
    pairs = ParserContext(name=name, args=task.get_arguments()).help_tuples()
    usage = " ".join([title, *positional, *(["[options]"] if len(pairs) > len(positional) else [])])
    node += nodes.paragraph("", "", nodes.Text("Usage: "), nodes.literal(usage, usage))
    doc = inspect.getdoc(task.body) or ""
    for paragraph in filter(None, doc.split("\n\n")):
        node += nodes.paragraph("", "", *text_with_code(paragraph))
    if pairs:
        node += options_list(pairs)
    else:
        node += nodes.paragraph("", "No options.")
    return node


def init_section() -> nodes.section:
    """`python -m deploy init`, from the argparse parser that runs it."""
    from deploy.scaffold import parser

    top = parser()
    (subcommands,) = [action for action in top._actions if isinstance(action, argparse._SubParsersAction)]
    init = subcommands.choices["init"]
    node = section("python -m deploy", "init", "python -m deploy init")
    pairs, usage = [], ["python -m deploy init"]
    for action in init._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        value = f" {action.metavar or action.dest.upper()}" if action.nargs != 0 else ""
        spelled = f"{action.option_strings[-1]}{value}"
        usage.append(spelled if action.required else f"[{spelled}]")
        required = " (required)" if action.required else ""
        pairs.append((", ".join(action.option_strings) + value, action.help + required))
    usage = " ".join(usage)
    node += nodes.paragraph("", "", nodes.Text("Usage: "), nodes.literal(usage, usage))
    for paragraph in filter(None, (init.description or "").split("\n\n")):
        node += nodes.paragraph("", "", *text_with_code(paragraph))
    node += options_list(pairs)
    return node


class TaskReference(Directive):
    """`{task-reference} invoke|fab|init`: one section per command."""

    required_arguments = 1
    option_spec = {}
    has_content = False

    def run(self):
        which = directives.choice(self.arguments[0], ("invoke", "fab", "init"))
        env = self.state.document.settings.env
        for source in SOURCES:
            env.note_dependency(str(ROOT / source))
        if which == "init":
            return [init_section()]
        entries = invoke_entries() if which == "invoke" else fab_entries()
        return [task_section(program, name, task) for program, name, task in entries]


def setup(app):
    app.add_directive("task-reference", TaskReference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
