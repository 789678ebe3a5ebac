"""The ``layerindex`` command. Each command parses options, makes one library call, formats."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import click

from layerindex.errors import DatabaseError, LayerIndexError
from layerindex.output import echo, output_options

if TYPE_CHECKING:
    from layerindex.index.database import Reader
    from layerindex.index.store import Writer
    from layerindex.reference import Reference
    from layerindex.registry.client import RegistryClient

P = ParamSpec("P")
R = TypeVar("R")

EXIT_NOT_FOUND = 1
EXIT_ERROR = 2
EXIT_GATE_FAILED = 1  # layers --fail-on: a rule failed (dive --ci exits 1)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    echo(f"Error: {message}", err=True)
    sys.exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd stopping a timer's job, a timeout, a container's end), raised in the
    main thread like Ctrl-C so that a run leaves as cleanly: its layer rolled back, its walker
    processes stopped, its run recorded as interrupted."""


def _terminate(_signum: int, _frame: object) -> NoReturn:
    raise Terminated


def handle_errors(function: Callable[P, R], *, writes_layers: bool = False) -> Callable[P, R]:
    """Every LayerIndexError becomes ``Error: …`` and exit 2: a user never sees a traceback.
    Ctrl-C and SIGTERM end a command cleanly, with 130 and 143 (128 + the signal). Only a
    command that ``writes_layers`` says that nothing of an unfinished layer was kept."""
    kept = "; nothing of an unfinished layer was kept" if writes_layers else ""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        in_main = threading.current_thread() is threading.main_thread()  # signal's rule
        previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
        try:
            return function(*args, **kwargs)
        except LayerIndexError as exc:
            fail(str(exc))
        except Terminated:
            fail(f"terminated{kept}", 128 + signal.SIGTERM)
        except KeyboardInterrupt:
            fail(f"interrupted{kept}", 128 + signal.SIGINT)
        except BrokenPipeError:
            # `layerindex ls … | head`: the reader left; that is not an error.
            sys.stderr.close()
            sys.exit(0)
        except DatabaseError as exc:
            fail(f"{exc}{kept}: run the command again once the database works")
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def handle_layer_errors(function: Callable[P, R]) -> Callable[P, R]:
    """``handle_errors`` for the commands that write layers (index, crawl)."""
    return handle_errors(function, writes_layers=True)


class Context:
    def __init__(self, db_url: str | None) -> None:
        self._db_url = db_url

    @property
    def db_url(self) -> str:
        from layerindex.index.database import database_url

        return database_url(self._db_url)

    def writer(self) -> Writer:
        """The index's writer, for the commands that write (a new database is made)."""
        from layerindex.index.database import open_database
        from layerindex.index.store import Writer

        writer = Writer(open_database(self.db_url))
        # Pooled connections close with the command, not whenever the collector gets to them.
        click.get_current_context().call_on_close(writer.dispose)
        return writer

    def reader(self, *, find_messages: bool = False) -> Reader:
        """The index, read-only, for the commands that only read: a database that does not
        exist is an error (never made empty), a SQLite file is read through the stdlib
        (SQLAlchemy is never imported). Closed with the command."""
        from layerindex.index.database import open_reader

        reader = open_reader(self.db_url, find_messages=find_messages)
        click.get_current_context().call_on_close(reader.close)
        return reader


pass_context = click.make_pass_decorator(Context)


def examples(*commands: str) -> str:
    """A command's epilog: its examples, kept one a line (``\\b`` stops click rewrapping)."""
    return "\b\nExamples:\n" + "\n".join(f"  {command}" for command in commands)


