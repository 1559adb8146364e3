"""The chat's nickname rules: what a nick may contain, and when two nicks are one.

Two functions carry the rules:

- :func:`validate_nick` turns what a user typed after ``/nick`` into the nick
  everyone will see, or raises :class:`NickError` saying exactly what is wrong;
- :func:`nick_key` gives the key under which a nick is unique: two nicks with
  the same key read alike to a person, so only one of them may be in use.

**What a nick may contain.** After NFC normalization and stripping the
whitespace around it, a nick has 1 to :data:`MAX_NICK` characters (code points
after NFC, so ``e`` + U+0301 COMBINING ACUTE ACCENT counts once, as ``é``), and
every character is one of

- a letter or a digit of any script (``Ana``, ``José``, ``Дмитрий``, ``李雷``, ``7of9``);
- a combining mark after one of them (at most :data:`MAX_MARKS` in a row, which
  every script needs and which stops "Zalgo" text from spilling over the lines
  around it in a terminal);
- one of ``-`` ``_`` ``.`` ``'`` (:data:`NICK_PUNCTUATION`), for ``ana-maria``,
  ``j.r``, ``o'brien``.

Everything else is refused, each with its own reason (:attr:`NickError.reason`):

- spaces inside: commands take a nick as one word (``/msg ana hola``), so a
  space would make the rest of the nick read as the message;
- control, format, bidirectional-control, zero-width and other invisible
  characters, which make two different nicks look the same or reorder the text
  around them; private-use code points (no agreed look); code points that are
  unassigned in the Unicode version of this Python (``unicodedata.unidata_version``)
  and lone surrogates (not characters at all);
- punctuation other than the four above: the chat renders ``[room] nick: text``,
  so ``:``, ``[`` and ``]`` would forge a line; ``/`` starts commands, ``@``
  addresses people, ``#`` names rooms and ``,`` separates nicks in lists;
- symbols, and so emoji: most emoji need a zero-width joiner or a variation
  selector (both invisible, so both refused), which would make emoji support
  partial and surprising; their width in terminals also varies.

A nick must also contain a letter or a digit, must not start with a combining
mark, and must not mix the letters of Latin, Greek, Cyrillic, Armenian,
Cherokee or Coptic (``Nike`` with U+039D GREEK CAPITAL LETTER NU): that is how
lookalike names are made, and no real name needs it (the "moderately
restrictive" level of Unicode Technical Standard #39; ``allow_mixed_scripts``
turns the rule off). It must not start with ``guest-`` (:data:`GUEST_PREFIX`,
in any lookalike spelling): those are the names the server gives newcomers
until they choose one (:func:`guest_nick`).

**When two nicks are one.** :func:`nick_key` is the "skeleton" of Unicode
Technical Standard #39 (Security Mechanisms), made case-insensitive:

1. Unicode's compatibility caseless folding (NFKD and ``str.casefold``, twice,
   as its definition D146 says), so compatibility forms fold (fullwidth and
   mathematical letters are plain letters, the ligature U+FB01 is ``fi``) and
   case does not count (``ALICE``; ``straße`` is ``STRASSE``);
2. default-ignorable code points (zero-width characters, variation selectors,
   soft hyphens...) are dropped;
3. every character is replaced by the prototype it reads as, from Unicode's
   ``confusables.txt`` (Cyrillic U+0430 and Greek U+03BF become Latin ``a`` and
   ``o``; ``0`` becomes ``o``, ``1`` becomes ``l``, ``m`` becomes ``rn``);
4. steps 1 to 3 repeat until nothing changes (one round almost always), then
   NFKC composes the result.

So ``Alice``, ``alice``, ``Alice`` spelled with U+0410 CYRILLIC CAPITAL LETTER A,
and ``Alice`` + U+200B ZERO WIDTH SPACE have one key. The key is for comparing,
never for showing.

Case and lookalikes interact: ``confusables.txt`` pairs each case separately,
and U+0422 CYRILLIC CAPITAL LETTER TE looks like ``T`` while its lowercase
U+0442 looks like a small capital, not like ``t``. A key that ignores case must
give both the same key, so the table makes a letter and its lookalikes share a
key in *whichever* case they look alike: ``Tom`` spelled with a Cyrillic
capital te clashes with ``Tom``, and so do their lowercase forms. This stops
where it would join two letters that people type as different: ``I`` looks
like ``l``, but ``i`` must not become ``l`` (``Ian`` and ``lan`` stay
distinct); Greek capitals beta, eta, nu and upsilon look like ``B H N Y``, but
their lowercase forms look like ``ß n v u``. Mixed into a Latin nick such
letters are refused by the rule above; a nick wholly in Greek capitals that
imitates a Latin one is the gap that remains.

Case folding is Unicode's default, not Turkish: ``I`` folds to ``i``; U+0131
LATIN SMALL LETTER DOTLESS I reads as ``i``; U+0130 LATIN CAPITAL LETTER I WITH
DOT ABOVE folds to ``i`` + U+0307 COMBINING DOT ABOVE, which stays distinct
from ``i``.

**Where the confusables data comes from.** Python's standard library has no
confusables table, and the PyPI packages that ship one do not fit:
``confusable-homoglyphs`` keeps the pairs of ``confusables.txt`` without their
direction (there is no prototype to map to, so no skeleton) and answers a
different question (is a string mixed-script), ``confusables`` ships 2.7 MB of
derived data for a fuzzy matcher and has not changed since 2021, and PyICU's
``SpoofChecker`` needs ICU compiled in. The skeleton needs only the mapping
itself, so :mod:`enlace.protocol._confusables` holds it as a compact generated
table (about 25 KiB, parsed on first use), already closed under steps 1 to 3
and merged across case, so that a key takes one round.
``scripts/gen_confusables.py`` regenerates it from any ``confusables.txt``; the
module records which version it was made from (:data:`CONFUSABLES_VERSION`).
A Python with a newer Unicode than that table still gets correct, idempotent
keys; characters new to it are just compared as themselves until the table is
regenerated.

Nothing here does I/O or keeps state: the chat service keeps the map from keys
to connected users and answers ``nick_taken`` when a key is in use.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Mapping
from functools import cache

from enlace.exceptions import EnlaceError
from enlace.limits import MAX_MARKS, MAX_NICK
from enlace.protocol import _confusables

__all__ = [
    "CONFUSABLES_VERSION",
    "GUEST_PREFIX",
    "MAX_MARKS",
    "MAX_NICK",
    "NICK_PUNCTUATION",
    "NickError",
    "guest_nick",
    "is_guest_nick",
    "nick_key",
    "validate_nick",
]

NICK_PUNCTUATION = "-_.'"
"""The only punctuation a nick may contain: none of it means anything in the chat."""

GUEST_PREFIX = "guest-"
"""Start of the names the server gives newcomers; no one may choose such a name."""

CONFUSABLES_VERSION: str = _confusables.SOURCE_VERSION
"""Version of Unicode's ``confusables.txt`` that the lookalike table was made from."""

