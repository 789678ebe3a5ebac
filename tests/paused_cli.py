"""``layerindex`` as a subprocess that stops at a named point of a schema change, for a test to
kill it there: ``python paused_cli.py POINT MARK ARGS…`` touches the file MARK on reaching
POINT, then sleeps until killed (SIGTERM ends the sleep as it would end the work).

POINT: ``rename_table`` (a migration that copies a table: the copy made, the old table
dropped, not yet renamed) or ``head_statements`` (half of a new SQLite index's tables made).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from importlib import import_module
from pathlib import Path
from typing import Any


def pause(mark: Path) -> None:
    mark.touch()
    time.sleep(600)


def paused_before(method: Callable[..., Any], mark: Path) -> Callable[..., Any]:
    def paused(*args: Any, **kwargs: Any) -> Any:
        pause(mark)
        return method(*args, **kwargs)

    return paused


class PausedHalfWay:
    """The head schema's statements, with a pause after half of them."""

    def __init__(self, statements: list[str], mark: Path) -> None:
        self.statements, self.mark = statements, mark

    def __iter__(self) -> Iterator[str]:
        half = len(self.statements) // 2
        yield from self.statements[:half]
        pause(self.mark)
        yield from self.statements[half:]


def main() -> None:
    point, mark, *args = sys.argv[1:]
    if point == "rename_table":
        from alembic.operations import Operations

        Operations.rename_table = paused_before(Operations.rename_table, Path(mark))  # type: ignore[method-assign]
    elif point == "head_statements":
        head = import_module("layerindex.migrations.sqlite_head")
        head.STATEMENTS = PausedHalfWay(list(head.STATEMENTS), Path(mark))
    else:
        raise SystemExit(f"unknown point {point}")
    from layerindex.cli.main import cli

    cli(args, prog_name="layerindex")


if __name__ == "__main__":
    main()
