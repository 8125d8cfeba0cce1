"""vectors stored once: float32 shard files beside index.db; the table keeps id -> slot and norm

Moves every vector BLOB, streaming in id order, into append-only shard files
(`vectors/shard-NNNNNN.f32`, see vecsearch.store.shards) and records its slot; then drops
the BLOB column. All in the upgrade's one transaction (vecsearch.store.database): a kill
part-way leaves the old schema, and the next open runs this again. Shard files are outside
the transaction, so the re-run reconciles what the killed one wrote: rows it finds already
right (the same bytes) are kept, short or different ones written again, rows and files past
the last vector dropped; the CRC-32s are those of the BLOBs, the source.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

import zlib
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CHUNK = 4096


def _index_dir(conn) -> Path:
    for _seq, name, file in conn.execute(sa.text("PRAGMA database_list")):
        if name == "main" and file:
            return Path(file).parent
    raise RuntimeError("the vector-shard migration needs a database file, not an in-memory database")


def upgrade() -> None:
    from vecsearch.store.shards import DIRNAME, Shards

    conn = op.get_bind()
    with op.batch_alter_table("index_info") as batch:
        batch.add_column(sa.Column("next_slot", sa.Integer, nullable=False, server_default="0"))
    op.add_column("vectors", sa.Column("slot", sa.Integer, nullable=True))
    op.create_table(
        "vector_chunks",  # a CRC-32 per written run of rows, so damaged shard data is found
        sa.Column("start_slot", sa.Integer, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("crc32", sa.BigInteger, nullable=False),
    )
    dim = conn.execute(sa.text("SELECT dim FROM index_info")).scalar()
    slot = 0
    if dim:
        shards = Shards(_index_dir(conn) / DIRNAME, dim)
        last = -1
        while True:
            rows = conn.execute(
                sa.text("SELECT image_id, data FROM vectors WHERE image_id > :last ORDER BY image_id LIMIT :n"),
                {"last": last, "n": CHUNK},
            ).fetchall()
            if not rows:
                break
            mat = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
            if not shards.holds(slot, mat):  # written already by a run that was killed later
                shards.write(slot, mat)
            conn.execute(
                sa.text("INSERT INTO vector_chunks (start_slot, count, crc32) VALUES (:s, :n, :c)"),
                {"s": slot, "n": len(rows), "c": zlib.crc32(mat.tobytes())},
            )
            conn.execute(
                sa.text("UPDATE vectors SET slot = :slot WHERE image_id = :id"),
                [{"slot": slot + i, "id": r[0]} for i, r in enumerate(rows)],
            )
            slot += len(rows)
            last = rows[-1][0]
        shards.truncate(slot)  # what an earlier, killed run left past the end
        shards.sync()  # rows it left and this run kept reach the disk before the commit points at them
        conn.execute(sa.text("UPDATE index_info SET next_slot = :n"), {"n": slot})
    with op.batch_alter_table("vectors", recreate="always") as batch:
        batch.drop_column("data")
        batch.alter_column("slot", existing_type=sa.Integer, nullable=False)
        batch.alter_column("norm", existing_type=sa.Float, nullable=True)


def downgrade() -> None:
    from vecsearch.store.shards import DIRNAME, Shards

    conn = op.get_bind()
    op.add_column("vectors", sa.Column("data", sa.LargeBinary, nullable=True))
    dim = conn.execute(sa.text("SELECT dim FROM index_info")).scalar()
    if dim:
        shards = Shards(_index_dir(conn) / DIRNAME, dim)
        rows = conn.execute(sa.text("SELECT image_id, slot FROM vectors ORDER BY image_id")).fetchall()
        for i in range(0, len(rows), CHUNK):
            part = rows[i : i + CHUNK]
            mat = shards.read([r[1] for r in part])
            conn.execute(
                sa.text("UPDATE vectors SET data = :data WHERE image_id = :id"),
                [{"data": mat[j].tobytes(), "id": r[0]} for j, r in enumerate(part)],
            )
    op.drop_table("vector_chunks")
    with op.batch_alter_table("vectors", recreate="always") as batch:
        batch.drop_column("slot")
        batch.alter_column("data", existing_type=sa.LargeBinary, nullable=False)
    with op.batch_alter_table("index_info") as batch:
        batch.drop_column("next_slot")
