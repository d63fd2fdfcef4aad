"""The lint of pending revisions (deploy.review.lint).

Revisions are written into a copy of the checkout on top of the example's history; the lint runs
in-process, without a database."""

from __future__ import annotations

import alembic.op
import pytest
from alembic.config import Config
from alembic.operations import ops
from helpers import PRODUCTION, STDIN_PASSWORD

from deploy.dialects import mariadb
from deploy.errors import DeployError
from deploy.review import lint

HEAD = "776f3cb23823"  # the example's last revision: users, posts, tags, post_tags

# One revision per kind of risk, each with the findings it must give on MariaDB, in order.
RISKY = {
    "r1drops": (
        ['op.drop_table("post_tags")', 'op.drop_column("posts", "body")'],
        ["drop_table post_tags", "drop_column posts.body"],
    ),
    "r2renames": (
        [
            'op.rename_table("tags", "labels")',
            'with op.batch_alter_table("users") as batch_op:',
            '    batch_op.alter_column("name", new_column_name="full_name", existing_type=sa.String(100))',
        ],
        ["rename_table tags to labels", "alter_column users.name rename to full_name"],
    ),
    "r3alter": (
        [
            'with op.batch_alter_table("posts") as batch_op:',
            '    batch_op.alter_column("title", type_=sa.Text(), existing_type=sa.String(200))',
            '    batch_op.alter_column("status", type_=sa.String(40), existing_type=sa.String(20),'
            " nullable=False, existing_nullable=True)",
        ],
        ["alter_column posts.title type", "alter_column posts.status type", "alter_column posts.status NOT NULL"],
    ),
    "r4columns": (
        [
            'op.add_column("posts", sa.Column("lang", sa.String(5), nullable=False))',
            'op.add_column("posts", sa.Column("editor_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=True))',
        ],
        ["add_column posts.lang NOT NULL without server default", "add_column posts.editor_id foreign key"],
    ),
    "r5constraints": (
        [
            'op.create_unique_constraint(op.f("uq_users_name"), "users", ["name"])',
            'op.create_index(op.f("ix_posts_title"), "posts", ["title"], unique=True)',
            'op.create_foreign_key(op.f("fk_posts_status_tags"), "posts", "tags", ["status"], ["name"])',
            'op.create_check_constraint("ck_posts_status", "posts", "status <> \'\'")',
        ],
        [
            "create_unique_constraint users.uq_users_name",
            "create_index posts.ix_posts_title",
            "create_foreign_key posts.fk_posts_status_tags",
            "create_check_constraint posts.ck_posts_status",
        ],
    ),
    "r6keys": (
        [
            'op.drop_constraint("pk_post_tags", "post_tags", type_="primary")',
            'op.create_primary_key("pk_post_tags", "post_tags", ["post_id", "tag_id"])',
            'op.execute("ALTER TABLE posts CONVERT TO CHARACTER SET latin1")',
        ],
        [
            "drop_constraint post_tags.pk_post_tags",
            "create_primary_key post_tags.pk_post_tags",
            "execute ALTER TABLE posts CONVERT TO CHARACTER SET latin1",
        ],
    ),
}
SAFE = [
    'op.add_column("posts", sa.Column("summary", sa.Text(), nullable=True))',
    'op.add_column("posts", sa.Column("views", sa.Integer(), nullable=False, server_default="0"))',
    'op.create_index(op.f("ix_posts_status"), "posts", ["status"], unique=False)',
    'notes = op.create_table("notes", sa.Column("id", sa.Integer(), primary_key=True),'
    ' sa.Column("post_id", sa.Integer(), sa.ForeignKey("posts.id"), nullable=False),'
    ' sa.Column("code", sa.String(20), nullable=False), sa.UniqueConstraint("code", name="uq_notes_code"))',
    'op.create_index("ix_notes_post_id_code", "notes", ["post_id", "code"], unique=True)',
    'op.create_foreign_key("fk_notes_users", "notes", "users", ["post_id"], ["id"])',
    'op.add_column("notes", sa.Column("rank", sa.Integer(), nullable=False))',
    'op.bulk_insert(notes, [{"id": 1, "post_id": 1, "code": "a", "rank": 1}])',
    'with op.batch_alter_table("users") as batch_op:',
    '    batch_op.alter_column("name", existing_type=sa.String(100), nullable=True, server_default="anon")',
    '    batch_op.alter_column("email", existing_type=sa.String(255), nullable=False, existing_nullable=False)',
    "op.execute(\"UPDATE posts SET status = 'draft' WHERE status = ''\")",
    'op.drop_index(op.f("ix_posts_author_id"), table_name="posts")',
]


