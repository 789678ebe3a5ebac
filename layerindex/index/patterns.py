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
from typing import Literal, TypeVar

from layerindex.errors import UsageError
from layerindex.index.database import Reader
from layerindex.layer.entries import query_path
from layerindex.regex import Regex, compile_regex

Kind = Literal["exact", "glob", "name", "contains", "regex", "digest"]
GLOB_CHARS = frozenset("*?[")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
TRIGRAM = 3  # the trigram indexes need 3 literal characters in a row
ID_CHUNK = 5000  # ids per IN (...) list
# More dirs than this holding a substring (`--contains python3`: 108k of 158k) are not listed
# up front when a limit may stop the query early: they are read in path order as needed.
MANY_DIRS = 2000


@dataclass(frozen=True)
class Branch:
    """Entries whose dir is one of ``dirs`` and whose name is one of ``names`` (None: any),
    each by id with its text."""

    dirs: dict[int, str] | None = None
    names: dict[int, str] | None = None
    sha256: str | None = None
    # Instead of ``dirs``: every dir whose path holds this substring, too many to list
    # (``Candidates(many_dirs_later=True)``); read in path order by ``find``.
    dirs_holding: str | None = None


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
        regex = compile_glob(glob)
        return PathPattern(kind, glob, regex.fullmatch)
    if kind == "name":
        if "/" in value or not value:
            raise UsageError(f"--name takes a basename without '/', not {value!r}")
        return PathPattern(kind, value, lambda p: p.rpartition("/")[2] == value)
    if kind == "contains":
        if not value:
            raise UsageError("--contains needs at least one character")
        return PathPattern(kind, value, lambda p: value in p)
    if kind == "regex":
        compiled = compile_regex(value, f"--regex {value!r}")
        return PathPattern(kind, value, compiled.search)
    if not DIGEST.fullmatch(value):
        raise UsageError(f"--digest {value!r} is not a digest like sha256:<64 hex digits>")
    return PathPattern(kind, value, lambda _p: True)


def is_glob(value: str) -> bool:
    return any(c in GLOB_CHARS for c in value)


def compile_glob(glob: str) -> Regex:
    """A path glob compiled to match in time linear in the path (see regex.py)."""
    return compile_regex(glob_regex(glob), f"glob {glob!r}")


def glob_regex(glob: str) -> str:
    """A path glob as an RE2 regex: ``*`` and ``?`` stay within one path segment, ``**``
    crosses them (``/**/`` also matches a single ``/``), ``[abc]``/``[!abc]`` are character
    classes of one segment's characters."""
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
            out.append(_segment_class(body[1:] if negate else body, negate))
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _segment_class(members: str, negate: bool) -> str:
    """A glob's ``[members]`` (``[!members]`` with ``negate``) as a regex class that never
    matches ``/`` (RE2 has no look-ahead to say so: a range across ``/`` is cut in two)."""
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(members):
        if members[i + 1 : i + 2] == "-" and i + 2 < len(members):
            ranges.append((members[i], members[i + 2]))
            i += 3
        else:
            ranges.append((members[i], members[i]))
            i += 1
    if any(low > high for low, high in ranges):
        raise UsageError(f"glob class [{members}]: a range runs backwards (z-a); write a-z")
    if negate:
        ranges.append(("/", "/"))
    else:
        below, above = chr(ord("/") - 1), chr(ord("/") + 1)
        ranges = [
            cut
            for low, high in ranges
            for cut in ((low, min(high, below)), (max(low, above), high))
            if cut[0] <= cut[1]
        ]
    if not ranges:
        return r"[^\x00-\x{10ffff}]"  # only "/": a class nothing in a segment matches
    body = "".join(
        _in_class(low) + ("-" + _in_class(high) if high != low else "") for low, high in ranges
    )
    return f"[^{body}]" if negate else f"[{body}]"


def _in_class(c: str) -> str:
    return "\\" + c if c in "\\^[]-" else c


def _glob_literals(glob: str) -> list[str]:
    """The literal runs of a glob: ``/usr/*/kube*`` → ``/usr/``, ``/kube``."""
    return [run for run in re.split(r"\*+|\?|\[[!^]?\]?[^]]*\]", glob) if run]


