"""One output decorator for every listing command: a table by default, --json, --nl, --csv.

As in sqlite-utils' ``output_options``: data goes to stdout, rows are written as they come.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

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


def output_options(function: F) -> F:
    """Add --json / --nl / --csv / --table to a command, passed on as ``output_format``."""

    @click.option("--json", "output_format", flag_value="json", help="One JSON array.")
    @click.option("--nl", "output_format", flag_value="nl", help="One JSON object a line.")
    @click.option("--csv", "output_format", flag_value="csv", help="CSV with a header row.")
    @click.option(
        "--table", "output_format", flag_value="table", default=True, help="A table (default)."
    )
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


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
            out.write(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False))
            count += 1
        out.write("\n]\n" if count else "]\n")
    elif output_format == "nl":
        for row in rows:
            out.write(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False) + "\n")
            count += 1
    elif output_format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
            count += 1
    else:
        shown = list(table_columns or columns)
        fmt = formatters or {}
        cells = [[TITLES.get(c, c.upper()) for c in shown]]
        for row in rows:
            cells.append([fmt[c](row.get(c)) if c in fmt else _plain(row.get(c)) for c in shown])
            count += 1
        # A table needs every row for its column widths; listings small enough to read are.
        if count:
            widths = [max(len(line[i]) for line in cells) for i in range(len(shown))]
            for line in cells:
                text = "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                out.write(text.rstrip() + "\n")
    out.flush()
    return count


def _plain(value: Any) -> str:
    return "" if value is None else str(value)


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
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def write_tree(rows: Iterable[dict[str, Any]], root: str, *, long_format: bool = False) -> None:
    """Paths as tree(1) draws them under ``root``; directories a layer leaves implicit are drawn
    too. ``long_format`` puts ``[mode uid/gid size layer]`` before each name."""
    tree: dict[str, Any] = {}
    labels: dict[str, str] = {}
    dirs = files = 0
    for row in rows:
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
            details = (
                f"{octal_mode(row['mode'])} {row['uid']}/{row['gid']} {human_size(row['size'])}"
            )
            if row.get("layer_index") is not None:
                details += f" L{row['layer_index']}"
            label = f"[{details}]  {label}"
        labels[row["path"]] = label
        if row["type"] == "dir":
            dirs += 1
        elif row["type"] not in ("opaque", "whiteout"):
            files += 1
    out = sys.stdout
    out.write(root + "\n")

    def draw(node: dict[str, Any], path: str, indent: str) -> None:
        names = sorted(node)
        for i, name in enumerate(names):
            last = i == len(names) - 1
            child = path.rstrip("/") + "/" + name
            out.write(f"{indent}{'└── ' if last else '├── '}{labels.get(child, name)}\n")
            draw(node[name], child, indent + ("    " if last else "│   "))

    draw(tree, root, "")
    out.write(
        f"\n{dirs} director{'y' if dirs == 1 else 'ies'}, {files} file{'' if files == 1 else 's'}\n"
    )
    out.flush()
