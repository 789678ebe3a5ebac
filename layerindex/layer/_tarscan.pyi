from layerindex.layer.entries import Entry, EntryType

SPECIAL_MAX: int
PATH_MAX: int
NAME_MAX: int

def scan(
    buffer: bytes,
    pos: int,
    out: list[Entry],
    entry_class: type[Entry],
    types: tuple[EntryType, ...],
    hash_files: bool,
    /,
) -> int: ...
