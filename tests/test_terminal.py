"""What reaches a terminal: names, link targets, labels, env, history and a registry's error
text are strangers' text. Every human-readable output shows their control characters escaped
(``\\x1b``, ``\\u009b``): nothing clears the screen, sets the title, writes the clipboard or
forges a row. JSON loads back exactly; CSV is exact data (newlines quoted) except on a terminal.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from faults import FaultProxy
from images import History, directory, file, make_image, make_layer, symlink
from registry_server import RegistryServer
from test_index import Run

from layerindex.output import terminal_text

CLEAR = "\x1b[2J\x1b[H"  # clear the screen, cursor home
TITLE = "\x1b]0;pwned\x07"  # set the window title (OSC 0, ended by BEL)
CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4=\x07"  # OSC 52: put "rm -rf ~" on the clipboard
CSI_8BIT = "\x9b31m"  # C1 CSI: red, on terminals that take 8-bit controls
FORGED_ROW = "x\nfile     /etc/shadow"  # a newline: a second row of `ls`
NAMES = [
    f"/evil/{CLEAR}clear",
    f"/evil/{TITLE}title",
    f"/evil/{CLIPBOARD}clip",
    "/evil/over\rwrite",
    f"/evil/{FORGED_ROW}",
    f"/evil/{CSI_8BIT}red",
    "/evil/txt.\u202eexe",  # RIGHT-TO-LEFT OVERRIDE: shown as "txt.exe" reversed
    "/evil/line\u2028sep",
]
LINK_TARGET = f"{TITLE}target\n"
LABELS = {f"org.{CLIPBOARD}": f"value\n{CLEAR}"}
ENV = [f"PS1={TITLE}$ "]
HISTORY = [f"RUN echo {CLEAR}\rdone \ud800", History(f"CMD {CSI_8BIT}", empty_layer=True)]

HOSTILE = make_image(
    [
        make_layer(
            [
                directory("evil"),
                *(file(path, b"x") for path in NAMES),
                symlink("evil/link", LINK_TARGET),
            ]
        )
    ],
    labels=LABELS,
    env=ENV,
    history=HISTORY,
)
# What a terminal must never receive from these (a structural newline aside).
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e\u2028]")


@pytest.fixture
def hostile(registry: RegistryServer, run: Run) -> str:
    registry.push("evil/names", "1", HOSTILE)
    ref = f"{registry.host}/evil/names:1"
    result = run("index", ref)
    assert result.exit_code == 0, result.output
    return ref


def test_the_escape_form() -> None:
    # C0 and DEL as the byte (as a stored path writes a byte that is not UTF-8), the others
    # by code point; everything else, a backslash included, as it is.
    assert terminal_text("a\x1b[2J\x07\r\n\x7f\x9b\u202e\u2028\u2029\ud800 \\ é ✓") == (
        "a\\x1b[2J\\x07\\x0d\\x0a\\x7f\\u009b\\u202e\\u2028\\u2029\\ud800 \\ é ✓"
    )


def test_ls_and_tree_show_names_escaped(hostile: str, run: Run) -> None:
    result = run("ls", hostile, "/evil")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        "TYPE     PATH                                  TARGET\n"
        "dir      /evil\n"
        "file     /evil/\\x1b[2J\\x1b[Hclear\n"
        "file     /evil/\\x1b]0;pwned\\x07title\n"
        "file     /evil/\\x1b]52;c;cm0gLXJmIH4=\\x07clip\n"
        "file     /evil/line\\u2028sep\n"
        "symlink  /evil/link                            \\x1b]0;pwned\\x07target\\x0a\n"
        "file     /evil/over\\x0dwrite\n"
        "file     /evil/txt.\\u202eexe\n"
        "file     /evil/x\\x0afile     /etc/shadow\n"
        "file     /evil/\\u009b31mred\n"
    )
    result = run("ls", "--tree", hostile, "/evil")
    assert result.stdout == (
        "/evil\n"
        "├── \\x1b[2J\\x1b[Hclear\n"
        "├── \\x1b]0;pwned\\x07title\n"
        "├── \\x1b]52;c;cm0gLXJmIH4=\\x07clip\n"
        "├── line\\u2028sep\n"
        "├── link -> \\x1b]0;pwned\\x07target\\x0a\n"
        "├── over\\x0dwrite\n"
        "├── txt.\\u202eexe\n"
        "├── x\\x0afile     \n"
        "│   └── etc\n"
        "│       └── shadow\n"
        "└── \\u009b31mred\n"
        "\n"
        "0 directories, 9 files\n"
    )


def test_find_rows_cannot_be_forged(hostile: str, run: Run) -> None:
    result = run("find", "--contains", "/evil/")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(NAMES) + 1  # the heading, the names, the link
    shown = sorted(line[lines[0].index("PATH") :] for line in lines[1:])
    assert shown == sorted([terminal_text(p) for p in NAMES] + ["/evil/link"])
    assert not RAW_CONTROL.search(result.stdout)
    assert "/evil/x\\x0afile     /etc/shadow" in shown


def test_inspect_and_layers_show_config_text_escaped(hostile: str, run: Run) -> None:
    text = run("inspect", hostile).stdout
    assert (
        "Labels:\n"
        "  org.\\x1b]52;c;cm0gLXJmIH4=\\x07=value\\x0a\\x1b[2J\\x1b[H\n"
        "Env:\n"
        "  PS1=\\x1b]0;pwned\\x07$ \n"
    ) in text
    assert text.endswith(
        "History:\n"
        "  0  2023-11-14T22:13:20Z  RUN echo \\x1b[2J\\x1b[H\\x0ddone \\ud800\n"
        "  -  2023-11-14T22:13:20Z  CMD \\u009b31m\n"
    )
    assert not RAW_CONTROL.search(text)
    layers = run("layers", hostile).stdout.splitlines()
    assert layers[1].endswith("  indexed  RUN echo \\x1b[2J\\x1b[H\\x0ddone \\ud800")


def test_json_loads_back_exactly_and_carries_no_raw_controls(hostile: str, run: Run) -> None:
    for args in (["ls", hostile, "/evil", "--json"], ["find", "--contains", "/evil/", "--nl"]):
        text = run(*args).stdout
        assert not RAW_CONTROL.search(text)  # C1, bidi and separators as \uNNNN too
        rows = (
            json.loads(text) if "--json" in args else [json.loads(x) for x in text.split("\n")[:-1]]
        )
        assert sorted(r["path"] for r in rows if r["path"] != "/evil") == sorted(
            [*NAMES, "/evil/link"]
        )
        assert [r["link_target"] for r in rows if r["path"] == "/evil/link"] == [LINK_TARGET]
    text = run("inspect", hostile, "--json").stdout
    assert not RAW_CONTROL.search(text)
    data = json.loads(text)
    assert (data["labels"], data["env"]) == (LABELS, ENV)
    assert [h["created_by"] for h in data["history"]] == [HISTORY[0], f"CMD {CSI_8BIT}"]


def test_csv_is_exact_data_but_escaped_on_a_terminal(hostile: str, home: Path, run: Run) -> None:
    text = run("ls", hostile, "/evil", "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert sorted(r["path"] for r in rows if r["path"] != "/evil") == sorted([*NAMES, "/evil/link"])
    # A lone surrogate (JSON's "\ud800" in a config) has no UTF-8: written as JSON writes it.
    text = run("layers", hostile, "--csv").stdout
    (layer,) = csv.DictReader(io.StringIO(text, newline=""))
    assert layer["created_by"] == f"RUN echo {CLEAR}\rdone \\ud800"
    # A person reading CSV on a terminal gets it escaped (as ls(1) shows names raw only to
    # a pipe): a real pseudo-terminal, a real process.
    controller, terminal = pty.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "layerindex", "ls", hostile, "/evil", "--csv"],
            stdout=terminal,
            stderr=subprocess.PIPE,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        os.close(terminal)
        shown = b""
        while chunk := _read(controller):
            shown += chunk
    finally:
        os.close(controller)
    assert process.returncode == 0, process.stderr
    screen = shown.decode().replace("\r\n", "\n")
    assert not RAW_CONTROL.search(screen)
    assert ",/evil/x\\x0afile     /etc/shadow,," in screen
    assert ",/evil/link,\\x1b]0;pwned\\x07target\\x0a," in screen


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the terminal's other end is closed
        return b""


def test_registry_error_text_is_escaped(fault_proxy: FaultProxy, run: Run, home: Path) -> None:
    message = f"denied{CLEAR}\nError: {CLIPBOARD}forged"
    body = json.dumps({"errors": [{"code": "DENIED", "message": message}]}).encode()
    fault_proxy.push("evil/names", "1", HOSTILE)
    fault_proxy.status(
        "/manifests/",
        403,
        times=None,
        method="GET",
        body=body,
        headers={"Content-Type": "application/json"},
    )
    ref = f"{fault_proxy.host}/evil/names:1"
    for result in (
        run("index", ref),
        run("crawl", "--images", str(_image_list(home, ref))),
    ):
        assert result.exit_code == 1
        assert not RAW_CONTROL.search(result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.stderr
        assert "denied\\x1b[2J\\x1b[H\\x0aError: \\x1b]52;c;cm0gLXJmIH4=\\x07forged" in errors[0]


def _image_list(home: Path, ref: str) -> Path:
    path = home / "images.txt"
    path.write_text(ref + "\n")
    return path


def test_tree_of_a_path_1001_components_deep(registry: RegistryServer, run: Run) -> None:
    deep = "/".join(["d"] * 1000) + "/f"  # 2,001 bytes: a path Linux takes
    registry.push("evil/deep", "1", make_image([make_layer({deep: b"x"})]))
    ref = f"{registry.host}/evil/deep:1"
    assert run("index", ref).exit_code == 0
    result = run("ls", "--tree", ref)
    assert (result.exit_code, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[:3] == ["/", "└── d", "    └── d"]
    assert lines[1001] == " " * 4 * 1000 + "└── f"
    assert lines[-1] == "0 directories, 1 file"


def test_one_long_path_does_not_stretch_a_table(registry: RegistryServer, run: Run) -> None:
    long = "/opt/" + "x" * 195 + "/bin/tool"  # 209 characters
    image = make_image([make_layer([file(long, b"x"), symlink("opt/short", long)])])
    registry.push("evil/long", "1", image)
    ref = f"{registry.host}/evil/long:1"
    assert run("index", ref).exit_code == 0
    cut = "/opt/" + "x" * 34 + "…" + "x" * 31 + "/bin/tool"  # 80: the middle cut out
    assert (
        run("ls", ref, "/opt").stdout
        == (
            f"TYPE     PATH{' ' * 76}  TARGET\n"
            "symlink  /opt/short" + " " * 70 + f"  {long}\n"  # the last column: whole
            f"file     {cut}\n"
        )
    )
    rows = json.loads(run("ls", ref, "/opt", "--json").stdout)
    assert [r["path"] for r in rows] == ["/opt/short", long]
