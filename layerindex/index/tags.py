"""What each tag of a repository pointed to over time (``layerindex tags``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from layerindex.index.schema import repositories, tags
from layerindex.index.store import iso_utc


def tag_history(
    engine: Engine, registry: str, repository: str, tag: str | None
) -> list[dict[str, Any]]:
    """Every digest each tag of a repository pointed to, with when it was first and last seen."""
    query = (
        select(tags.c.tag, tags.c.digest, tags.c.first_seen, tags.c.last_seen)
        .join(repositories, repositories.c.id == tags.c.repository_id)
        .where(repositories.c.registry == registry, repositories.c.name == repository)
        .order_by(tags.c.tag, tags.c.first_seen)
    )
    if tag is not None:
        query = query.where(tags.c.tag == tag)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [
        {
            "repository": f"{registry}/{repository}",
            "tag": r.tag,
            "digest": r.digest,
            "first_seen": iso_utc(r.first_seen),
            "last_seen": iso_utc(r.last_seen),
        }
        for r in rows
    ]