def _imports_done() -> None:
    """Hide what start-up made (modules, classes: ~60k objects, every one alive to the end)
    from the garbage collector: its full collections during a crawl, and the ones the
    interpreter runs at exit, walk them all each time (``layerindex index`` of a 62,573-entry
    layer: 0.15 s of CPU and 0.1 s of wall in 1.7 s; see benchmarks/RESULTS.md)."""
    gc.freeze()


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=examples(
        "layerindex index alpine:3.20",
        "layerindex find /usr/bin/kubectl",
        "layerindex --db postgresql+psycopg://user@dbhost/layerindex crawl --worker",
    ),
)
@click.option(
    "--db",
    metavar="URL",
    help="SQLAlchemy database URL, or a SQLite file's path [env LAYERINDEX_DB; default "
    "$XDG_DATA_HOME/layerindex/index.db].",
)
@click.option("-v", "--verbose", count=True, help="Log progress (-v) and HTTP requests (-vv).")
@click.version_option(package_name="layerindex")
@click.pass_context
def cli(ctx: click.Context, db: str | None, verbose: int) -> None:
    """Which layer of which container image holds a file, without pulling images."""
    logger = logging.getLogger("layerindex")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    levels = {0: logging.WARNING, 1: logging.INFO}
    logger.setLevel(levels.get(verbose, logging.DEBUG))
    ctx.obj = Context(db)


class _StderrHandler(logging.Handler):
    """The library's log on stderr: warnings always (a Docker Hub rate limit running low, an
    unreadable credentials file), progress with -v, HTTP requests with -vv."""

    def emit(self, record: logging.LogRecord) -> None:
        label = "Warning" if record.levelno >= logging.WARNING else record.levelname.lower()
        echo(f"{label}: {record.getMessage()}", err=True)  # the current stderr, always


def _client(insecure: Iterable[str], **options: Any) -> RegistryClient:
    """A registry client with the user's credentials and insecure registries; ``options``
    go to RegistryClient (tests give it a clock)."""
    from layerindex.registry.client import RegistryClient
    from layerindex.registry.credentials import default_keychain

    env_insecure = os.environ.get("LAYERINDEX_INSECURE_REGISTRIES", "")
    hosts = {h.strip() for h in (*insecure, *env_insecure.split(",")) if h.strip()}
    return RegistryClient(keychain=default_keychain(), insecure=hosts, **options)


insecure_option = click.option(
    "--insecure-registry",
    "insecure",
    multiple=True,
    metavar="HOST[:PORT]",
    help="Use plain HTTP for this registry (repeatable; env LAYERINDEX_INSECURE_REGISTRIES). "
    "Loopback registries always may.",
)
platform_option = click.option(
    "--platform",
    default="linux/amd64",
    show_default=True,
    help="os/arch[/variant] to pick from a multi-platform image, or 'all'.",
)
hash_option = click.option("--hash-files", is_flag=True, help="Record each regular file's sha256.")


def _parse_refs(texts: Iterable[str]) -> list[Reference]:
    from layerindex.reference import parse_reference

    return [parse_reference(t) for t in texts]


@cli.command(
    epilog=examples(
        "layerindex index alpine:3.20 debian:12",
        "layerindex index --platform all --hash-files ghcr.io/org/app:1.4",
    )
)
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@platform_option
@insecure_option
@hash_option
@pass_context
@handle_layer_errors
def index(
    context: Context,
    refs: tuple[str, ...],
    platform: str,
    insecure: tuple[str, ...],
    hash_files: bool,
) -> None:
    """Index images now: fetch each layer once, record every path.

    Prints one line per image: reference, manifest digest, platform, layers indexed / already
    known / skipped / failed, entries. An image already fully indexed costs one HEAD request
    (not counted as a pull by Docker Hub) and shows as unchanged. Exits 1 if any image failed
    (the others are indexed).
    """
    from layerindex.crawl.crawler import Crawler

    references = _parse_refs(refs)  # a malformed reference fails before any network call
    failed = False
    with contextlib.ExitStack() as held:

        def open_index() -> Writer:
            """The index's writer, under the crawl lock: opened when the first image is
            recorded, so that SQLAlchemy loads while that image's first layers walk."""
            from layerindex.crawl.crawler import worker_name

            writer = context.writer()
            held.enter_context(writer.crawl_lock(worker_name()))
            _imports_done()
            return writer

        crawler = Crawler(
            _client(insecure),
            open_index,
            db_url=context.db_url,
            platform=platform,
            hash_files=hash_files,
            exclusive=True,
        )
        for ref in references:
            outcomes = crawler.index(ref, incremental=True)
            from layerindex.crawl.progress import image_line  # imports SQLAlchemy: not before

            for outcome in outcomes:
                echo(image_line(outcome))
                for error in outcome.errors:
                    echo(f"Error: {error}", err=True)
                failed = failed or not outcome.ok
        crawler.store.analyze()
    if failed:
        click.echo(
            "Nothing of a failed layer was kept; the next `layerindex index` retries it.",
            err=True,
        )
        sys.exit(EXIT_NOT_FOUND)


