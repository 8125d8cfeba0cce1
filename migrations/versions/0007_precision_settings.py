"""index_info.precision and a settings table: the compute precision that made the vectors, and
per-index options a later run must remember (e.g. the folders `index --exclude` leaves out)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("index_info") as batch:
        # NULL: an index made before precision was recorded, i.e. float32.
        batch.add_column(sa.Column("precision", sa.String(16), nullable=True))
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),  # JSON
    )


def downgrade() -> None:
    op.drop_table("settings")
    with op.batch_alter_table("index_info") as batch:
        batch.drop_column("precision")
