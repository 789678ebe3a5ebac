"""Image lists for scheduled crawls: one reference a line, ``#`` comments, tag filters.

alpine:3.20                          one image
ghcr.io/org/app@sha256:…             one image, pinned
bitnami/kubectl:/^1\\.3[0-9]\\./     every tag of the repository matching the regex
python --tags 3                      the 3 newest tags (version order) of the repository
python:/-slim$/ --tags 2             the 2 newest tags that match
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from layerindex.errors import InvalidReference, UsageError
from layerindex.reference import Reference, parse_reference
from layerindex.regex import Regex, compile_regex

_TAG_FILTER = re.compile(r"^(?P<repo>[^\s]+?):/(?P<regex>.*)/$")
NEWEST_MAX = 100_000  # --tags N: more tags than any repository keeps
_NEWEST = re.compile(r"^(?P<head>.*?)\s+--tags\s+(?P<count>\d+)$")


@dataclass(frozen=True)
class ListEntry:
    """One line of an image list: a reference, or a repository with a tag filter."""

    text: str  # the line as written (without comment), for messages and run records
    reference: Reference  # for a filtered repository: the repository with tag "latest"
    tag_pattern: Regex | None = None  # RE2: linear in the tag whatever the pattern
    newest: int | None = None

    @property
    def expands(self) -> bool:
        return self.tag_pattern is not None or self.newest is not None


def parse_line(line: str, where: str = "") -> ListEntry | None:
    """A line of an image list; None for blank lines and comments."""
    text = _strip_comment(line)
    if not text:
        return None
    newest = None
    if match := _NEWEST.match(text):
        text_head, count = match["head"].strip(), match["count"]
        # int() of thousands of digits raises ValueError: a count that long is refused as such.
        newest = int(count) if len(count) <= len(str(NEWEST_MAX)) else NEWEST_MAX + 1
        if not 1 <= newest <= NEWEST_MAX:
            given = count if len(count) <= 12 else f"a {len(count)}-digit number"
            raise UsageError(f"{where}: --tags needs a count from 1 to {NEWEST_MAX}, not {given}")
    else:
        text_head = text
    pattern = None
    if match := _TAG_FILTER.match(text_head):
        pattern = compile_regex(match["regex"], f"{where}: tag regex /{match['regex']}/")
        text_head = match["repo"]
    try:
        reference = parse_reference(text_head)
    except InvalidReference as exc:
        raise UsageError(f"{where}: {exc}") from None
    if (pattern is not None or newest is not None) and reference.digest is not None:
        raise UsageError(f"{where}: a tag filter needs a repository, not a digest")
    return ListEntry(text, reference, pattern, newest)


def _strip_comment(line: str) -> str:
    # "#" starts a comment at the start of a line or after whitespace; a regex may contain "#".
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()


def read_list(path: Path) -> list[ListEntry]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read image list {path}: {exc.strerror}") from None
    lines = _text_lines(data, path)
    entries = []
    for number, line in enumerate(lines, 1):
        entry = parse_line(line, f"{path}:{number}")
        if entry is not None:
            entries.append(entry)
    return entries


def _text_lines(data: bytes, path: Path) -> list[str]:
    """The lines of an image list, which must be UTF-8 text: a binary or Latin-1 file is
    refused naming the line and byte where it stops being that."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem, offset = "is not UTF-8 text", exc.start
    else:
        if "\0" not in text:
            return text.splitlines()
        problem, offset = "holds a NUL byte: it is not a text file", data.index(b"\0")
    line = data.count(b"\n", 0, offset) + 1
    raise UsageError(
        f"image list {path}:{line} {problem} (byte {offset}); save it as UTF-8 text, "
        "one image reference a line"
    )


def version_key(tag: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key putting ``1.10`` after ``1.9``: digit runs compare as numbers. A number is
    compared by its length without leading zeros, then digit by digit: exact like int(), and
    bounded where int() of a 5,000-digit tag from a registry raises ValueError."""
    return tuple(
        (0, len(number := part.lstrip("0")), number) if part[0] in "0123456789" else (1, 0, part)
        for part in re.findall(r"[0-9]+|[^0-9]+", tag)
    )


def expand(
    entry: ListEntry, list_tags: Callable[[Reference], Iterable[str]]
) -> Iterator[Reference]:
    """The references a list entry stands for (tags listed from the registry when filtered)."""
    if not entry.expands:
        yield entry.reference
        return
    tags = [
        t
        for t in list_tags(entry.reference)
        if entry.tag_pattern is None or entry.tag_pattern.search(t)
    ]
    tags.sort(key=version_key)
    if entry.newest is not None:
        tags = tags[-entry.newest :]
    for tag in tags:
        yield Reference(entry.reference.registry, entry.reference.repository, tag=tag)
