"""The indexing job: a reference → its image manifests → their layers → walker → store.

A failure stays with what failed: a bad layer is recorded and the image's other layers go on; a
bad image is reported and the run's other images go on. Nothing of a failed layer is committed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from layerindex import manifest
from layerindex.errors import LayerIndexError, UnsupportedManifest
from layerindex.reference import Reference
from layerindex.registry import RegistryClient
from layerindex.store import ImageRecord, LayerRecord, LayerState, Store
from layerindex.walker import LayerWalker

log = logging.getLogger("layerindex")

CONFIG_MAX_BYTES = 8 * 1024 * 1024


@dataclass
class ImageOutcome:
    """What indexing one platform image did."""

    reference: str
    manifest_digest: str | None = None
    platform: str | None = None
    indexed: int = 0  # layers downloaded and walked now
    known: int = 0  # layers whose contents were already in the index
    skipped: int = 0  # foreign / non-distributable layers
    failed: int = 0
    entries: int = 0  # entries in the image's layers
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class Crawler:
    def __init__(
        self,
        client: RegistryClient,
        store: Store,
        *,
        platform: str = "linux/amd64",
        hash_files: bool = False,
    ) -> None:
        self.client = client
        self.store = store
        self.platform = platform
        self.hash_files = hash_files

    def index(self, ref: Reference) -> list[ImageOutcome]:
        """Index every image ``ref`` names (one per selected platform).

        Image-level errors (the manifest cannot be had) come back as a failed outcome.
        """
        try:
            fetched = self.client.get_manifest(ref)
            parsed = manifest.parse_manifest(fetched)
            if ref.tag is not None:
                self.store.record_tag(ref.registry, ref.repository, ref.tag, fetched.digest)
            targets: list[tuple[manifest.ImageManifest | manifest.ImageIndex, str | None]]
            if isinstance(parsed, manifest.ImageIndex):
                children = manifest.select_platforms(parsed, self.platform)
                targets = [
                    (
                        manifest.parse_manifest(
                            self.client.get_manifest(ref.with_digest(c.digest))
                        ),
                        fetched.digest,
                    )
                    for c in children
                ]
            else:
                targets = [(parsed, None)]
        except LayerIndexError as exc:
            return [ImageOutcome(reference=ref.familiar(), errors=[str(exc)])]
        outcomes = []
        for image, index_digest in targets:
            outcome = ImageOutcome(reference=ref.familiar(), manifest_digest=image.digest)
            try:
                if not isinstance(image, manifest.ImageManifest):
                    raise UnsupportedManifest(
                        f"{ref.familiar()}: index entry {image.digest} is itself an index"
                    )
                self._index_image(ref, image, index_digest, outcome)
            except LayerIndexError as exc:
                outcome.errors.append(str(exc))
            outcomes.append(outcome)
        return outcomes

    def _index_image(
        self,
        ref: Reference,
        image: manifest.ImageManifest,
        index_digest: str | None,
        outcome: ImageOutcome,
    ) -> None:
        config_bytes = self.client.get_blob_bytes(ref, image.config.digest, CONFIG_MAX_BYTES)
        config = manifest.parse_config(config_bytes, image, where=ref.familiar())
        outcome.platform = config.platform
        image_id, states = self.store.record_image(
            ImageRecord(
                registry=ref.registry,
                repository=ref.repository,
                digest=image.digest,
                reference=ref.familiar(),
                index_digest=index_digest,
                media_type=image.media_type,
                platform=config.platform,
                config_digest=image.config.digest,
                created=config.created,
                manifest=image.raw.decode("utf-8"),
                config=config_bytes.decode("utf-8"),
                layers=[
                    LayerRecord(d.digest, d.media_type, d.size, diff_id)
                    for d, diff_id in zip(image.layers, config.diff_ids, strict=True)
                ],
            )
        )
        for descriptor, state in zip(image.layers, states, strict=True):
            if state.indexed:
                outcome.known += 1
            elif reason := manifest.is_foreign(descriptor):
                self.store.record_skip(state, reason)
                outcome.skipped += 1
            elif self.store.link_known_diff(state):
                outcome.known += 1
            else:
                self._index_layer(ref, state, outcome)
        outcome.entries = self.store.image_entry_count(image_id)
        if not outcome.failed:
            self.store.finish_image(image_id)

    def _index_layer(self, ref: Reference, layer: LayerState, outcome: ImageOutcome) -> None:
        where = f"image {ref.familiar()} layer {layer.digest}"
        try:
            with self.client.open_blob(ref, layer.digest) as stream:
                walker = LayerWalker(
                    stream,
                    digest=layer.digest,
                    diff_id=layer.diff_id,
                    hash_files=self.hash_files,
                    where=where,
                )
                count = self.store.index_layer(layer, walker)
        except LayerIndexError as exc:
            message = str(exc) if where in str(exc) else f"{where}: {exc}"
            log.warning("%s", message)
            self.store.record_failure(layer, message)
            outcome.failed += 1
            outcome.errors.append(message)
            return
        log.info("%s: %d entries", where, count)
        outcome.indexed += 1