def write(checkout, name: str, lines: list[str], down: str = HEAD, marker: str = "") -> None:
    """A revision whose upgrade() is `lines`, with module-level `marker` text after it."""
    path = checkout.add_revision(name, down, "\n    ".join(lines))
    path.write_text(path.read_text() + marker)


def config_of(checkout) -> Config:
    return Config(str(checkout.path / "alembic.ini"))


def names_by_revision(findings) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for finding in findings:
        found.setdefault(finding.revision, []).append(finding.operation)
    return found


@pytest.fixture
def risky(checkout) -> Config:
    write(checkout, "r0safe", SAFE)
    for name, (lines, _) in RISKY.items():
        write(checkout, name, lines)
    return config_of(checkout)


def test_lint_reports_exactly_the_risky_operations(risky):
    findings = lint.lint(risky, ["r0safe", *RISKY], "mysql")
    assert names_by_revision(findings) == {name: expected for name, (_, expected) in RISKY.items()}
    reasons = {finding.operation: finding.reason for finding in findings}
    assert mariadb.COPY in reasons["alter_column posts.title type"]  # VARCHAR -> TEXT
    assert reasons["alter_column posts.status type"].endswith("; MariaDB does it in place")  # VARCHAR(20) -> (40)
    assert mariadb.REBUILD in reasons["alter_column posts.status NOT NULL"]
    for copied in ("create_foreign_key posts.fk_posts_status_tags", "drop_constraint post_tags.pk_post_tags"):
        assert mariadb.COPY in reasons[copied]
    assert str(findings[1]) == (
        "r1drops: drop_column posts.body: drops the column's data; the running code still reads and writes it "
        "(mark it reviewed in reviewed_risks)"
    )


def test_the_mariadb_notes_only_on_mariadb(risky):
    findings = lint.lint(risky, ["r0safe", *RISKY], "sqlite")
    expected = {name: names for name, (_, names) in RISKY.items()}
    expected["r4columns"].remove("add_column posts.editor_id foreign key")  # a table copy on MariaDB only
    assert names_by_revision(findings) == expected
    assert not [finding for finding in findings if "MariaDB copies" in finding.reason]


def test_operations_inside_batch_blocks_are_recorded(risky):
    recorded = lint.operations(risky, "r3alter", "mysql")
    assert [(type(each), each.table_name, each.column_name) for each in recorded] == [
        (ops.AlterColumnOp, "posts", "title"),
        (ops.AlterColumnOp, "posts", "status"),
    ]
    assert [lint.name(each) for each in lint.operations(risky, "r0safe", "mysql")][-4:] == [
        "alter_column users.name",
        "alter_column users.email",
        "execute UPDATE posts SET status = 'draft' WHERE status = ''",
        "drop_index posts.ix_posts_author_id",
    ]
    assert alembic.op._proxy is None  # the recorder is gone


def test_the_reviewed_marker_suppresses_exactly_the_named_operation(checkout):
    marker = '\nreviewed_risks = {"drop_column posts.title": "copied to headline by r1; unread since v3"}\n'
    drops = ['op.drop_column("posts", "title")', 'op.drop_column("posts", "slug")']
    write(checkout, "r7reviewed", drops, marker=marker)
    config = config_of(checkout)
    assert [str(finding) for finding in lint.lint(config, ["r7reviewed"], "mysql")] == [
        "r7reviewed: drop_column posts.slug: drops the column's data; the running code still reads and writes it "
        "(mark it reviewed in reviewed_risks)"
    ]
    every = lint.lint(config, ["r7reviewed"], "mysql", include_reviewed=True)
    assert [(finding.operation, finding.reviewed) for finding in every] == [
        ("drop_column posts.title", "copied to headline by r1; unread since v3"),
        ("drop_column posts.slug", None),
    ]
    assert str(every[0]) == "r7reviewed: drop_column posts.title: reviewed: copied to headline by r1; unread since v3"


