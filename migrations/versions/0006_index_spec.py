"""index_info.max_memory and index_spec: the memory budget and the resolved search structure

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("index_info") as batch:
        batch.add_column(sa.Column("max_memory", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("index_spec", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("index_info") as batch:
        batch.drop_column("index_spec")
        batch.drop_column("max_memory")
