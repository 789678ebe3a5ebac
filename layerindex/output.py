"""One output decorator for every listing command: a table by default, --json, --nl, --csv.

As in sqlite-utils' ``output_options``: data goes to stdout, rows are written as they come.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, overload

import click

P = ParamSpec("P")
R = TypeVar("R")

# Table headings where the field name is not what a person wants to read.
TITLES = {
    "layer_index": "LAYER",
    "layer_digest": "DIGEST",
    "manifest_digest": "DIGEST",
    "state_text": "STATE",
    "media_type": "MEDIA TYPE",
    "link_target": "TARGET",
    "indexed_at": "INDEXED",
    "uncompressed_size": "UNCOMPRESSED",
    "added_bytes": "ADDS",
    "wasted_bytes": "WASTED",
    "created_by": "CREATED BY",
}
# The widest a table's cell is shown, but in the last column (JSON and CSV: always whole).
MAX_CELL = 80


# What a terminal would act on instead of showing, in text strangers wrote (tar names, link
# targets, labels, env, history, tags, a registry's error text): C0 controls (ESC starts a
# sequence that can clear the screen, set the title or write the clipboard with OSC 52; CR and
# newline forge lines and rows; BEL), DEL, C1 controls (U+009B is an 8-bit CSI, U+009D an OSC),
# the bidi embeddings, overrides and isolates that show text in another order than it is
# stored ("Trojan Source"), the line and paragraph separators, and lone surrogates (a JSON
# config may hold one; no terminal can be sent it).
_UNSAFE_ABOVE_C0 = "\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff"
UNSAFE = re.compile(f"[\x00-\x1f{_UNSAFE_ABOVE_C0}]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# In JSON text, where json.dumps has written C0 controls as \u00XX already.
_UNSAFE_IN_JSON = re.compile(f"[{_UNSAFE_ABOVE_C0}]")


def terminal_text(text: str) -> str:
    """``text`` safe to show: each UNSAFE character written as ``\\xNN`` (C0 controls and DEL:
    the byte, as a stored path writes bytes that are not UTF-8, so ``\\x1b`` is that name's
    byte) or ``\\uNNNN`` (the others, whose UTF-8 takes several bytes)."""
    return UNSAFE.sub(_escaped, text) if UNSAFE.search(text) else text


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def echo(text: str, *, err: bool = False) -> None:
    """A line of text for a person (a message, an image's line) on stdout or stderr, its
    UNSAFE characters escaped: a newline in it is shown, not obeyed."""
    click.echo(terminal_text(text), err=err)


def json_text(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON that loads back exactly, with nothing a terminal acts on: the UNSAFE
    characters json.dumps leaves as they are are written as ``\\uNNNN`` escapes."""
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@overload
def output_options(function: Callable[P, R], *, json_help: str = ...) -> Callable[P, R]: ...
@overload
def output_options(*, json_help: str) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def output_options(
    function: Callable[P, R] | None = None, *, json_help: str = "One JSON array."
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Add --json / --nl / --csv / --table to a command, passed on as ``output_format``
    (``@output_options``, or ``@output_options(json_help=...)`` where --json prints more)."""
    if function is None:
        return functools.partial(output_options, json_help=json_help)

    @click.option("--json", "output_format", flag_value="json", help=json_help)
    @click.option("--nl", "output_format", flag_value="nl", help="One JSON object a line.")
    @click.option("--csv", "output_format", flag_value="csv", help="CSV with a header row.")
    @click.option(
        "--table", "output_format", flag_value="table", default=True, help="A table (default)."
    )
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return function(*args, **kwargs)

    return wrapper


def write_rows(
    rows: Iterable[dict[str, Any]],
    output_format: str,
    columns: Sequence[str],
    *,
    table_columns: Sequence[str] | None = None,
    formatters: Mapping[str, Callable[[Any], str]] | None = None,
) -> int:
    """Write ``rows`` to stdout in ``output_format``; returns how many were written.

    ``columns`` are the machine-readable fields (json, nl, csv); ``table_columns`` those a person
    sees, formatted by ``formatters``, headed by their TITLES.
    """
    out = sys.stdout
    count = 0
    if output_format == "json":
        out.write("[")
        for row in rows:
            out.write(",\n " if count else "\n ")
            out.write(json_text({c: row.get(c) for c in columns}))
            count += 1
        out.write("\n]\n" if count else "]\n")
    elif output_format == "nl":
        for row in rows:
            out.write(json_text({c: row.get(c) for c in columns}) + "\n")
            count += 1
    elif output_format == "csv":
        # CSV is data for spreadsheets and programs: exact (the csv module quotes a newline),
        # unless a person reads it on a terminal, as ls(1) shows names raw only to a pipe.
        cell = _terminal_cell if out.isatty() else _data_cell
        # With "\r\n" as its line end the writer quotes a field holding a CR (which ends a row
        # for a reader too), as it quotes one holding a newline; rows still end with "\n".
        row_text = io.StringIO()
        writer = csv.writer(row_text, lineterminator="\r\n")

        def csv_line(cells: Sequence[Any]) -> str:
            writer.writerow(cells)
            text = row_text.getvalue()[:-2] + "\n"
            row_text.seek(0)
            row_text.truncate()
            return text

        out.write(csv_line(columns))
        for row in rows:
            out.write(csv_line([cell(row.get(c)) for c in columns]))
            count += 1
    else:
        shown = list(table_columns or columns)
        fmt = formatters or {}
        cells = [[TITLES.get(c, c.upper()) for c in shown]]
        last = len(shown) - 1  # its cells pad nothing: shown whole
        for row in rows:
            texts = [terminal_text(fmt.get(c, _plain)(row.get(c))) for c in shown]
            cells.append([_shortened(t) if i < last else t for i, t in enumerate(texts)])
            count += 1
        # A table needs every row for its column widths; listings small enough to read are.
        if count:
            widths = [max(len(line[i]) for line in cells) for i in range(len(shown))]
            for line in cells:
                text = "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                out.write(text.rstrip() + "\n")
    out.flush()
    return count


def _shortened(cell: str) -> str:
    """A cell of a column that pads others, at most MAX_CELL characters: one long path must not
    push every row's next column hundreds of characters right. The middle is cut out and
    marked "…": a path's start and its name stay."""
    if len(cell) <= MAX_CELL:
        return cell
    head = (MAX_CELL - 1) // 2
    return cell[:head] + "…" + cell[len(cell) - (MAX_CELL - 1 - head) :]


def _plain(value: Any) -> str:
    return "" if value is None else str(value)


def _terminal_cell(value: Any) -> str:
    return terminal_text(_plain(value))


def _data_cell(value: Any) -> str:
    """A CSV cell as it is, but for a lone surrogate (a JSON config's "\\ud800"), which no
    UTF-8 can hold: written as JSON writes it."""
    text = _plain(value)
    return _SURROGATE.sub(_escaped, text) if _SURROGATE.search(text) else text


def short_digest(digest: Any) -> str:
    """``sha256:0123456789abcdef…`` → ``sha256:0123456789ab`` as docker and crane shorten."""
    text = _plain(digest)
    return text[:19] if text.startswith("sha256:") else text


def human_size(value: Any) -> str:
    if value is None:
        return ""
    size = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def octal_mode(value: Any) -> str:
    return "" if value is None else f"{int(value):04o}"


def write_json(value: Any) -> None:
    """One JSON document (an object, for commands that describe one thing)."""
    sys.stdout.write(json_text(value, indent=2) + "\n")
    sys.stdout.flush()


_TOTAL = "\0total\0"  # where a directory's total goes, once every file under it is read


def _ancestors_under(path: str, root: str) -> Iterator[str]:
    """The directories above ``path`` up to ``root`` (excluded), nearest first."""
    while True:
        path = path.rpartition("/")[0] or "/"
        if path == root.rstrip("/") or path == "/" or not path.startswith(root.rstrip("/")):
            return
        yield path


def write_tree(rows: Iterable[dict[str, Any]], root: str, *, long_format: bool = False) -> int:
    """Paths as tree(1) draws them under ``root``; directories a layer leaves implicit are drawn
    too. ``long_format`` puts ``[mode uid/gid size layer]`` before each name, a directory's size
    the total of the regular files under it (a hard link's data counted at its target only).
    Returns how many rows were read."""
    tree: dict[str, Any] = {}
    labels: dict[str, str] = {}
    totals: dict[str, int] = {}  # a directory's path → bytes of the files under it
    dirs = files = read = 0
    for row in rows:
        read += 1
        if long_format and row["type"] == "file" and row["link_target"] is None:
            for above in _ancestors_under(row["path"], root):
                totals[above] = totals.get(above, 0) + row["size"]
        relative = row["path"][len(root) :].strip("/") if root != "/" else row["path"][1:]
        if not relative:
            continue
        node = tree
        for part in relative.split("/"):
            node = node.setdefault(part, {})
        label = labels.get(row["path"], relative.rsplit("/", 1)[-1])
        if row["type"] == "opaque":
            label += " (opaque)"  # a directory made opaque: lower layers' contents hidden
        elif row["type"] == "whiteout":
            label += " (whiteout)"
        elif row["link_target"] is not None:
            label += f" -> {row['link_target']}"
        if long_format and row["type"] not in ("opaque", "whiteout"):
            size = _TOTAL if row["type"] == "dir" else human_size(row["size"])
            details = f"{octal_mode(row['mode'])} {row['uid']}/{row['gid']} {size}"
            if row.get("layer_index") is not None:
                details += f" L{row['layer_index']}"
            label = f"[{details}]  {label}"
        labels[row["path"]] = label
        if row["type"] == "dir":
            dirs += 1
        elif row["type"] not in ("opaque", "whiteout"):
            files += 1
    if not read and root != "/":
        return 0  # nothing at root: no tree to draw
    for path, label in labels.items():
        if _TOTAL in label:
            labels[path] = label.replace(_TOTAL, human_size(totals.get(path, 0)), 1)
    out = sys.stdout
    out.write(terminal_text(root) + "\n")
    # Depth first without recursion: a path may have thousands of components. Each stack item
    # is a directory's children still to draw, sorted and reversed, and their indent.
    stack = [(sorted(tree, reverse=True), root.rstrip("/"), tree, "")]
    while stack:
        names, path, node, indent = stack[-1]
        if not names:
            stack.pop()
            continue
        name = names.pop()
        last = not names
        child = path + "/" + name
        label = labels.get(child, name)
        out.write(f"{indent}{'└── ' if last else '├── '}{terminal_text(label)}\n")
        below = node[name]
        stack.append(
            (sorted(below, reverse=True), child, below, indent + ("    " if last else "│   "))
        )
    out.write(
        f"\n{dirs} director{'y' if dirs == 1 else 'ies'}, {files} file{'' if files == 1 else 's'}\n"
    )
    out.flush()
    return read
