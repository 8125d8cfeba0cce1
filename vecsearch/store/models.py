"""SQLAlchemy models: the database is the source of truth (the vectors themselves live in its shard files)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class IndexInfo(Base):
    """One row: what built this index. Later runs must match it."""

    __tablename__ = "index_info"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backbone: Mapped[str] = mapped_column(String(64))
    weights_kind: Mapped[str] = mapped_column(String(16))
    weights_seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    weights_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    weights_fingerprint: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(16), default="cosine")
    index_type: Mapped[str] = mapped_column(String(16), default="flat")  # a named type or a FAISS factory string
    max_memory: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # auto's budget in bytes
    index_spec: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: the structure built (index_types.IndexSpec)
    precision: Mapped[str | None] = mapped_column(String(16), nullable=True)  # "float32" | "mixed"; None = float32 (before 0.3)
    # Bumped by every commit that changes vectors; the FAISS sidecar records the one it holds.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # The shard commit point: slots below it hold committed vectors and never change.
    next_slot: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column()


class Setting(Base):
    """A per-index option that later runs remember (JSON value), e.g. "exclude": the globs `index` skips."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Image(Base):
    __tablename__ = "images"
    # AUTOINCREMENT: an id is never reused, so a stale FAISS entry can't point at a new image.
    __table_args__ = (Index("ix_images_sha256", "sha256"), Index("ix_images_status", "status"), {"sqlite_autoincrement": True})
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(8))  # "ok" | "failed"
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    indexed_at: Mapped[datetime] = mapped_column()


class Vector(Base):
    """Where an image's unit vector lives in the shard files (`store.shards`), and its length."""

    __tablename__ = "vectors"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    # Row in the shard files; one image per slot at a time. Rows never change, so a slot passes
    # only with its vector: to the image that brings a kept vector back (KeptVector).
    slot: Mapped[int] = mapped_column(Integer)
    norm: Mapped[float | None] = mapped_column(
        Float, nullable=True
    )  # length before normalising (the ImageNet top needs it); None if imported without


class KeptVector(Base):
    """The vector of content no longer indexed (removed, excluded, or replaced by an edit), kept
    findable by its content hash so that a file with that content coming back reuses it.

    Its row stays in the append-only shards anyway; this row is what makes it findable, and
    is dropped after `indexer.KEEP_DAYS` (or when the image revives it).
    """

    __tablename__ = "kept_vectors"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer)
    norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    size: Mapped[int] = mapped_column(Integer)  # the file's, so the indexer hashes only files of a known size
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kept_at: Mapped[datetime] = mapped_column()


class VectorChunk(Base):
    """A CRC-32 of one run of shard rows as written, so damaged vector data can be found."""

    __tablename__ = "vector_chunks"
    start_slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    crc32: Mapped[int] = mapped_column(BigInteger)


class ImagenetLabel(Base):
    """Top-k ImageNet classes of one image, from the backbone's own classifier."""

    __tablename__ = "imagenet_labels"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1 = most probable
    class_index: Mapped[int] = mapped_column(Integer)
    wnid: Mapped[str] = mapped_column(String(16), index=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    prob: Mapped[float] = mapped_column(Float)


class UserLabel(Base):
    """A class of the user's own for one image (from a folder name or a CSV)."""

    __tablename__ = "user_labels"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(Text, index=True)
    split: Mapped[str | None] = mapped_column(String(8), nullable=True)  # "train" | "test" | None
    source: Mapped[str] = mapped_column(String(16))  # "folder" | "csv"


class Classifier(Base):
    """A trained model over the stored vectors (k-NN, probe, fine-tuned head)."""

    __tablename__ = "classifiers"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "knn" | "probe" | "head"
    path: Mapped[str | None] = mapped_column(Text, nullable=True)  # file inside the index folder
    params: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    metrics: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    created_at: Mapped[datetime] = mapped_column()


class Prediction(Base):
    __tablename__ = "predictions"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    classifier: Mapped[str] = mapped_column(ForeignKey("classifiers.name", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column()