def regex_literal(pattern: str) -> str:
    """The longest run of characters every match of ``pattern`` (RE2 syntax) must contain ('' if
    none), read from the pattern's top level: what is inside a group, a class, an escape other
    than an escaped punctuation mark, or under a quantifier that allows none, is not counted."""
    if _FLAGS.search(pattern) or "\\Q" in pattern:
        # Under (?i) the literal's case is not what matches; after (?s) a quantifier may apply
        # to more than the character before; \Q…\E quotes what looks like syntax.
        return ""
    best = run = ""
    depth = i = 0
    while i < len(pattern):
        c, literal = pattern[i], ""
        if c == "\\":
            escaped = pattern[i + 1 : i + 2]
            i = _escape_end(pattern, i)
            literal = escaped if escaped and not escaped.isalnum() else ""
        elif c == "[":
            i = _class_end(pattern, i)
        else:
            i += 1
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            elif c == "|" and depth == 0:
                return ""  # alternatives: no run is in every match
            elif c in "*?" or (c == "{" and (repeat := _REPEAT.match(pattern, i - 1))):
                run = run[:-1]  # x* x? x{0,n}: the character before may be absent
                i = repeat.end() if c == "{" and repeat else i
            elif c not in ".^$+":
                literal = c
        if literal and depth == 0:
            run += literal
        else:
            best, run = max(best, run, key=len), ""
    return max(best, run, key=len)


_FLAGS = re.compile(r"\(\?[imsU-]*(?:i|\))")  # (?i) (?si:...) (?s)
_REPEAT = re.compile(r"\{\d+(?:,\d*)?\}")  # x{2} x{2,} x{2,5}; another "{" is a literal


def _escape_end(pattern: str, start: int) -> int:
    """Where the escape at ``start`` ends: ``\\.``, ``\\d``, ``\\x41``, ``\\x{263a}``, ``\\pL``,
    ``\\p{Greek}``, ``\\123``."""
    kind, i = pattern[start + 1 : start + 2], start + 2
    if kind in ("x", "p", "P") and pattern[i : i + 1] == "{":
        close = pattern.find("}", i)
        return close + 1 if close != -1 else len(pattern)
    if kind == "x":
        return i + 2
    if kind in ("p", "P"):
        return i + 1
    while kind.isdigit() and i < len(pattern) and i < start + 4 and pattern[i] in "01234567":
        i += 1
    return i


def _class_end(pattern: str, start: int) -> int:
    """Where the character class opened at ``start`` ends (``[]a]``, ``[^]a]``, ``[[:alpha:]]``,
    ``[\\]]``)."""
    i = start + 1
    i += pattern[i : i + 1] == "^"
    i += pattern[i : i + 1] == "]"
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
        elif pattern.startswith("[:", i) and (close := pattern.find(":]", i + 2)) != -1:
            i = close + 2
        elif pattern[i] == "]":
            return i + 1
        else:
            i += 1
    return len(pattern)


# --- SQL candidates ------------------------------------------------------------------------------


