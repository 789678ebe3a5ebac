"""A layer walked before its turn to write: its entries wait in a temporary file.

SQLite has one writer at a time. When several layers are fetched at once and one of them is
writing, another need not wait to download, verify, decompress and parse: it walks now into a
spool and its entries are written from there when the writer is free. The walk has then ended
cleanly (both digests checked) before anything is written, so a bad layer still commits nothing.
Memory stays flat: entries go to an unnamed temporary file in batches and come back one batch
at a time.
"""

from __future__ import annotations

import contextlib
import marshal
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

from layerindex.entries import TYPE_CODES, TYPE_NAMES, Entry, EntryType
from layerindex.walker import LayerWalker

SPOOL_BATCH = 5000  # entries per marshalled record

# tuple.__new__ skips NamedTuple's Python-level __new__ (as in walker.py).
_new_entry: Callable[[type[Entry], tuple[object, ...]], Entry] = tuple.__new__


@contextlib.contextmanager
def spooled(walker: LayerWalker) -> Iterator[SpooledLayer]:
    """Walk ``walker`` to its end now; the file is deleted when the block ends."""
    with tempfile.TemporaryFile(prefix="layerindex-spool-") as file:
        count = _spool(walker, file)
        yield SpooledLayer(file, count, walker.compression, walker.uncompressed_size)


class SpooledLayer:
    """A walked layer's entries, replayed in order: what ``Store.index_layer`` reads of a walk."""

    def __init__(
        self, file: IO[bytes], count: int, compression: str, uncompressed_size: int
    ) -> None:
        self._file = file
        self.count = count
        self.compression = compression
        self.uncompressed_size = uncompressed_size

    def __iter__(self) -> Iterator[Entry]:
        self._file.seek(0)
        types = TYPE_NAMES
        for _ in range(-(-self.count // SPOOL_BATCH)):
            for path, code, *rest in marshal.load(self._file):
                yield _new_entry(Entry, (path, types[code], *rest))


def _spool(walker: LayerWalker, file: IO[bytes]) -> int:
    codes: dict[EntryType, int] = TYPE_CODES
    batch: list[tuple[object, ...]] = []
    count = 0
    for path, entry_type, *rest in walker:
        batch.append((path, codes[entry_type], *rest))
        if len(batch) == SPOOL_BATCH:
            marshal.dump(batch, file)
            count += len(batch)
            batch = []
    if batch:
        marshal.dump(batch, file)
        count += len(batch)
    return count
