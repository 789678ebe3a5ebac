"""Reading the index: find a path, list images, an image's layers, a layer's or image's files."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, and_, func, or_, select, tuple_
from sqlalchemy.engine import Connection

from layerindex import overlay
from layerindex.entries import OPAQUE_MARKER, EntryType
from layerindex.errors import NotFound
from layerindex.schema import (
    diffs,
    dirs,
    entries,
    image_layers,
    images,
    layers,
    names,
    repositories,
    tags,
)
from layerindex.store import TYPE_CODES, TYPE_NAMES, split_path, stored_path

if TYPE_CHECKING:
    from layerindex.reference import Reference

Row = dict[str, Any]


@dataclass(frozen=True)
class ImageKey:
    id: int
    reference: str
    digest: str
    platform: str


def _ids(connection: Connection, pairs: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
    """(dir_id, name_id) of the paths that are interned at all."""
    dir_ids = _pairs(
        connection.execute(
            select(dirs.c.path, dirs.c.id).where(dirs.c.path.in_({d for d, _ in pairs}))
        )
    )
    name_ids = _pairs(
        connection.execute(
            select(names.c.name, names.c.id).where(names.c.name.in_({n for _, n in pairs}))
        )
    )
    return [(dir_ids[d], name_ids[n]) for d, n in pairs if d in dir_ids and n in name_ids]


def _image_filter(connection: Connection, refs: Sequence[Reference]) -> Any:
    """A WHERE clause on ``images`` for the images a list of references names."""
    clauses = []
    for ref in refs:
        repo = select(repositories.c.id).where(
            repositories.c.registry == ref.registry, repositories.c.name == ref.repository
        )
        digest = ref.digest
        if digest is None:
            digest = connection.execute(
                select(tags.c.digest)
                .where(tags.c.repository_id.in_(repo.scalar_subquery()), tags.c.tag == ref.tag)
                .order_by(tags.c.last_seen.desc())
                .limit(1)
            ).scalar_one_or_none()
            if digest is None:
                raise NotFound(f"{ref.familiar()} is not indexed; run: layerindex index {ref}")
        clauses.append(
            and_(
                images.c.repository_id.in_(repo.scalar_subquery()),
                or_(images.c.digest == digest, images.c.index_digest == digest),
            )
        )
    return or_(*clauses)


class Finder:
    """Queries. Read-only: nothing here writes to the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def find(self, path: str, image_refs: Sequence[Reference] = ()) -> list[Row]:
        """Every layer of every indexed image that holds ``path``, with its fate in the image."""
        candidates = [(path, *split_path(path))]
        candidates += [(a, *split_path(a)) for a in overlay.ancestors(path) if a != "/"]
        candidates += [(a, a, OPAQUE_MARKER) for a in overlay.ancestors(path)]
        with self.engine.connect() as connection:
            image_where = _image_filter(connection, image_refs) if image_refs else None
            target = _ids(connection, [(d, n) for _, d, n in candidates[:1]])
            if not target:
                return []
            ids = _ids(connection, [(d, n) for _, d, n in candidates])
            path_of = self._paths_of(connection, ids)
            query = (
                select(
                    images.c.id.label("image_id"),
                    images.c.reference,
                    images.c.digest.label("manifest_digest"),
                    images.c.platform,
                    image_layers.c.position,
                    layers.c.digest.label("layer_digest"),
                    entries.c.dir_id,
                    entries.c.name_id,
                    entries.c.type,
                    entries.c.size,
                    entries.c.mode,
                    entries.c.link_target,
                    entries.c.sha256,
                )
                .select_from(entries)
                .join(layers, layers.c.diff_ref == entries.c.diff_ref)
                .join(image_layers, image_layers.c.layer_id == layers.c.id)
                .join(images, images.c.id == image_layers.c.image_id)
                .where(tuple_(entries.c.dir_id, entries.c.name_id).in_(ids))
                .order_by(images.c.reference, images.c.platform, image_layers.c.position)
            )
            if image_where is not None:
                query = query.where(image_where)
            by_image: dict[int, list[Any]] = defaultdict(list)
            for row in connection.execute(query):
                by_image[row.image_id].append(row)
        results: list[Row] = []
        for rows in by_image.values():
            stack = [(r.position, path_of[(r.dir_id, r.name_id)], TYPE_NAMES[r.type]) for r in rows]
            for r in rows:
                if (r.dir_id, r.name_id) != target[0] or r.type == TYPE_CODES[EntryType.WHITEOUT]:
                    continue
                fate = overlay.fate(r.position, path, stack)
                results.append(
                    {
                        "image": r.reference,
                        "manifest_digest": r.manifest_digest,
                        "platform": r.platform,
                        "layer_index": r.position,
                        "layer_digest": r.layer_digest,
                        "path": path,
                        "size": r.size,
                        "type": TYPE_NAMES[r.type].value,
                        "mode": r.mode,
                        "link_target": r.link_target,
                        "state": fate.state,
                        "changed_by_layer": fate.by_position,
                    }
                )
        return results

    @staticmethod
    def _paths_of(
        connection: Connection, ids: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], str]:
        """Path text of (dir_id, name_id) pairs; an opaque marker maps to its directory."""
        dir_path = _pairs(
            connection.execute(
                select(dirs.c.id, dirs.c.path).where(dirs.c.id.in_({d for d, _ in ids}))
            )
        )
        name = _pairs(
            connection.execute(
                select(names.c.id, names.c.name).where(names.c.id.in_({n for _, n in ids}))
            )
        )
        return {(d, n): stored_path(dir_path[d], name[n]) for d, n in ids}

    def images(self) -> list[Row]:
        layer_count = (
            select(func.count())
            .where(image_layers.c.image_id == images.c.id)
            .correlate(images)
            .scalar_subquery()
        )
        entry_count = (
            select(func.coalesce(func.sum(diffs.c.entry_count), 0))
            .select_from(image_layers)
            .join(layers, layers.c.id == image_layers.c.layer_id)
            .join(diffs, diffs.c.id == layers.c.diff_ref)
            .where(image_layers.c.image_id == images.c.id)
            .correlate(images)
            .scalar_subquery()
        )
        query = select(
            images.c.reference.label("image"),
            images.c.digest.label("manifest_digest"),
            images.c.platform,
            layer_count.label("layers"),
            entry_count.label("entries"),
            images.c.indexed_at,
        ).order_by(images.c.reference, images.c.platform)
        with self.engine.connect() as connection:
            return [
                {**row._asdict(), "indexed_at": _iso(row.indexed_at)}
                for row in connection.execute(query)
            ]

    def layers(self, ref: Reference) -> list[Row]:
        with self.engine.connect() as connection:
            query = (
                select(
                    images.c.reference.label("image"),
                    images.c.platform,
                    image_layers.c.position.label("layer_index"),
                    layers.c.digest.label("layer_digest"),
                    layers.c.media_type,
                    layers.c.size,
                    diffs.c.entry_count.label("entries"),
                    layers.c.skip_reason,
                    layers.c.last_error,
                )
                .select_from(images)
                .join(image_layers, image_layers.c.image_id == images.c.id)
                .join(layers, layers.c.id == image_layers.c.layer_id)
                .outerjoin(diffs, diffs.c.id == layers.c.diff_ref)
                .where(_image_filter(connection, [ref]))
                .order_by(images.c.platform, image_layers.c.position)
            )
            rows = []
            for row in connection.execute(query):
                status = "indexed" if row.entries is not None else "pending"
                if row.skip_reason:
                    status = f"skipped: {row.skip_reason}"
                elif row.entries is None and row.last_error:
                    status = f"failed: {row.last_error}"
                values = row._asdict()
                del values["skip_reason"], values["last_error"]
                rows.append({**values, "status": status})
        return rows

    def ls_layer(self, digest: str, prefix: str = "/") -> Iterator[Row]:
        """A layer's own entries (whiteouts and opaque markers included), sorted by path."""
        with self.engine.connect() as connection:
            diff_ref = connection.execute(
                select(layers.c.diff_ref).where(layers.c.digest == digest)
            ).first()
            if diff_ref is None or diff_ref[0] is None:
                raise NotFound(f"layer {digest} is not indexed")
            rows = self._entries_of(connection, [diff_ref[0]], prefix)
        for path, entry_type, payload in sorted(rows[0], key=lambda r: r[0]):
            yield {"path": path, "type": entry_type.value, **payload}

    def ls_image(self, ref: Reference, prefix: str = "/") -> Iterator[Row]:
        """The final filesystem of each image ``ref`` names (whiteouts applied, top layer wins)."""
        with self.engine.connect() as connection:
            found = connection.execute(
                select(images.c.id, images.c.reference, images.c.platform)
                .where(_image_filter(connection, [ref]))
                .order_by(images.c.platform)
            ).all()
            if not found:
                raise NotFound(f"{ref.familiar()} is not indexed; run: layerindex index {ref}")
            for image in found:
                diff_refs = connection.execute(
                    select(layers.c.diff_ref)
                    .join(image_layers, image_layers.c.layer_id == layers.c.id)
                    .where(image_layers.c.image_id == image.id)
                    .order_by(image_layers.c.position)
                ).scalars()
                per_layer = self._entries_of(connection, list(diff_refs), "/")
                view = overlay.final_view(per_layer)
                for path in sorted(view):
                    if not _has_prefix(path, prefix):
                        continue
                    position, entry_type, payload = view[path]
                    yield {
                        "image": image.reference,
                        "platform": image.platform,
                        "layer_index": position,
                        "path": path,
                        "type": entry_type.value,
                        **payload,
                    }

    @staticmethod
    def _entries_of(
        connection: Connection, diff_refs: Sequence[int | None], prefix: str
    ) -> list[list[tuple[str, EntryType, Row]]]:
        """Each layer's rows as (path, type, details); a layer not indexed gives no rows."""
        query = (
            select(
                entries.c.diff_ref,
                dirs.c.path.label("dir"),
                names.c.name,
                entries.c.type,
                entries.c.size,
                entries.c.mode,
                entries.c.uid,
                entries.c.gid,
                entries.c.link_target,
            )
            .join(dirs, dirs.c.id == entries.c.dir_id)
            .join(names, names.c.id == entries.c.name_id)
            .where(entries.c.diff_ref.in_([d for d in diff_refs if d is not None]))
        )
        if prefix != "/":
            parent, _ = split_path(prefix)
            query = query.where(
                or_(
                    dirs.c.path == prefix,
                    dirs.c.path == parent,
                    dirs.c.path.startswith(prefix + "/", autoescape=True),
                )
            )
        by_diff: dict[int, list[tuple[str, EntryType, Row]]] = defaultdict(list)
        for r in connection.execute(query):
            entry_type = TYPE_NAMES[r.type]
            path = stored_path(r.dir, r.name)
            if prefix != "/" and not _has_prefix(path, prefix):
                continue
            details = {
                "size": r.size,
                "mode": r.mode,
                "uid": r.uid,
                "gid": r.gid,
                "link_target": r.link_target,
            }
            by_diff[r.diff_ref].append((path, entry_type, details))
        return [by_diff.get(d, []) if d is not None else [] for d in diff_refs]


def _pairs(rows: Iterable[Any]) -> dict[Any, Any]:
    return {key: value for key, value in rows}


def _has_prefix(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None
