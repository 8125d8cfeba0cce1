"""kept_vectors: vectors of content no longer indexed, findable by content hash for a while, so a
file that comes back (an exclude lifted, a removed folder indexed again) is not embedded again

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain CREATE TABLE: transactional in SQLite, so a kill mid-way leaves 0007 intact.
    op.create_table(
        "kept_vectors",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("slot", sa.Integer, nullable=False),
        sa.Column("norm", sa.Float, nullable=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=True),
        sa.Column("height", sa.Integer, nullable=True),
        sa.Column("kept_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kept_vectors")