# Default_Ignorable_Code_Point, from Unicode's DerivedCoreProperties.txt (the set has
# not changed in recent versions): characters that render as nothing, whatever the font.
_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD),  # SOFT HYPHEN
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # ARABIC LETTER MARK
    (0x115F, 0x1160),  # HANGUL CHOSEONG/JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ/AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS, VOWEL SEPARATOR
    (0x200B, 0x200F),  # ZERO WIDTH SPACE ... RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x206F),  # WORD JOINER, invisible operators, bidi isolates...
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTOR-1..16
    (0xFEFF, 0xFEFF),  # ZERO WIDTH NO-BREAK SPACE (byte order mark)
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # unassigned, reserved as ignorable
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT controls
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN/END formatting
    (0xE0000, 0xE0FFF),  # tags, VARIATION SELECTOR-17..256, reserved
)
_IGNORABLE = frozenset(
    chr(code) for first, last in _IGNORABLE_RANGES for code in range(first, last + 1)
)

# Invisible and bidirectional characters get their own reasons, because "contains an
# invisible character" tells a user what to remove better than a category code would.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")

# Punctuation that means something in the chat's text, with what it means.
_MEANINGS = {
    "/": "which starts commands",
    ":": "which separates the nick from the text in '[room] nick: text'",
    "[": "which frames the room in '[room] nick: text'",
    "]": "which frames the room in '[room] nick: text'",
    "@": "which addresses people (@nick)",
    "#": "which names rooms (#room)",
    ",": "which separates nicks in lists",
}

_ALLOWED_WORDS = "letters, digits and - _ . '"

