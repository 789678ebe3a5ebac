"""Path patterns (exact, glob, basename, substring, regex, file digest) and the SQL that finds
candidates for them.

A path is stored as an interned directory and an interned basename, so a pattern is answered in
two steps: the distinct dirs and names that can match are looked up through an index (B-tree for
exact strings, the trigram indexes of migration 0002 for substrings and globs), then every
candidate entry's full path is checked against the exact pattern in Python. The SQL step only
narrows; the Python check decides. Patterns reach SQL as bound parameters only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from sqlalchemy import literal_column, select, text
from sqlalchemy.engine import Connection

from layerindex.entries import query_path
from layerindex.errors import UsageError
from layerindex.schema import dirs, names

Kind = Literal["exact", "glob", "name", "contains", "regex", "digest"]
GLOB_CHARS = frozenset("*?[")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
TRIGRAM = 3  # the trigram indexes need 3 literal characters in a row
ID_CHUNK = 5000  # ids per IN (...) list


@dataclass(frozen=True)
class Branch:
    """Entries whose dir is in ``dir_ids`` and whose name is in ``name_ids`` (None: any)."""

    dir_ids: Sequence[int] | None = None
    name_ids: Sequence[int] | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class PathPattern:
    kind: Kind
    text: str
    matches: Callable[[str], bool]  # the exact test of a stored path

    def describe(self) -> str:
        return self.text if self.kind in ("exact", "glob") else f"--{self.kind} {self.text}"


def parse(kind: Kind, value: str) -> PathPattern:
    """A user's pattern; UsageError (exit 2) when it is malformed."""
    if kind == "exact":
        path = query_path(value)
        return PathPattern(kind, path, path.__eq__)
    if kind == "glob":
        glob = query_path(value) if not value.startswith("/") else "/" + value.lstrip("/")
        if value.endswith("/") and not glob.endswith("/"):
            glob += "/"
        regex = re.compile(glob_regex(glob))
        return PathPattern(kind, glob, lambda p: regex.fullmatch(p) is not None)
    if kind == "name":
        if "/" in value or not value:
            raise UsageError(f"--name takes a basename without '/', not {value!r}")
        return PathPattern(kind, value, lambda p: p.rpartition("/")[2] == value)
    if kind == "contains":
        if not value:
            raise UsageError("--contains needs at least one character")
        return PathPattern(kind, value, lambda p: value in p)
    if kind == "regex":
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise UsageError(
                f"--regex {value!r} is not a valid regular expression: {exc}"
            ) from None
        return PathPattern(kind, value, lambda p: compiled.search(p) is not None)
    if not DIGEST.fullmatch(value):
        raise UsageError(f"--digest {value!r} is not a digest like sha256:<64 hex digits>")
    return PathPattern(kind, value, lambda _p: True)


def is_glob(value: str) -> bool:
    return any(c in GLOB_CHARS for c in value)