FIND_COLUMNS = (
    "image",
    "manifest_digest",
    "platform",
    "layer_index",
    "layer_digest",
    "path",
    "size",
    "type",
    "mode",
    "link_target",
    "state",
    "changed_by_layer",
    "sha256",
)


FIND_TYPES = ("file", "dir", "symlink", "hardlink", "char", "block", "fifo")


@cli.command(
    epilog=examples(
        "layerindex find /usr/bin/kubectl",
        "layerindex find '/usr/*/bin/kube*' --repo bitnami/kubectl",
        "layerindex find --name kubectl --all-layers --json",
        "layerindex find --contains site-packages/requests --limit 20",
    )
)
@click.argument("path", required=False)
@click.option("--exact", is_flag=True, help="PATH is a literal path even if it holds * ? [.")
@click.option("--name", metavar="BASENAME", help="Entries with this basename, in any directory.")
@click.option("--contains", metavar="TEXT", help="Paths containing TEXT.")
@click.option(
    "--regex",
    metavar="REGEX",
    help="Paths a regular expression matches (RE2: Python's syntax without backreferences "
    "or look-around).",
)
@click.option(
    "--digest", metavar="sha256:HEX", help="Files with this content (indexed with --hash-files)."
)
@click.option("--image", "image_refs", multiple=True, metavar="REF", help="Only these images.")
@click.option("--repo", "repos", multiple=True, metavar="REPO", help="Only these repositories.")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="Only this platform.")
@click.option(
    "--type", "types", multiple=True, type=click.Choice(FIND_TYPES), help="Only this type."
)
@click.option(
    "--min-size", type=click.IntRange(0), metavar="BYTES", help="Only entries this big or bigger."
)
@click.option(
    "--max-size", type=click.IntRange(0), metavar="BYTES", help="Only entries this big or smaller."
)
@click.option("--limit", type=click.IntRange(1), metavar="N", help="At most N rows.")
@click.option(
    "--all-layers", is_flag=True, help="Every layer's entry, with what later layers did to it."
)
@output_options
@pass_context
@handle_errors
def find(
    context: Context,
    path: str | None,
    exact: bool,
    name: str | None,
    contains: str | None,
    regex: str | None,
    digest: str | None,
    image_refs: tuple[str, ...],
    repos: tuple[str, ...],
    platform: str | None,
    types: tuple[str, ...],
    min_size: int | None,
    max_size: int | None,
    limit: int | None,
    all_layers: bool,
    output_format: str,
) -> None:
    """Find PATH (a path, or a glob: * and ? within a directory, ** across) in every indexed image.

    By default each image's final filesystem, what a container started from it sees. With
    --all-layers every layer's entry, STATE 'present', 'overwritten' (a later layer wrote the
    same path) or 'deleted' (a whiteout, an opaque directory, or its directory deleted or
    replaced by a later layer). Exits 0 when found, 1 when not, 2 on error.
    """
    from layerindex.index.find import FindFilters
    from layerindex.index.find import find as find_rows
    from layerindex.index.patterns import Kind, is_glob, parse
    from layerindex.layer.entries import EntryType
    from layerindex.output import human_size, octal_mode, short_digest, write_rows

    given: dict[Kind, str | None] = {
        "name": name,
        "contains": contains,
        "regex": regex,
        "digest": digest,
    }
    chosen = [(kind, value) for kind, value in given.items() if value is not None]
    if path is not None:
        chosen.insert(0, ("glob" if is_glob(path) and not exact else "exact", path))
    if len(chosen) != 1:
        raise click.UsageError("give one of PATH, --name, --contains, --regex or --digest")
    kind, value = chosen[0]
    pattern = parse(kind, value)
    filters = FindFilters(
        image_refs=_parse_refs(image_refs),
        repos=repos,
        platform=platform,
        types=[EntryType(t) for t in types],
        min_size=min_size,
        max_size=max_size,
        all_layers=all_layers,
        limit=limit,
    )
    shown = ("image", "platform", "layer_index", "layer_digest", "type", "size", "mode")
    written = write_rows(
        (
            _with_state_text(row)
            for row in find_rows(context.reader(find_messages=True), pattern, filters)
        ),
        output_format,
        FIND_COLUMNS,
        table_columns=(*shown, "state_text", "path") if all_layers else (*shown, "path"),
        formatters={"layer_digest": short_digest, "size": human_size, "mode": octal_mode},
    )
    if not written:
        echo(f"{pattern.describe()}: not found in any indexed image", err=True)
        sys.exit(EXIT_NOT_FOUND)