# Alphabets whose letters imitate each other's; a nick may use letters of one of them.
# Unicode names start with the script for these (after NFKC, which turns fullwidth,
# mathematical and modifier forms into plain letters), so no Scripts.txt is needed.
_LOOKALIKE_SCRIPTS = frozenset({"LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "CHEROKEE", "COPTIC"})

# Rounds of the skeleton before giving up on a fixed point; the generator checks
# that every single character settles in far fewer.
_MAX_ROUNDS = 8


class NickError(EnlaceError):
    """A nick breaks the rules; the message says which rule, and where.

    ``reason`` is a stable machine-readable word, finer than ``code``:
    ``empty``, ``too_long``, ``whitespace``, ``control``, ``bidi``,
    ``zero_width``, ``invisible``, ``format``, ``private_use``, ``unassigned``,
    ``surrogate``, ``punctuation``, ``symbol``, ``leading_mark``,
    ``too_many_marks``, ``mixed_scripts``, ``no_letter`` or ``reserved``.
    ``char`` is the offending character when there is one.
    """

    code = "bad_nick"

    def __init__(self, message: str, *, reason: str, char: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.char = char


def validate_nick(
    name: str,
    *,
    max_length: int | None = MAX_NICK,
    reserved: Collection[str] = (),
    allow_mixed_scripts: bool = False,
) -> str:
    """Return ``name`` as the nick will be shown, or raise :class:`NickError`.

    The nick shown is ``name`` in NFC with surrounding whitespace stripped; its
    length is counted in that form, in code points. ``max_length`` bounds it
    (``None``: no bound). ``reserved`` names nicks that nobody may take, such as
    the assistant's name; they, like the ``guest-`` prefix, are compared by
    :func:`nick_key`, so no lookalike of them can be taken either.
    ``allow_mixed_scripts`` lets one nick mix the letters of Latin, Greek,
    Cyrillic and the other alphabets that imitate them.

    Uniqueness among connected users is the caller's to check, with :func:`nick_key`.
    """
    shown = unicodedata.normalize("NFC", name).strip()
    if not shown:
        raise NickError("nick is empty", reason="empty")
    if max_length is not None and len(shown) > max_length:
        raise NickError(
            f"nick is too long: {len(shown)} characters, at most {max_length}",
            reason="too_long",
        )
    marks = 0
    has_alnum = False
    script, first = "", ""  # the first lookalike script seen, and its first letter
    for index, char in enumerate(shown):
        _check_char(char)
        category = unicodedata.category(char)
        if category in ("Mn", "Mc"):
            if index == 0:
                raise NickError(
                    f"nick starts with {_describe(char)}, "
                    "a combining mark with no character to combine with",
                    reason="leading_mark",
                    char=char,
                )
            marks += 1
            if marks > MAX_MARKS:
                raise NickError(
                    f"nick has more than {MAX_MARKS} combining marks in a row",
                    reason="too_many_marks",
                    char=char,
                )
        else:
            marks = 0
            has_alnum = has_alnum or category[0] in "LN"
            if category[0] == "L" and not allow_mixed_scripts:
                other = _script(char)
                if other and script and other != script:
                    raise NickError(
                        f"nick mixes {script.title()} and {other.title()} letters "
                        f"({_describe(first)}, {_describe(char)}), the way lookalike "
                        "names are made; use the letters of one alphabet",
                        reason="mixed_scripts",
                        char=char,
                    )
                if other and not script:
                    script, first = other, char
    if not has_alnum:
        raise NickError("nick needs at least one letter or digit", reason="no_letter")
    key = nick_key(shown)
    if key.startswith(_guest_key()):
        raise NickError(
            f"nicks starting with {GUEST_PREFIX!r} are reserved for the names "
            "the server gives newcomers",
            reason="reserved",
        )
    for other in reserved:
        if nick_key(other) == key:
            raise NickError(f"nick {other!r} is reserved", reason="reserved")
    return shown


def _check_char(char: str) -> None:
    """Raise :class:`NickError` if ``char`` may not appear in a nick (marks aside)."""
    if char in NICK_PUNCTUATION:
        return
    category = unicodedata.category(char)
    major = category[0]
    if (major in "LN" or category in ("Mn", "Mc")) and char not in _IGNORABLE:
        return
    # The order matters where sets overlap: U+200F is a bidi control and ignorable too,
    # and the most specific reason is the most useful one.
    if category == "Cs":
        what, reason = "a lone surrogate, not a character", "surrogate"
    elif category == "Cn":
        what = f"a code point unassigned in Unicode {unicodedata.unidata_version}"
        reason = "unassigned"
    elif category == "Cc":
        what, reason = "a control character", "control"
    elif category == "Co":
        what, reason = "a private-use character, with no agreed meaning or look", "private_use"
    elif char in _BIDI:
        what, reason = "a bidirectional control, which reorders the text around it", "bidi"
    elif char in _ZERO_WIDTH:
        what, reason = "a zero-width (invisible) character", "zero_width"
    elif char in _IGNORABLE:
        what, reason = "an invisible character", "invisible"
    elif category == "Cf":
        what, reason = "a formatting character", "format"
    elif major == "Z" or char.isspace():
        raise NickError(
            f"nick contains {_describe(char)}: a nick is one word, without spaces",
            reason="whitespace",
            char=char,
        )
    elif major == "P":
        meaning = _MEANINGS.get(char, "")
        raise NickError(
            f"nick contains {_describe(char)}{', ' + meaning if meaning else ''}; "
            f"nicks may use {_ALLOWED_WORDS}",
            reason="punctuation",
            char=char,
        )
    else:  # symbols (emoji among them) and enclosing marks
        raise NickError(
            f"nick contains {_describe(char)}, a symbol or emoji; nicks may use {_ALLOWED_WORDS}",
            reason="symbol",
            char=char,
        )
    raise NickError(f"nick contains {_describe(char)}, {what}", reason=reason, char=char)


def _script(letter: str) -> str:
    """The lookalike script ``letter`` belongs to (``LATIN``...), or ``""`` for others."""
    base = unicodedata.normalize("NFKC", letter)[:1]
    word = unicodedata.name(base, "").partition(" ")[0]
    return word if word in _LOOKALIKE_SCRIPTS else ""


def _describe(char: str) -> str:
    """``U+003A COLON (':')``: the code point, its name, and the character if it shows."""
    code = ord(char)
    name = unicodedata.name(char, "")
    text = f"U+{code:04X} {name}" if name else f"U+{code:04X}"
    category = unicodedata.category(char)
    # Only characters that show by themselves: an invisible one between quotes
    # would be as confusing as the nick it came from.
    if char.isprintable() and category[0] in "LNPS" and char not in _IGNORABLE:
        text += f" ({char!r})"
    return text


def nick_key(name: str) -> str:
    """Return the key under which ``name`` is unique (see the module docstring).

    Two nicks clash exactly when their keys are equal. The key is a plain
    string for dicts and sets, never shown to anyone. It is idempotent
    (``nick_key(nick_key(x)) == nick_key(x)``) and never raises for a ``str``.
    """
    return _skeleton(name, _table())


def _skeleton(text: str, table: Mapping[str, str]) -> str:
    """Repeat :func:`_once` until nothing changes, then compose with NFKC."""
    # Almost every string is stable after one round, thanks to the table's closure;
    # the loop is there for NFKC and case folding interacting in rare characters.
    for _ in range(_MAX_ROUNDS):
        folded = _once(text, table)
        if folded == text:
            break
        text = folded
    return unicodedata.normalize("NFKC", text)


def _once(text: str, table: Mapping[str, str]) -> str:
    """One round of the skeleton: fold, drop ignorables, map lookalikes.

    ``scripts/gen_confusables.py`` calls this too, to close the table under it.
    """
    return "".join(table.get(char, char) for char in _fold(text) if char not in _IGNORABLE)


def _fold(text: str) -> str:
    """Unicode's compatibility caseless form (D146): ``NFKD(casefold(NFKD(casefold(NFD(x)))))``.

    Folding twice around the normalizations is what makes the result stable:
    a single ``casefold`` of NFKC text misses characters such as U+1FB7, whose
    case folding and decomposition reorder each other's combining marks.
    """
    normalize = unicodedata.normalize
    return normalize("NFKD", normalize("NFKD", normalize("NFD", text).casefold()).casefold())


@cache
def _table() -> dict[str, str]:
    """The lookalike table: each source character and the prototype it reads as."""
    return _parse_table(_confusables.TABLE)


def _parse_table(text: str) -> dict[str, str]:
    """Read entries ``PROTOTYPE:SOURCE,SOURCE...`` (hex code points, ``+`` inside a prototype)."""
    table: dict[str, str] = {}
    for entry in text.split():
        target, sources = entry.split(":")
        prototype = "".join(chr(int(code, 16)) for code in target.split("+") if code)
        for source in sources.split(","):
            table[chr(int(source, 16))] = prototype
    return table


@cache
def _guest_key() -> str:
    return nick_key(GUEST_PREFIX)


def guest_nick(number: int) -> str:
    """The name the server gives its ``number``-th newcomer: ``guest-1``, ``guest-2``...

    These names pass no :func:`validate_nick` (their prefix is reserved), so no
    user can take one; distinct numbers give distinct keys.
    """
    if number < 0:
        raise ValueError("guest numbers are not negative")
    return f"{GUEST_PREFIX}{number}"


def is_guest_nick(name: str) -> bool:
    """Whether ``name`` (or a lookalike of it) is in the reserved ``guest-`` space."""
    return nick_key(name).startswith(_guest_key())