class Candidates:
    """Looks up the interned dirs and names a pattern can match.

    With ``many_dirs_later`` (a limit may stop the query early), on SQLite, a substring held by
    more than MANY_DIRS dirs makes a ``Branch(dirs_holding=...)`` instead of a list of them.
    """

    def __init__(self, reader: Reader, many_dirs_later: bool = False) -> None:
        self.reader = reader
        self.many_dirs_later = many_dirs_later and reader.dialect == "sqlite"

    def branches(self, pattern: PathPattern) -> list[Branch]:
        if pattern.kind == "digest":
            return [Branch(sha256=pattern.text)]
        if pattern.kind == "name":
            return [Branch(names=self._equal("names", pattern.text))]
        if pattern.kind == "contains":
            return self._contains(pattern.text)
        if pattern.kind == "regex":
            literal = regex_literal(pattern.text)
            return self._contains(literal) if literal else [Branch()]
        if pattern.kind == "glob":
            return [self._glob(pattern.text)]
        directory, _, name = pattern.text.rpartition("/")
        return [
            Branch(dirs=self._equal("dirs", directory or "/"), names=self._equal("names", name))
        ]

    def _glob(self, glob: str) -> Branch:
        """Narrow by the directory and by the basename, each where the glob pins it down."""
        directory, _, name = glob.rpartition("/")
        directory = directory or "/"
        # "**" in the basename crosses directories: the entry's own dir is then anything below.
        one_segment = "**" not in name
        literal_name = bool(name) and one_segment and not is_glob(name)
        names = self._equal("names", name) if literal_name else None
        if one_segment and not is_glob(directory):
            # Every match sits right in this directory: its entries are few enough to check.
            return Branch(dirs=self._equal("dirs", directory), names=names)
        if names is None and one_segment and any(c not in "*?" for c in name):
            regex = compile_glob(name)
            names = self._matching("names", _glob_superset(name), regex.fullmatch)
        literal = max(_glob_literals(directory), key=len, default="").strip("/")
        dirs = None
        if literal and one_segment and "**" not in directory:
            # The entry's dir is one the directory glob matches whole.
            regex = compile_glob(directory)
            dirs = self._matching("dirs", "*" + _escape_glob(literal) + "*", regex.fullmatch)
        elif literal and names is None:
            # With "**" the dir holds the literal, or is below one that does.
            dirs = self._substring("dirs", literal)
        return Branch(dirs=dirs, names=names)

    def _contains(self, substring: str) -> list[Branch]:
        dirs = (
            self._substring_unless_many("dirs", substring, MANY_DIRS)
            if self.many_dirs_later
            else self._substring("dirs", substring)
        )
        found = [Branch(dirs=dirs) if dirs is not None else Branch(dirs_holding=substring)]
        if "/" not in substring:
            found.append(Branch(names=self._substring("names", substring)))
            return found
        # Across the join: "…/bin/kub" is a dir ending in "…/bin" and a name starting "kub".
        head, _, tail = substring.rpartition("/")
        names = (
            self._matching("names", _escape_glob(tail) + "*", lambda n: n.startswith(tail))
            if tail
            else None
        )
        dirs = (
            self._matching("dirs", "*" + _escape_glob(head), lambda d: d.endswith(head))
            if head
            else None
        )
        found.append(Branch(dirs=dirs, names=names))
        return found

    def _equal(self, table: Table, value: str) -> dict[int, str]:
        column = COLUMN[table]
        return dict(
            self.reader.rows(f"SELECT id, {column} FROM {table} WHERE {column} = ?", [value])
        )

    def _substring(self, table: Table, substring: str) -> dict[int, str]:
        return self._matching(table, "*" + _escape_glob(substring) + "*", lambda s: substring in s)

    def _substring_unless_many(
        self, table: Table, substring: str, most: int
    ) -> dict[int, str] | None:
        """``_substring``, or None when more than ``most`` rows may hold it."""
        sql, param = self._matching_sql(table, "*" + _escape_glob(substring) + "*")
        rows = self.reader.rows(f"{sql} LIMIT {most + 1}", [param])
        return None if len(rows) > most else {i: value for i, value in rows if substring in value}

    def _matching(self, table: Table, glob: str, check: Callable[[str], object]) -> dict[int, str]:
        """``table`` rows (id: text) matching the SQLite-style ``glob`` (a superset), then
        ``check``."""
        sql, param = self._matching_sql(table, glob)
        return {i: value for i, value in self.reader.rows(sql, [param]) if check(value)}

    def _matching_sql(self, table: Table, glob: str) -> tuple[str, str]:
        """The SELECT of ``table`` rows (id, text) matching ``glob``, and its one parameter."""
        column = COLUMN[table]
        if self.reader.dialect == "sqlite" and _longest_literal(glob) >= TRIGRAM:
            # The FTS5 trigram table answers GLOB from its index (case-sensitive).
            sql = f"SELECT rowid, {column} FROM {table}_fts WHERE {column} GLOB ?"
            param = glob
        elif self.reader.dialect == "sqlite":
            sql = f"SELECT id, {column} FROM {table} WHERE {column} GLOB ?"
            param = glob
        else:
            # pg_trgm's GIN indexes are on "path || '/'" and "'/' || name" (migration 0002).
            expression = PG_TRIGRAM_EXPRESSION[table]
            sql = f"SELECT id, {column} FROM {table} WHERE {expression} LIKE ? ESCAPE '\\'"
            like = _glob_to_like(glob)
            param = like + "/" if table == "dirs" else "/" + like
        return sql, param


Table = Literal["dirs", "names"]
COLUMN: dict[Table, str] = {"dirs": "path", "names": "name"}
PG_TRIGRAM_EXPRESSION: dict[Table, str] = {"dirs": "path || '/'", "names": "'/' || name"}


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