def _default_image_list() -> Path:
    """data/ sits at the top level (the design card) and ships in the wheel as layerindex.data.
    (importlib.resources is imported here: find starts faster without it.)"""
    from importlib.resources import files

    return Path(str(files("layerindex.data").joinpath("images.txt")))


def _with_state_text(row: dict[str, Any]) -> dict[str, Any]:
    by = row["changed_by_layer"]
    return {**row, "state_text": row["state"] + (f" by layer {by}" if by is not None else "")}


@cli.command(epilog=examples("layerindex images", "layerindex images --csv > images.csv"))
@output_options
@pass_context
@handle_errors
def images(context: Context, output_format: str) -> None:
    """The indexed images."""
    from layerindex.index.images import Finder
    from layerindex.output import short_digest, write_rows

    write_rows(
        (asdict(image) for image in Finder(context.reader()).images()),
        output_format,
        ("image", "manifest_digest", "platform", "layers", "entries", "indexed_at"),
        formatters={"manifest_digest": short_digest},
    )


image_platform_option = click.option(
    "--platform",
    metavar="OS/ARCH[/VARIANT]",
    help="Which image of a multi-platform reference (one must be picked when several are indexed).",
)
LAYER_COLUMNS = (
    "image",
    "platform",
    "layer_index",
    "layer_digest",
    "media_type",
    "size",
    "uncompressed_size",
    "entries",
    "added_bytes",
    "wasted_bytes",
    "created_by",
    "status",
)


