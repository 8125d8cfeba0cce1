"""index_info.index_kind -> index_type: one name for the FAISS structure everywhere

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("index_info") as batch:
        batch.alter_column("index_kind", new_column_name="index_type")


def downgrade() -> None:
    with op.batch_alter_table("index_info") as batch:
        batch.alter_column("index_type", new_column_name="index_kind")
