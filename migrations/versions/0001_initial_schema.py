"""initial schema: repositories, tags, images, layers, diffs, interned paths, entries

Revision ID: 0001_initial_schema
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial_schema"
down_revision = None
branch_labels = None
depends_on = None

NOW = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "repositories",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("registry", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repositories")),
        sa.UniqueConstraint("registry", "name", name=op.f("uq_repositories_registry")),
    )
    op.create_table(
        "tags",
        sa.Column("repository_id", sa.Integer, nullable=False),
        sa.Column("tag", sa.Text, nullable=False),
        sa.Column("digest", sa.Text, nullable=False),
        sa.Column("first_seen", NOW, nullable=False),
        sa.Column("last_seen", NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repositories.id"],
            name=op.f("fk_tags_repository_id_repositories"),
        ),
        sa.PrimaryKeyConstraint("repository_id", "tag", "digest", name=op.f("pk_tags")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("repository_id", sa.Integer, nullable=False),
        sa.Column("digest", sa.Text, nullable=False),
        sa.Column("reference", sa.Text, nullable=False),
        sa.Column("index_digest", sa.Text),
        sa.Column("media_type", sa.Text, nullable=False),
        sa.Column("platform", sa.Text, nullable=False),
        sa.Column("config_digest", sa.Text, nullable=False),
        sa.Column("created", sa.Text),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("indexed_at", NOW),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repositories.id"],
            name=op.f("fk_images_repository_id_repositories"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("repository_id", "digest", name=op.f("uq_images_repository_id")),
    )
    op.create_table(
        "diffs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("diff_id", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("entry_count", sa.Integer, nullable=False),
        sa.Column("indexed_at", NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_diffs")),
        sa.UniqueConstraint("diff_id", name=op.f("uq_diffs_diff_id")),
    )
    op.create_table(
        "layers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("digest", sa.Text, nullable=False),
        sa.Column("diff_id", sa.Text),
        sa.Column("media_type", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("compression", sa.Text),
        sa.Column("diff_ref", sa.Integer),
        sa.Column("skip_reason", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_attempt", NOW),
        sa.ForeignKeyConstraint(["diff_ref"], ["diffs.id"], name=op.f("fk_layers_diff_ref_diffs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_layers")),
        sa.UniqueConstraint("digest", name=op.f("uq_layers_digest")),
    )
    op.create_index(op.f("ix_layers_diff_id"), "layers", ["diff_id"])
    op.create_table(
        "image_layers",
        sa.Column("image_id", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("layer_id", sa.Integer, nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_image_layers_image_id_images")
        ),
        sa.ForeignKeyConstraint(
            ["layer_id"], ["layers.id"], name=op.f("fk_image_layers_layer_id_layers")
        ),
        sa.PrimaryKeyConstraint("image_id", "position", name=op.f("pk_image_layers")),
    )
    op.create_index(op.f("ix_image_layers_layer_id"), "image_layers", ["layer_id"])
    op.create_table(
        "dirs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dirs")),
        sa.UniqueConstraint("path", name=op.f("uq_dirs_path")),
    )
    op.create_table(
        "names",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_names")),
        sa.UniqueConstraint("name", name=op.f("uq_names_name")),
    )
    op.create_table(
        "entries",
        sa.Column("diff_ref", sa.Integer, nullable=False),
        sa.Column("dir_id", sa.Integer, nullable=False),
        sa.Column("name_id", sa.Integer, nullable=False),
        sa.Column("type", sa.SmallInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mode", sa.Integer, nullable=False),
        sa.Column("uid", sa.Integer, nullable=False),
        sa.Column("gid", sa.Integer, nullable=False),
        sa.Column("mtime", sa.BigInteger, nullable=False),
        sa.Column("link_target", sa.Text),
        sa.Column("sha256", sa.Text),
        sa.ForeignKeyConstraint(["diff_ref"], ["diffs.id"], name=op.f("fk_entries_diff_ref_diffs")),
        sa.ForeignKeyConstraint(["dir_id"], ["dirs.id"], name=op.f("fk_entries_dir_id_dirs")),
        sa.ForeignKeyConstraint(["name_id"], ["names.id"], name=op.f("fk_entries_name_id_names")),
        sa.PrimaryKeyConstraint("diff_ref", "dir_id", "name_id", name=op.f("pk_entries")),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_entries_name_dir", "entries", ["name_id", "dir_id"])


def downgrade() -> None:
    op.drop_index("ix_entries_name_dir", table_name="entries")
    op.drop_table("entries")
    op.drop_table("names")
    op.drop_table("dirs")
    op.drop_index(op.f("ix_image_layers_layer_id"), table_name="image_layers")
    op.drop_table("image_layers")
    op.drop_index(op.f("ix_layers_diff_id"), table_name="layers")
    op.drop_table("layers")
    op.drop_table("diffs")
    op.drop_table("images")
    op.drop_table("tags")
    op.drop_table("repositories")