@cli.command(
    epilog=examples(
        "layerindex layers alpine:3.20",
        "layerindex layers --json debian:12",
        "layerindex layers app:1 --fail-on lowest-efficiency=0.9,highest-wasted-bytes=20MB",
    )
)
@click.argument("ref")
@image_platform_option
@click.option(
    "--files",
    "top",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    metavar="N",
    help="List the N paths that waste the most bytes (0: none).",
)
@click.option(
    "--fail-on",
    metavar="RULE=VALUE,...",
    help="Exit 1 when a rule fails, as dive --ci: lowest-efficiency=0.9, "
    "highest-wasted-bytes=20MB, highest-user-wasted-percent=0.1 (a fraction).",
)
@output_options(json_help="One JSON object: the layers, the image's sizes, waste, efficiency.")
@pass_context
@handle_errors
def layers(
    context: Context,
    ref: str,
    platform: str | None,
    top: int,
    fail_on: str | None,
    output_format: str,
) -> None:
    """The layers of an indexed image, base first, and how much of them is wasted.

    Per layer: compressed and uncompressed size, entries, bytes of regular files it adds, bytes
    of its files that the final filesystem hides (WASTED: overwritten, deleted, under an opaque
    or deleted directory), the history command that made it. Then, on stderr, the image's
    sizes (file bytes, tar bytes, compressed bytes), wasted bytes, the share of them in the
    bytes added above the base layer, dive's efficiency score, and the paths that waste the
    most. --nl and --csv print the layers only.
    """
    from layerindex.analysis import layer_report, parse_gate, summary_lines
    from layerindex.index.images import Finder
    from layerindex.output import human_size, short_digest, write_json, write_rows

    rules = parse_gate(fail_on) if fail_on is not None else []
    finder = Finder(context.reader())
    (reference,) = _parse_refs([ref])
    report = layer_report(finder, finder.image(reference, platform), top)
    if output_format == "json":
        write_json(
            {
                "image": report.image.reference,
                "manifest_digest": report.image.digest,
                "platform": report.image.platform,
                "layers": [{c: row[c] for c in LAYER_COLUMNS} for row in report.layers],
                "files_bytes": report.files_bytes,
                "tar_bytes": report.tar_bytes,
                "compressed_bytes": report.compressed_bytes,
                "wasted_bytes": report.wasted_bytes,
                "user_wasted_ratio": report.user_wasted_ratio,
                "efficiency": report.efficiency,
                "inefficient_files": [
                    {"path": f.path, "copies": f.copies, "wasted_bytes": f.wasted_bytes}
                    for f in report.inefficient_files
                ],
            }
        )
    else:
        write_rows(
            report.layers,
            output_format,
            LAYER_COLUMNS,
            table_columns=(*LAYER_COLUMNS[1:-2], "status", "created_by"),  # platform to wasted
            formatters={
                "layer_digest": short_digest,
                **dict.fromkeys(
                    ("size", "uncompressed_size", "added_bytes", "wasted_bytes"), human_size
                ),
            },
        )
        for line in summary_lines(report):
            echo(line, err=True)
    failures = [(rule.name, rule.failure(report)) for rule in rules]
    for name, failure in failures:
        echo(f"FAIL: {name}: {failure}" if failure else f"PASS: {name}", err=True)
    if any(failure for _, failure in failures):
        sys.exit(EXIT_GATE_FAILED)


@cli.command(
    name="ls",
    epilog=examples(
        "layerindex ls alpine:3.20 /etc",
        "layerindex ls -l --layer 1 debian:12 /usr/bin",
        "layerindex ls --tree alpine:3.20 /usr/share",
    ),
)
@click.argument("target", metavar="LAYER_DIGEST|REF")
@click.argument("prefix", required=False, default="/", metavar="[PATH_PREFIX]")
@click.option("--layer", metavar="N|DIGEST", help="One layer of the image: position or digest.")
@click.option("-l", "long_format", is_flag=True, help="Long format: mode, owner, size, layer.")
@click.option("--tree", is_flag=True, help="An indented tree, as tree(1) draws it.")
@image_platform_option
@output_options
@pass_context
@handle_errors
def ls(
    context: Context,
    target: str,
    prefix: str,
    layer: str | None,
    long_format: bool,
    tree: bool,
    platform: str | None,
    output_format: str,
) -> None:
    """List an image's final filesystem (whiteouts applied), one of its layers (--layer), or a
    layer by digest (its own entries, whiteouts included). Exits 1 when nothing is at
    PATH_PREFIX, 2 on an error."""
    from layerindex.index.images import Finder
    from layerindex.layer.entries import query_path
    from layerindex.output import human_size, octal_mode, write_rows, write_tree

    if tree and output_format != "table":
        raise click.UsageError("--tree draws text; leave out --json, --nl and --csv")
    finder = Finder(context.reader())
    path_prefix = query_path(prefix)
    base = ("type", "mode", "uid", "gid", "size", "path", "link_target", "sha256")
    if target.startswith("sha256:"):
        if layer is not None:
            raise click.UsageError("--layer picks a layer of an image REF")
        rows = finder.ls_layer(target, path_prefix)
        columns: tuple[str, ...] = base
    else:
        (reference,) = _parse_refs([target])
        rows = finder.ls_image(finder.image(reference, platform), path_prefix, layer)
        columns = ("image", "platform", "layer_index", *base)
    if tree:
        written = write_tree(rows, path_prefix, long_format=long_format)
    else:
        shown: tuple[str, ...] = ("type", "path", "link_target")
        if long_format:
            owner = ("mode", "owner", "size", *(("layer_index",) * ("layer_index" in columns)))
            shown = ("type", *owner, "path", "link_target")
        written = write_rows(
            (_with_owner(row) for row in rows),
            output_format,
            columns,
            table_columns=shown,
            formatters={"size": human_size, "mode": octal_mode},
        )
    if not written and path_prefix != "/":
        echo(f"{path_prefix}: not found in {target}", err=True)  # as find says it
        sys.exit(EXIT_NOT_FOUND)


