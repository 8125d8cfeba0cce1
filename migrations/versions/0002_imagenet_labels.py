"""imagenet_labels: top-k ImageNet classes per image

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imagenet_labels",
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("rank", sa.Integer, primary_key=True),
        sa.Column("class_index", sa.Integer, nullable=False),
        sa.Column("wnid", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("prob", sa.Float, nullable=False),
    )
    op.create_index("ix_imagenet_labels_wnid", "imagenet_labels", ["wnid"])
    op.create_index("ix_imagenet_labels_name", "imagenet_labels", ["name"])


def downgrade() -> None:
    op.drop_table("imagenet_labels")