def test_a_script_that_needs_a_database_is_a_finding(checkout):
    write(checkout, "r8online", ['op.drop_column("users", "name")', 'op.get_bind().execute(sa.text("SELECT 1")).one()'])
    findings = lint.lint(config_of(checkout), ["r8online"], "mysql")
    assert [finding.operation for finding in findings] == ["drop_column users.name", "upgrade() needs a database"]
    assert findings[1].reason == (
        "it failed without one (AttributeError: 'NoneType' object has no attribute 'one'), "
        "so its risks are unknown: review it"
    )
    assert alembic.op._proxy is None


# A table an earlier pending revision creates, then what a later one does to it.
NEW_TABLE = [
    'op.create_table("labels", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("code", sa.String(20)))'
]
ON_IT = [
    'op.create_index("ix_labels_code", "labels", ["code"], unique=True)',
    'op.add_column("labels", sa.Column("rank", sa.Integer(), nullable=False))',
    'op.create_foreign_key("fk_labels_users", "labels", "users", ["id"], ["id"])',
]
ON_IT_RISKS = ["create_index labels.ix_labels_code", "add_column labels.rank NOT NULL without server default"]


@pytest.mark.parametrize("dialect", ["mysql", "postgresql", "sqlite"])
def test_a_table_created_earlier_in_the_same_run_is_empty_so_changing_it_is_no_risk(checkout, dialect):
    write(checkout, "t1create", NEW_TABLE)
    write(checkout, "t2change", ON_IT, down="t1create")
    assert lint.lint(config_of(checkout), ["t1create", "t2change"], dialect) == []


def test_an_empty_production_database_takes_such_a_history_without_allow_risky(checkout, database):
    write(checkout, "t1create", NEW_TABLE)
    write(checkout, "t2change", ON_IT, down="t1create")
    checkout.use_production(database)
    result = checkout.invoke("db.upgrade", "--yes", "--no-backup", stdin=STDIN_PASSWORD, env=PRODUCTION)
    assert result.code == 0, result.output
    assert database.version() == "t2change"


def test_a_table_created_earlier_holds_rows_once_they_are_put_in_or_once_it_is_applied(checkout):
    write(checkout, "t1create", NEW_TABLE)
    write(checkout, "t2fill", ["op.execute(\"INSERT INTO labels (id, code) VALUES (1, 'a')\")"], down="t1create")
    write(checkout, "t3change", ON_IT, down="t2fill")
    config = config_of(checkout)
    found = names_by_revision(lint.lint(config, ["t1create", "t2fill", "t3change"], "sqlite"))
    assert found == {"t3change": ON_IT_RISKS + ["create_foreign_key labels.fk_labels_users"]}
    # Applied by an earlier run: the application may have written rows since.
    assert names_by_revision(lint.lint(config, ["t3change"], "sqlite"))["t3change"][:2] == ON_IT_RISKS


@pytest.mark.parametrize(
    ("revision", "dialect", "marker", "message"),
    [
        ("nope", "mysql", "", "Can't locate revision identified by 'nope'"),
        ("r9", "oracle9", "", "unknown database kind 'oracle9'"),
        ("r9", "mysql", '\nreviewed_risks = ["drop_table users"]\n', "r9: reviewed_risks must map operation names"),
    ],
)
def test_bad_input_is_one_line(checkout, revision, dialect, marker, message):
    write(checkout, "r9", ['op.drop_table("users")'], marker=marker)
    with pytest.raises(DeployError) as failure:
        lint.lint(config_of(checkout), [revision], dialect)
    assert str(failure.value).startswith(message) and "\n" not in str(failure.value)