def _with_owner(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "owner": f"{row['uid']}/{row['gid']}"}


@cli.command(
    name="get",
    epilog=examples(
        "layerindex get alpine:3.20 /etc/os-release",
        "layerindex get -o kubectl bitnami/kubectl:1.31 /opt/bitnami/kubectl/bin/kubectl",
    ),
)
@click.argument("ref")
@click.argument("path")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Write to FILE (via a temporary file next to it, renamed when complete) "
    "[default: stdout].",
)
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option(
    "--no-follow",
    is_flag=True,
    help="If PATH itself is a symlink, write its target text instead of following it.",
)
@click.option(
    "--platform", metavar="OS/ARCH[/VARIANT]", help="Which image of a multi-platform REF."
)
@insecure_option
@pass_context
@handle_errors
def get(
    context: Context,
    ref: str,
    path: str,
    output: Path | None,
    force: bool,
    no_follow: bool,
    platform: str | None,
    insecure: tuple[str, ...],
) -> None:
    """Download the file PATH of an indexed image, fetching only the layer that provides it.

    PATH is looked up in the image's final filesystem; symlinks are followed inside the image.
    Its size, and its sha256 when indexed with --hash-files, are checked before anything is
    written. With the sha256 the download stops once the file is read; without, the layer is
    read to its end (the last copy of a path written twice wins) and its digest checked.
    Exits 2 on any error.
    """
    from layerindex.get import get_to

    (reference,) = _parse_refs([ref])
    get_to(
        context.reader(),
        _client(insecure),
        reference,
        path,
        output=output,
        force=force,
        platform=platform,
        follow=not no_follow,
        stdout=sys.stdout.buffer,
    )


@cli.command(
    epilog=examples("layerindex inspect alpine:3.20", "layerindex inspect --config debian:12")
)
@click.argument("ref")
@image_platform_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--raw", is_flag=True, help="The stored manifest, byte for byte.")
@click.option("--config", "show_config", is_flag=True, help="The stored config, byte for byte.")
@pass_context
@handle_errors
def inspect(
    context: Context,
    ref: str,
    platform: str | None,
    as_json: bool,
    raw: bool,
    show_config: bool,
) -> None:
    """What `skopeo inspect` shows of an indexed image, from the index (no network): digest,
    the tags that name it now ("Tags here": not skopeo's RepoTags, every tag of the
    repository), created, platform, labels, env, entrypoint and cmd, layers, history."""
    from layerindex.analysis import inspect as inspect_image
    from layerindex.analysis import inspect_text
    from layerindex.index.images import Finder
    from layerindex.output import write_json

    if as_json + raw + show_config > 1:
        raise click.UsageError("give at most one of --json, --raw and --config")
    finder = Finder(context.reader())
    (reference,) = _parse_refs([ref])
    image = finder.image(reference, platform)
    if raw or show_config:
        stdout = sys.stdout.buffer
        stdout.write((image.manifest if raw else image.config).encode("utf-8"))
        stdout.flush()
        return
    data = inspect_image(finder, image)
    if as_json:
        write_json(data)
    else:
        click.echo(inspect_text(data), nl=False)  # escaped line by line


