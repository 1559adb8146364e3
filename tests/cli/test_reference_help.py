"""docs/reference.md shows every command's ``--help`` as the command prints it."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from enlace.cli import parser

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"
_BLOCK = re.compile(r"```text\n(usage: enlace([^\[\n]*?) \[-h\].*?)```", re.S)


def _commands(command: argparse.ArgumentParser, words: str = "") -> Iterator[tuple[str, str]]:
    """``(words, help text)`` for a parser and each of its subcommands, depth first."""
    yield words, command.format_help()
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{words} {name}".strip())


def test_every_command_is_shown_and_every_shown_help_is_current(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal's width
    monkeypatch.delenv("ENLACE_TOKEN", raising=False)  # its value would show as a default
    text = REFERENCE.read_text(encoding="utf-8")
    shown = {match.group(2).strip(): match.group(1) for match in _BLOCK.finditer(text)}
    assert shown == dict(_commands(parser()))