def glob_regex(glob: str) -> str:
    """A path glob as a regex: ``*`` and ``?`` stay within one path segment, ``**`` crosses
    them (``/**/`` also matches a single ``/``), ``[abc]``/``[!abc]`` are character classes."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("/**/", i):
            out.append("/(?:.*/)?")
            i += 4
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = glob.find("]", i + 2 if glob[i + 1 : i + 2] in ("!", "^") else i + 1)
            body = glob[i + 1 : end] if end != -1 else ""
            if body in ("", "!", "^") or end == -1:
                raise UsageError(f"glob {glob!r}: '[' at {i} opens a character class never closed")
            negate = body[0] in "!^"
            members = body[1:] if negate else body
            escaped = "".join("\\" + m if m in "\\^[]" else m for m in members)
            out.append(f"[^/{escaped}]" if negate else f"(?!/)[{escaped}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    regex = "".join(out)
    try:
        re.compile(regex)
    except re.error as exc:
        raise UsageError(f"glob {glob!r} is malformed: {exc}") from None
    return regex


def _glob_literals(glob: str) -> list[str]:
    """The literal runs of a glob: ``/usr/*/kube*`` → ``/usr/``, ``/kube``."""
    return [run for run in re.split(r"\*+|\?|\[[!^]?\]?[^]]*\]", glob) if run]


def regex_literal(pattern: str) -> str:
    """The longest run of characters every match of ``pattern`` must contain ('' if none)."""
    try:
        parsed = re._parser.parse(pattern)  # type: ignore[attr-defined]
    except re.error:
        return ""
    if parsed.state.flags & (re.IGNORECASE | re.VERBOSE):
        return ""  # the literal's case or spacing is not what matches
    best, run = "", ""
    for op, argument in parsed:
        if op is re._constants.LITERAL:  # type: ignore[attr-defined]
            run += chr(argument)
            continue
        if op in (re._constants.AT,):  # type: ignore[attr-defined]
            continue  # ^ $ \b: zero width, the run goes on
        best, run = max(best, run, key=len), ""
    return max(best, run, key=len)


# --- SQL candidates ------------------------------------------------------------------------------


class Candidates:
    """Looks up the interned dirs and names a pattern can match."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.dialect = connection.dialect.name

    def branches(self, pattern: PathPattern) -> list[Branch]:
        if pattern.kind == "digest":
            return [Branch(sha256=pattern.text)]
        if pattern.kind == "name":
            return [Branch(name_ids=self._equal(pattern.text))]
        if pattern.kind == "contains":
            return self._contains(pattern.text)
        if pattern.kind == "regex":
            literal = regex_literal(pattern.text)
            return self._contains(literal) if literal else [Branch()]
        if pattern.kind == "glob":
            return self._glob(pattern.text)
        directory, _, name = pattern.text.rpartition("/")
        dir_ids = [i for i, _ in self._rows("dirs", "=", directory or "/")]
        return [Branch(dir_ids=dir_ids, name_ids=self._equal(name))]

    def _glob(self, glob: str) -> list[Branch]:
        directory, _, name = glob.rpartition("/")
        if name and "**" not in name and any(c not in "*?" for c in name):
            # The basename is one segment: match the interned names exactly.
            regex = re.compile(glob_regex(name))
            like = _glob_superset(name)
            return [Branch(name_ids=self._matching("names", like, regex.fullmatch))]
        literal = max(_glob_literals(directory), key=len, default="").strip("/")
        if not literal:
            return [Branch()]  # nothing to narrow by: every entry is checked
        return [Branch(dir_ids=self._substring("dirs", literal))]

    def _contains(self, substring: str) -> list[Branch]:
        found = [Branch(dir_ids=self._substring("dirs", substring))]
        if "/" not in substring:
            found.append(Branch(name_ids=self._substring("names", substring)))
            return found
        # Across the join: "…/bin/kub" is a dir ending in "…/bin" and a name starting "kub".
        head, _, tail = substring.rpartition("/")
        name_ids = (
            self._matching("names", _escape_glob(tail) + "*", lambda n: n.startswith(tail))
            if tail
            else None
        )
        dir_ids = (
            self._matching("dirs", "*" + _escape_glob(head), lambda d: d.endswith(head))
            if head
            else None
        )
        found.append(Branch(dir_ids=dir_ids, name_ids=name_ids))
        return found

    def _equal(self, value: str) -> list[int]:
        return [i for i, _ in self._rows("names", "=", value)]

    def _substring(self, table: str, substring: str) -> list[int]:
        return self._matching(table, "*" + _escape_glob(substring) + "*", lambda s: substring in s)

    def _matching(self, table: str, glob: str, check: Callable[[str], object]) -> list[int]:
        """Ids of ``table`` rows matching the SQLite-style ``glob`` (a superset), then ``check``."""
        return [i for i, value in self._rows(table, "glob", glob) if check(value)]

    def _rows(self, table: str, op: Literal["=", "glob"], value: str) -> Iterator[tuple[int, str]]:
        query: Any
        column = dirs.c.path if table == "dirs" else names.c.name
        source = dirs if table == "dirs" else names
        if op == "=":
            query = select(source.c.id, column).where(column == value)
        elif self.dialect == "sqlite" and _longest_literal(value) >= TRIGRAM:
            # The FTS5 trigram table answers GLOB from its index (case-sensitive).
            fts, col = ("dirs_fts", "path") if table == "dirs" else ("names_fts", "name")
            query = text(f"SELECT rowid, {col} FROM {fts} WHERE {col} GLOB :pattern").bindparams(
                pattern=value
            )
        elif self.dialect == "sqlite":
            query = select(source.c.id, column).where(column.op("GLOB")(value))
        elif table == "dirs":
            # pg_trgm's GIN index (on path || '/', see migration 0002) answers LIKE.
            slashed = column.concat(literal_column("'/'"))
            query = select(source.c.id, column).where(
                slashed.like(_glob_to_like(value) + "/", "\\")
            )
        else:
            slashed = literal_column("'/'").concat(column)  # the index is on '/' || name
            query = select(source.c.id, column).where(
                slashed.like("/" + _glob_to_like(value), "\\")
            )
        for row in self.connection.execute(query):
            yield int(row[0]), str(row[1])


def _escape_glob(literal: str) -> str:
    """A literal in a superset glob: the glob's own special characters become ``?``."""
    return "".join("?" if c in GLOB_CHARS or c == "]" else c for c in literal)


def _glob_superset(segment: str) -> str:
    """A one-segment path glob as a SQLite glob matching at least as much."""
    return re.sub(r"\[[!^]?\]?[^]]*\]", "?", segment)


def _glob_to_like(glob: str) -> str:
    out = []
    for c in glob:
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        else:
            out.append("\\" + c if c in "\\%_" else c)
    return "".join(out)


def _longest_literal(glob: str) -> int:
    return max((len(run) for run in re.split(r"[*?]", glob)), default=0)


T = TypeVar("T")


def chunks(ids: Sequence[T]) -> Iterator[Sequence[T]]:
    """``ids`` in slices small enough for one IN (...) list of bound parameters."""
    for start in range(0, len(ids), ID_CHUNK):
        yield ids[start : start + ID_CHUNK]