@cli.command(
    name="diff",
    epilog=examples(
        "layerindex diff alpine:3.19 alpine:3.20",
        "layerindex diff --csv app:1 app:2",
        "layerindex diff alpine:3.20 alpine:3.20 --platform linux/amd64 --platform linux/arm64",
    ),
)
@click.argument("old_ref", metavar="REF1")
@click.argument("new_ref", metavar="REF2")
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="Which image of a multi-platform reference [default: linux/amd64]; given twice, "
    "REF1's then REF2's (two platforms of one tag).",
)
@output_options
@pass_context
@handle_errors
def diff_command(
    context: Context, old_ref: str, new_ref: str, platforms: tuple[str, ...], output_format: str
) -> None:
    """Paths added, removed and changed from REF1's final filesystem to REF2's.

    Changed means another type, size, mode, owner, link target, or content (when both images
    were indexed with --hash-files). Exits 0 whether or not they differ.
    """
    from layerindex.analysis import DIFF_FIELDS, diff
    from layerindex.index.images import Finder
    from layerindex.output import write_rows

    if len(platforms) > 2:
        raise click.UsageError("give --platform once (both images) or twice (REF1's, REF2's)")
    old_platform, new_platform = (platforms * 2)[:2] if platforms else (None, None)
    finder = Finder(context.reader())
    old, new = _parse_refs([old_ref, new_ref])
    old_image, new_image = finder.image(old, old_platform), finder.image(new, new_platform)
    changed = [f"{side}_{name}" for name in DIFF_FIELDS for side in ("old", "new")]
    write_rows(
        diff(finder, old_image, new_image),
        output_format,
        ("change", "path", "details", *changed),
        table_columns=("change", "path", "details"),
    )


@cli.group(epilog=examples("layerindex db upgrade"))
def db() -> None:
    """Database schema: show the revision, upgrade."""


