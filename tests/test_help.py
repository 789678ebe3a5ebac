"""Every command says what it does and shows how it is used: help text on each command and
option, and an ``Examples:`` block (kept one a line by click's ``\\b``) in each --help."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from layerindex.cli.main import cli


def commands(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from commands(sub, (*path, name))


COMMANDS = list(commands(cli, ()))


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def test_every_command_is_seen() -> None:
    assert {("find",), ("db", "upgrade"), ("crawl",), ()} <= set(COMMANDS)
    assert len(COMMANDS) == 14


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(("layerindex", *p)))
def test_every_command_and_option_has_help_and_examples(path: tuple[str, ...]) -> None:
    command = command_at(path)
    assert command.help and command.help.strip(), path
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help and param.help.strip(), (path, param.opts)
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    _, examples = result.output.split("\n  Examples:\n")
    lines = examples.splitlines()
    assert lines, path
    for line in lines:  # each example on its own line, as written: not rewrapped by click
        assert line.startswith("    layerindex "), (path, line)
        assert " ".join(path) in line, (path, line)  # an example of this command
