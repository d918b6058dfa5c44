"""ORM tables of the studio database (SQLAlchemy 2 declarative mapping)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SOURCE_ROLES = ("clean", "defect")
SAMPLE_STATUSES = ("pending", "accepted", "rejected")
DECISION_OUTCOMES = ("applied", "conflict")
RUN_STATUSES = ("queued", "running", "completed", "failed", "stopped")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC that always loads as a timezone-aware UTC datetime; naive values are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"Naive datetime {value!r}: timestamps must be timezone-aware.")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base; constraint names follow NAMING_CONVENTION so migrations can refer to them."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class SourceImage(Base):
    """An uploaded image: a clean slab (background for generation) or a real defect of a class."""

    __tablename__ = "source_images"
    __table_args__ = (
        CheckConstraint(_in_list("role", SOURCE_ROLES), name="role"),
        Index("ix_source_images_role_class_name", "role", "class_name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    class_name: Mapped[str | None] = mapped_column(String)
    original_name: Mapped[str] = mapped_column(String)
    width: Mapped[int]
    height: Mapped[int]
    boxes_json: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    uploaded_by: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)

    samples: Mapped[list[GeneratedSample]] = relationship(back_populates="source_image")


class DefectClass(Base):
    """A defect class with its textual-inversion token and the strength the UI proposes by default."""

    __tablename__ = "defect_classes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    token: Mapped[str] = mapped_column(String)
    init_word: Mapped[str] = mapped_column(String)
    default_strength: Mapped[float | None]
    created_at: Mapped[datetime] = mapped_column(default=utc_now)

    adapter_versions: Mapped[list[AdapterVersion]] = relationship(
        back_populates="defect_class", order_by="AdapterVersion.version"
    )


class FineTuneRun(Base):
    """One fine-tuning job, with the exact dataset it trained on."""

    __tablename__ = "fine_tune_runs"
    __table_args__ = (CheckConstraint(_in_list("status", RUN_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    classes_json: Mapped[list[str]] = mapped_column(JSON, default=list)
    config_json: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dataset_snapshot_json: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    metrics_json: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    out_dir: Mapped[str | None] = mapped_column(String)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    adapter_versions: Mapped[list[AdapterVersion]] = relationship(back_populates="run")


class AdapterVersion(Base):
    """A trained adapter of one class; at most one version per class is active (used for generation)."""

    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("class_name", "version", name="uq_adapter_versions_class_name_version"),
        Index(
            "uq_adapter_versions_one_active_per_class",
            "class_name",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    class_name: Mapped[str] = mapped_column(ForeignKey("defect_classes.name"))
    version: Mapped[int]
    run_id: Mapped[int | None] = mapped_column(ForeignKey("fine_tune_runs.id"))
    path: Mapped[str] = mapped_column(String)
    is_active: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)

    defect_class: Mapped[DefectClass] = relationship(back_populates="adapter_versions")
    run: Mapped[FineTuneRun | None] = relationship(back_populates="adapter_versions")


class GeneratedSample(Base):
    """A synthetic defect candidate with every parameter that produced it and its review state."""

    __tablename__ = "generated_samples"
    __table_args__ = (
        CheckConstraint(_in_list("status", SAMPLE_STATUSES), name="status"),
        Index("ix_generated_samples_class_name_status", "class_name", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    class_name: Mapped[str] = mapped_column(String)
    source_image_id: Mapped[int] = mapped_column(ForeignKey("source_images.id"), index=True)
    model_hash: Mapped[str] = mapped_column(String)
    model_ref: Mapped[str] = mapped_column(String)
    token: Mapped[str] = mapped_column(String)
    adapter_path: Mapped[str | None] = mapped_column(String)
    adapter_version: Mapped[int | None]
    strength: Mapped[float]
    steps: Mapped[int]
    guidance: Mapped[float]
    seed: Mapped[int]
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    width: Mapped[int]
    height: Mapped[int]
    window_json: Mapped[dict[str, int] | None] = mapped_column(JSON(none_as_null=True))
    mask_sha256: Mapped[str | None] = mapped_column(String(64))
    boxes_json: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    realism_score: Mapped[float | None]
    params_json: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The generation it came from: one studio generation or one command-line batch folder (None before 0002).
    batch: Mapped[str | None] = mapped_column(String, index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    reject_reason: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(String)
    decided_at: Mapped[datetime | None]
    revision: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    created_by: Mapped[str] = mapped_column(String)

    source_image: Mapped[SourceImage] = relationship(back_populates="samples")
    decisions: Mapped[list[Decision]] = relationship(back_populates="sample", order_by="Decision.id")


class Decision(Base):
    """One review attempt on a sample, kept whether it was applied or lost to a concurrent reviewer."""

    __tablename__ = "decisions"
    __table_args__ = (
        CheckConstraint(_in_list("status", SAMPLE_STATUSES), name="status"),
        CheckConstraint(_in_list("outcome", DECISION_OUTCOMES), name="outcome"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("generated_samples.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    user: Mapped[str] = mapped_column(String)
    at: Mapped[datetime] = mapped_column(default=utc_now)
    outcome: Mapped[str] = mapped_column(String(16))

    sample: Mapped[GeneratedSample] = relationship(back_populates="decisions")


class Export(Base):
    """A dataset zip that was written, with its hash."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(String)
    sha256: Mapped[str] = mapped_column(String(64))
    n_items: Mapped[int]
    formats_json: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
