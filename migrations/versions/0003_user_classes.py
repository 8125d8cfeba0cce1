"""user_labels, classifiers, predictions: classes of the user's own and models over vectors

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_labels",
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("split", sa.String(8), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
    )
    op.create_index("ix_user_labels_label", "user_labels", ["label"])
    op.create_table(
        "classifiers",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("path", sa.Text, nullable=True),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "predictions",
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("classifier", sa.String(64), sa.ForeignKey("classifiers.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("predictions")
    op.drop_table("classifiers")
    op.drop_table("user_labels")
