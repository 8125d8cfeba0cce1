"""Alembic environment: vecsearch passes an open connection in `config.attributes`."""

from alembic import context

from vecsearch.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` CLI use, for authoring new revisions
    from sqlalchemy import create_engine

    url = context.config.get_main_option("sqlalchemy.url") or "sqlite:///index.db"
    connection = create_engine(url).connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