@db.command(
    epilog=examples(
        "layerindex db upgrade",
        "layerindex --db postgresql+psycopg://user@dbhost/layerindex db upgrade",
    )
)
@pass_context
@handle_errors
def upgrade(context: Context) -> None:
    """Upgrade the database schema to this layerindex's revision."""
    from layerindex.index.database import upgrade as upgrade_database

    before, after = upgrade_database(context.db_url)
    if before == after:
        echo(f"already at {after}")
    else:
        echo(f"upgraded {before or 'empty database'} -> {after}")


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``6h``, ``1d`` (or plain seconds) → seconds."""
    value, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
    try:
        seconds = float(value) * DURATION_UNITS[unit]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 6h or 1d") from None
    if seconds <= 0:
        raise click.BadParameter("the interval must be positive")
    return seconds


@cli.command(
    epilog=examples(
        "layerindex crawl",
        "layerindex crawl -q --images /etc/layerindex/images.txt",
        "layerindex crawl --images my-images.txt --every 6h",
        "layerindex --db postgresql+psycopg://user@dbhost/layerindex crawl --worker",
    )
)
@click.option(
    "--images",
    "images_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The image list (one reference a line; see README) [default: the list shipped in "
    "data/images.txt].",
)
@platform_option
@insecure_option
@hash_option
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=lambda: max(2, min(8, 2 * (os.cpu_count() or 1))),
    show_default="2 x cores, 2 to 8",
    help="Images and layers in flight at once.",
)
@click.option("--every", metavar="DURATION", help="Run forever: crawl, wait (e.g. 6h), again.")
@click.option("--max-runs", type=click.IntRange(1), help="With --every: stop after N runs.")
@click.option(
    "--worker",
    is_flag=True,
    help="Share the crawl with other workers on the same (PostgreSQL) database.",
)
@click.option(
    "--lease",
    metavar="DURATION",
    default="5m",
    show_default=True,
    help="With --worker: how long a killed worker's image or layer stays claimed.",
)
@click.option(
    "--give-up-after",
    metavar="DURATION",
    default="2m",
    show_default=True,
    help="Give up a registry that has answered nothing for this long: its images fail at "
    "once for the rest of the run (and are tried again by the next).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
@pass_context
@handle_layer_errors
def crawl(
    context: Context,
    images_file: Path | None,
    platform: str,
    insecure: tuple[str, ...],
    hash_files: bool,
    jobs: int,
    every: str | None,
    max_runs: int | None,
    worker: bool,
    lease: str,
    give_up_after: str,
    quiet: bool,
) -> None:
    """Keep an index of many images fresh (for cron, a systemd timer or --every).

    Each tag is checked with one HEAD request; only new digests are downloaded. Runs are
    recorded (see `layerindex runs`); a failing image or layer is retried with a growing
    back-off. A registry that does not answer (after 5 tries, a host name that does not
    exist, a TLS certificate that fails) is given up for the run: its images fail at once.
    Exits 1 if the run had failures.
    """
    from layerindex.crawl.imagelist import read_list
    from layerindex.crawl.job import CrawlJob
    from layerindex.crawl.progress import Progress

    interval = parse_duration(every) if every else None
    path = images_file or _default_image_list()
    read_list(path)  # a bad list fails now, before anything runs
    progress = Progress(quiet=quiet)
    job = CrawlJob(
        context.writer(),
        _client(insecure, give_up_after=parse_duration(give_up_after)),
        platform=platform,
        hash_files=hash_files,
        jobs=jobs,
        worker=worker,
        lease_seconds=parse_duration(lease),
        on_image=progress.image,
        on_total=progress.set_total,
        on_error=progress.error,
    )
    _imports_done()
    if interval is None:
        summary = job.run(read_list(path))
        progress.summary(summary)
        sys.exit(0 if summary.status == "ok" else EXIT_NOT_FOUND)
    job.run_forever(lambda: read_list(path), interval, max_runs=max_runs, on_run=progress.summary)


@cli.command(name="runs", epilog=examples("layerindex runs", "layerindex runs --limit 5 --json"))
@click.option(
    "--limit", type=click.IntRange(1), default=20, show_default=True, help="The N newest runs."
)
@output_options
@pass_context
@handle_errors
def runs_command(context: Context, limit: int, output_format: str) -> None:
    """Recorded crawl runs, newest first."""
    from layerindex.index.history import RUN_COLUMNS, list_runs
    from layerindex.output import human_size, write_rows

    rows = [
        {**asdict(run), "error_count": len(run.errors)}
        for run in list_runs(context.reader(), limit)
    ]
    write_rows(
        rows,
        output_format,
        RUN_COLUMNS,
        table_columns=(
            "id",
            "started_at",
            "status",
            "images",
            "images_unchanged",
            "images_failed",
            "images_deferred",
            "deferred_until",
            "layers_indexed",
            "layers_failed",
            "bytes",
            "error_count",
        ),
        formatters={"bytes": human_size},
    )


@cli.command(
    name="tags",
    epilog=examples("layerindex tags alpine", "layerindex tags docker.io/library/alpine:3.20"),
)
@click.argument("repository", metavar="REPO[:TAG]")
@output_options
@pass_context
@handle_errors
def tags_command(context: Context, repository: str, output_format: str) -> None:
    """The history of a repository's tags: each digest a tag pointed to, first and last seen."""
    from layerindex.index.history import tag_history
    from layerindex.output import short_digest, write_rows
    from layerindex.reference import parse_reference

    reference = parse_reference(repository, default_tag=None)  # no tag: every tag
    seen = tag_history(context.reader(), reference.registry, reference.repository, reference.tag)
    write_rows(
        (asdict(digest) for digest in seen),
        output_format,
        ("repository", "tag", "digest", "first_seen", "last_seen"),
        table_columns=("tag", "digest", "first_seen", "last_seen"),
        formatters={"digest": short_digest},
    )


def main() -> None:
    cli(prog_name="layerindex")
