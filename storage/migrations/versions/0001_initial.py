"""Initial schema: images, classes, samples, decisions, fine-tune runs, adapters, exports.

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "source_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("class_name", sa.String(), nullable=True),
        sa.Column("original_name", sa.String(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("boxes_json", sa.JSON(), nullable=False),
        sa.Column("uploaded_by", sa.String(), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint("role IN ('clean', 'defect')", name=op.f("ck_source_images_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source_images")),
        sa.UniqueConstraint("sha256", name=op.f("uq_source_images_sha256")),
    )
    op.create_index("ix_source_images_role_class_name", "source_images", ["role", "class_name"])

    op.create_table(
        "defect_classes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("token", sa.String(), nullable=False),
        sa.Column("init_word", sa.String(), nullable=False),
        sa.Column("default_strength", sa.Double(), nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_defect_classes")),
        sa.UniqueConstraint("name", name=op.f("uq_defect_classes_name")),
    )

    op.create_table(
        "fine_tune_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("classes_json", sa.JSON(), nullable=False),
        sa.Column("config_json", sa.JSON(), nullable=False),
        sa.Column("dataset_snapshot_json", sa.JSON(), nullable=False),
        sa.Column("metrics_json", sa.JSON(), nullable=False),
        sa.Column("out_dir", sa.String(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(), nullable=False),
        _timestamp("created_at"),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'completed', 'failed', 'stopped')", name=op.f("ck_fine_tune_runs_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fine_tune_runs")),
    )

    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("class_name", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["class_name"], ["defect_classes.name"], name=op.f("fk_adapter_versions_class_name_defect_classes")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["fine_tune_runs.id"], name=op.f("fk_adapter_versions_run_id_fine_tune_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapter_versions")),
        sa.UniqueConstraint("class_name", "version", name="uq_adapter_versions_class_name_version"),
    )
    op.create_index(
        "uq_adapter_versions_one_active_per_class",
        "adapter_versions",
        ["class_name"],
        unique=True,
        sqlite_where=sa.text("is_active"),
        postgresql_where=sa.text("is_active"),
    )

    op.create_table(
        "generated_samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("class_name", sa.String(), nullable=False),
        sa.Column("source_image_id", sa.Integer(), nullable=False),
        sa.Column("model_hash", sa.String(), nullable=False),
        sa.Column("model_ref", sa.String(), nullable=False),
        sa.Column("token", sa.String(), nullable=False),
        sa.Column("adapter_path", sa.String(), nullable=True),
        sa.Column("adapter_version", sa.Integer(), nullable=True),
        sa.Column("strength", sa.Double(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("guidance", sa.Double(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("window_json", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("mask_sha256", sa.String(64), nullable=True),
        sa.Column("boxes_json", sa.JSON(), nullable=False),
        sa.Column("realism_score", sa.Double(), nullable=True),
        sa.Column("params_json", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reject_reason", sa.Text(), nullable=True),
        sa.Column("decided_by", sa.String(), nullable=True),
        _timestamp("decided_at", nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'accepted', 'rejected')", name=op.f("ck_generated_samples_status")),
        sa.ForeignKeyConstraint(
            ["source_image_id"], ["source_images.id"], name=op.f("fk_generated_samples_source_image_id_source_images")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generated_samples")),
    )
    op.create_index("ix_generated_samples_sha256", "generated_samples", ["sha256"])
    op.create_index("ix_generated_samples_source_image_id", "generated_samples", ["source_image_id"])
    op.create_index("ix_generated_samples_class_name_status", "generated_samples", ["class_name", "status"])

    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("user", sa.String(), nullable=False),
        _timestamp("at"),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'accepted', 'rejected')", name=op.f("ck_decisions_status")),
        sa.CheckConstraint("outcome IN ('applied', 'conflict')", name=op.f("ck_decisions_outcome")),
        sa.ForeignKeyConstraint(
            ["sample_id"], ["generated_samples.id"], name=op.f("fk_decisions_sample_id_generated_samples")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decisions")),
    )
    op.create_index("ix_decisions_sample_id", "decisions", ["sample_id"])

    op.create_table(
        "exports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("n_items", sa.Integer(), nullable=False),
        sa.Column("formats_json", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exports")),
    )


def downgrade() -> None:
    for table in (
        "exports",
        "decisions",
        "generated_samples",
        "adapter_versions",
        "fine_tune_runs",
        "defect_classes",
        "source_images",
    ):
        op.drop_table(table)
