"""Alembic environment: the connection comes from layerindex.index.database (config.attributes)."""

from __future__ import annotations

from alembic import context

from layerindex.index.schema import include_name, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
    compare_type=True,
    include_name=include_name,  # the search indexes are the migrations' own
)
with context.begin_transaction():
    context.run_migrations()
