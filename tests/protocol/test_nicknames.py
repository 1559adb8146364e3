"""Tests for the chat's nickname rules in :mod:`enlace.protocol.nicknames`.

:func:`nick_key` must make every spelling that reads alike one key: case,
compatibility forms (fullwidth, mathematical, ligatures), invisible characters
and lookalikes from other scripts, in either case; and it must keep apart what
people type as different (``ian`` and ``lan``, accents). The documented choices
are pinned here: ``ß`` is ``ss``, case folding is not Turkish, and the Greek
capitals whose lowercase reads as another letter are the remaining gap, closed
for mixed nicks by the mixed-script rule.

:func:`validate_nick` is fed every kind of refused character, and each refusal
is checked for its stable ``reason``, its ``code`` and a message that names the
character as ``U+XXXX NAME``. Lengths are counted in code points after NFC.
Property tests check that arbitrary text only ever gives a nick or a
:class:`NickError`, that keys are idempotent and ignore case, and that a valid
nick stays valid. Characters that look like others are written as escapes, so
that this file shows what it tests.
"""

from __future__ import annotations

import ast
import importlib.util
import string
import sys
import unicodedata
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from enlace.exceptions import EnlaceError
from enlace.protocol import _confusables, nicknames
from enlace.protocol.nicknames import (
    CONFUSABLES_VERSION,
    GUEST_PREFIX,
    MAX_MARKS,
    MAX_NICK,
    NICK_PUNCTUATION,
    NickError,
    _fold,
    _once,
    _parse_table,
    _table,
    guest_nick,
    is_guest_nick,
    nick_key,
    validate_nick,
)

REPO = Path(__file__).resolve().parents[2]
FULLWIDTH_ALICE = "\uff21\uff4c\uff49\uff43\uff45"
BOLD_ALICE = "\U0001d400\U0001d425\U0001d422\U0001d41c\U0001d41e"  # MATHEMATICAL BOLD


def refusal(name: str, **options: object) -> NickError:
    with pytest.raises(NickError) as caught:
        validate_nick(name, **options)
    return caught.value


# ------------------------------------------------------------------------------------- the key


@pytest.mark.parametrize(
    "form",
    [
        "Alice",
        "alice",
        "ALICE",
        "\u0410lice",  # CYRILLIC CAPITAL LETTER A
        "Alice\u200b",  # ZERO WIDTH SPACE
        "A\u200dlice",  # ZERO WIDTH JOINER
        "Al\u00adice",  # SOFT HYPHEN
        "Alic\ufe0fe",  # VARIATION SELECTOR-16
        FULLWIDTH_ALICE,
        BOLD_ALICE,
        "\u0430l\u0456\u0441\u0435",  # all but the l Cyrillic
    ],
)
def test_every_spelling_of_alice_has_one_key(form):
    assert nick_key(form) == nick_key("Alice") == "alice"


@pytest.mark.parametrize(
    ("latin", "lookalike"),
    [
        ("paypal", "\u0440\u0430\u0443\u0440\u0430l"),  # Cyrillic er, a, u
        ("scott", "\u0455\u0441\u043ett"),  # Cyrillic dze, es, o
        ("joe", "\u0458\u043e\u0435"),  # Cyrillic je, o, ie
        ("Tom", "\u0422\u043em"),  # Cyrillic capital te, o
        ("TOM", "\u0422\u041e\u041c"),  # wholly Cyrillic
        ("Max", "\u041c\u0430\u0445"),  # Cyrillic capital em, a, ha
        ("Helen", "\u041d\u0435l\u0435n"),  # Cyrillic capital en, ie
        ("Bob", "\u0412ob"),  # Cyrillic capital ve
        ("Kate", "\u039aate"),  # Greek capital kappa
        ("POKER", "\u03a1\u039f\u039a\u0395R"),  # Greek rho, omicron, kappa, epsilon
        ("Zoe", "\u0396oe"),  # Greek capital zeta
        ("Olga", "\u039flga"),  # Greek capital omicron
        ("xena", "\u03c7ena"),  # Greek small chi
        ("tina", "\u03c4ina"),  # Greek small tau
        ("ali", "al\u0131"),  # LATIN SMALL LETTER DOTLESS I
        ("ivan", "\u0456v\u0430n"),  # Ukrainian i, Cyrillic a
    ],
)
def test_lookalikes_from_other_scripts_share_the_key(latin, lookalike):
    assert nick_key(lookalike) == nick_key(latin)


def test_lookalikes_share_the_key_in_both_cases():
    # Cyrillic capital te looks like T; its lowercase (a small capital) must follow,
    # or the key would depend on case.
    assert nick_key("\u0422om") == nick_key("\u0442om") == nick_key("tom") == nick_key("TOM")


@pytest.mark.parametrize(
    ("ascii_form", "lookalike"),
    [("bobo", "bob0"), ("all", "al1"), ("corn", "com"), ("l", "|")],
)
def test_digits_and_letter_pairs_that_read_alike_share_the_key(ascii_form, lookalike):
    # Unicode's confusables: 0 reads as O, 1 and | as l, m as rn.
    assert nick_key(lookalike) == nick_key(ascii_form)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("ian", "lan"),  # capital I looks like l, but small i does not
        ("Ian", "lan"),
        ("ana", "ama"),
        ("tom", "tim"),
        ("Jose", "Jos\u00e9"),  # accents count
        ("guest-1", "guest-2"),
        ("anna", "ana"),
    ],
)
def test_names_people_type_differently_keep_distinct_keys(first, second):
    assert nick_key(first) != nick_key(second)


@pytest.mark.parametrize(
    ("greek", "latin"),
    [("\u0392ob", "Bob"), ("\u0397elen", "Helen"), ("\u039dike", "Nike"), ("\u03a5es", "Yes")],
)
def test_greek_capitals_whose_lowercase_reads_otherwise_are_the_known_gap(greek, latin):
    # Beta, eta, nu and upsilon look like B H N Y, but their lowercase forms look like
    # ss n v u; one key cannot follow both, so the mixed-script rule refuses them instead.
    assert nick_key(greek) != nick_key(latin)
    assert refusal(greek).reason == "mixed_scripts"


def test_fullwidth_mathematical_and_ligature_forms_fold_with_nfkc():
    assert nick_key(FULLWIDTH_ALICE) == nick_key(BOLD_ALICE) == nick_key("alice")
    assert nick_key("\ufb01sh") == nick_key("fish")  # LATIN SMALL LIGATURE FI
    assert nick_key("\uff41\uff4e\uff41\uff17") == nick_key("ana7")  # fullwidth digit


def test_sharp_s_folds_to_ss():
    # str.casefold (full case folding): one key for all four spellings.
    assert nick_key("stra\u00dfe") == nick_key("STRASSE") == nick_key("strasse")
    assert nick_key("STRA\u1e9eE") == nick_key("strasse")  # LATIN CAPITAL LETTER SHARP S


def test_case_folding_is_unicode_default_not_turkish():
    # I folds to i (not to dotless i); dotless i reads as i; dotted capital I folds
    # to i + COMBINING DOT ABOVE, which stays distinct from plain i.
    assert nick_key("Ilker") == nick_key("ilker")
    assert nick_key("\u0131lker") == nick_key("ilker")
    assert nick_key("\u0130lker") == nick_key("i\u0307lker")
    assert nick_key("\u0130lker") != nick_key("ilker")


def test_combining_sequences_and_precomposed_characters_share_the_key():
    assert nick_key("Jose\u0301") == nick_key("Jos\u00e9")
    assert nick_key("Nguye\u0302\u0303n") == nick_key("Nguy\u1ec5n")


def test_key_never_raises_on_awkward_text():
    for text in ["", "\ud800", "\x00", "\u0345" * 10, "\ufdfa", "\u1e9b\u0323", "\U0010ffff"]:
        key = nick_key(text)
        assert nick_key(key) == key


def test_table_entries_are_fixed_points_so_one_round_suffices():
    table = _table()
    assert len(table) > 1000
    for source, prototype in table.items():
        # Only characters that survive caseless folding are ever looked up...
        assert _fold(source) == source, f"U+{ord(source):04X}"
        # ...and what they map to is already final.
        assert _once(prototype, table) == prototype, f"U+{ord(source):04X}"


def test_key_is_idempotent_on_every_character_of_the_table():
    table = _table()
    characters = set(table) | {char for prototype in table.values() for char in prototype}
    for char in characters:
        for text in (char, char.upper(), f"a{char}b"):
            key = nick_key(text)
            assert nick_key(key) == key, f"U+{ord(char):04X}"


def test_key_is_idempotent_on_the_whole_basic_multilingual_plane():
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        key = nick_key(chr(code))
        assert nick_key(key) == key, f"U+{code:04X}"


def test_every_letter_of_the_basic_multilingual_plane_has_one_key_in_every_case():
    for code in range(0x10000):
        char = chr(code)
        if unicodedata.category(char)[0] == "L":
            key = nick_key(char)
            for form in (char.upper(), char.lower(), char.title(), char.casefold()):
                assert nick_key(form) == key, f"U+{code:04X}"


def test_the_table_records_where_it_comes_from():
    assert CONFUSABLES_VERSION == _confusables.SOURCE_VERSION
    assert CONFUSABLES_VERSION.count(".") == 2
    assert _confusables.UNIDATA_VERSION.count(".") == 2


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "nick",
    [
        "Ana",
        "Jos\u00e9",
        "Nguy\u1ec5n",
        "\u0414\u043c\u0438\u0442\u0440\u0438\u0439",  # Cyrillic
        "\u03a9\u03bc\u03ad\u03b3\u03b1",  # Greek
        "\u674e\u96f7",  # Han
        "\u3055\u304f\u3089Sakura",  # Hiragana and Latin may mix
        "\uae40\ubbfc\uc218",  # Hangul
        "\u0645\u062d\u0645\u062f",  # Arabic
        "\u05d3\u05d5\u05d3",  # Hebrew
        "\u0905\u0928\u0941\u0930\u093e\u0917",  # Devanagari, with vowel signs (marks)
        "ana-maria",
        "j.r",
        "o'brien",
        "snake_case",
        "7of9",
        "R2D2",
        FULLWIDTH_ALICE,  # allowed; its key is plain alice
        "guest",  # only the prefix guest- is reserved
        "guestbook",
        "a" * MAX_NICK,
    ],
)
def test_valid_nicks_are_returned_as_typed(nick):
    assert validate_nick(nick) == nick


def test_the_nick_shown_is_nfc_without_surrounding_whitespace():
    assert validate_nick("  Jose\u0301\t\r\n") == "Jos\u00e9"
    assert validate_nick("\u3000ana\u00a0") == "ana"  # IDEOGRAPHIC SPACE, NO-BREAK SPACE


def test_length_counts_characters_after_nfc():
    assert validate_nick("a" * 32) == "a" * 32
    error = refusal("a" * 33)
    assert (error.reason, str(error)) == ("too_long", "nick is too long: 33 characters, at most 32")
    # e + COMBINING ACUTE ACCENT is one character once composed...
    assert validate_nick("e\u0301" * 32) == "\u00e9" * 32
    assert refusal("e\u0301" * 33).reason == "too_long"
    # ...but q + COMBINING ACUTE ACCENT has no composed form: two characters.
    assert validate_nick("q\u0301" * 16) == "q\u0301" * 16
    assert refusal("q\u0301" * 16 + "q").reason == "too_long"
    # Surrounding whitespace does not count.
    assert validate_nick(" " * 10 + "a" * 32 + " " * 10) == "a" * 32


def test_max_length_is_a_keyword_limit_that_none_disables():
    assert validate_nick("a" * 100, max_length=None) == "a" * 100
    assert refusal("abcd", max_length=3).reason == "too_long"
    assert validate_nick("abc", max_length=3) == "abc"


@pytest.mark.parametrize(
    ("nick", "reason", "message"),
    [
        ("", "empty", "nick is empty"),
        (" \t\n", "empty", "nick is empty"),
        ("ana bob", "whitespace", "U+0020 SPACE: a nick is one word, without spaces"),
        ("ana\u00a0bob", "whitespace", "U+00A0 NO-BREAK SPACE"),
        ("ana\u3000bob", "whitespace", "U+3000 IDEOGRAPHIC SPACE"),
        ("ana\x07", "control", "U+0007, a control character"),
        ("ana\x00bob", "control", "U+0000, a control character"),
        ("ana\x1b[31m", "control", "U+001B, a control character"),
        ("ana\tbob", "control", "U+0009, a control character"),
        ("ana\u202ebob", "bidi", "U+202E RIGHT-TO-LEFT OVERRIDE, a bidirectional control"),
        ("ana\u2067bob", "bidi", "U+2067 RIGHT-TO-LEFT ISOLATE"),
        ("ana\u200fbob", "bidi", "U+200F RIGHT-TO-LEFT MARK"),
        ("ana\u061cbob", "bidi", "U+061C ARABIC LETTER MARK"),
        ("ana\u200bbob", "zero_width", "U+200B ZERO WIDTH SPACE, a zero-width"),
        ("ana\u200d", "zero_width", "U+200D ZERO WIDTH JOINER"),
        ("\ufeffana", "zero_width", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
        ("ana\u2060bob", "zero_width", "U+2060 WORD JOINER"),
        ("ana\u3164", "invisible", "U+3164 HANGUL FILLER, an invisible character"),
        ("\u3164", "invisible", "U+3164 HANGUL FILLER"),
        ("ana\u00adbob", "invisible", "U+00AD SOFT HYPHEN"),
        ("ana\ufe0f", "invisible", "U+FE0F VARIATION SELECTOR-16"),
        ("ana\U000e0041", "invisible", "U+E0041 TAG LATIN CAPITAL LETTER A"),
        ("ana\u034fbob", "invisible", "U+034F COMBINING GRAPHEME JOINER"),
        ("ana\u0600", "format", "U+0600 ARABIC NUMBER SIGN, a formatting character"),
        ("ana\ue000", "private_use", "U+E000, a private-use character"),
        ("ana\U000f0000", "private_use", "U+F0000, a private-use character"),
        ("ana\u0378", "unassigned", "U+0378, a code point unassigned in Unicode"),
        ("ana\ud800", "surrogate", "U+D800, a lone surrogate"),
        ("ana:bob", "punctuation", "U+003A COLON (':'), which separates the nick from the text"),
        ("/ana", "punctuation", "U+002F SOLIDUS ('/'), which starts commands"),
        ("ana/", "punctuation", "which starts commands"),
        ("@ana", "punctuation", "U+0040 COMMERCIAL AT ('@'), which addresses people"),
        ("#ana", "punctuation", "U+0023 NUMBER SIGN ('#'), which names rooms"),
        ("ana,bob", "punctuation", "U+002C COMMA (','), which separates nicks in lists"),
        ("[ana]", "punctuation", "U+005B LEFT SQUARE BRACKET ('['), which frames the room"),
        ("ana!", "punctuation", "U+0021 EXCLAMATION MARK ('!'); nicks may use letters"),
        ("ana\uff0dbob", "punctuation", "U+FF0D FULLWIDTH HYPHEN-MINUS"),
        ("ana\u2010bob", "punctuation", "U+2010 HYPHEN"),
        ("ana+bob", "symbol", "U+002B PLUS SIGN ('+'), a symbol or emoji"),
        ("ana$", "symbol", "U+0024 DOLLAR SIGN ('$')"),
        ("ana\u2122", "symbol", "U+2122 TRADE MARK SIGN"),
        ("a\u20dd", "symbol", "U+20DD COMBINING ENCLOSING CIRCLE"),
        ("\u0301ana", "leading_mark", "starts with U+0301 COMBINING ACUTE ACCENT, a combining"),
        ("q\u0300\u0301\u0302\u0303\u0304", "too_many_marks", "more than 4 combining marks"),
        ("---", "no_letter", "nick needs at least one letter or digit"),
        ("_", "no_letter", "at least one letter or digit"),
        ("'.'", "no_letter", "at least one letter or digit"),
        ("\u0410lice", "mixed_scripts", "mixes Cyrillic and Latin letters (U+0410 CYRILLIC"),
        ("Alic\u0435", "mixed_scripts", "U+0435 CYRILLIC SMALL LETTER IE"),
        ("\u039dike", "mixed_scripts", "mixes Greek and Latin letters"),
        (
            "Dmitry_\u0414\u043c\u0438\u0442\u0440\u0438\u0439",
            "mixed_scripts",
            "Latin and Cyrillic",
        ),
        ("guest-1", "reserved", "nicks starting with 'guest-' are reserved"),
        ("Guest-7", "reserved", "'guest-' are reserved"),
        ("GUEST-abc", "reserved", "'guest-' are reserved"),
        ("\uff47uest-1", "reserved", "'guest-' are reserved"),  # fullwidth g
        ("guest-", "reserved", "'guest-' are reserved"),
    ],
)
def test_each_refusal_has_its_reason_and_names_the_problem(nick, reason, message):
    error = refusal(nick)
    assert error.reason == reason
    assert message in str(error)
    assert error.code == "bad_nick"
    assert isinstance(error, EnlaceError)


def test_the_offending_character_is_attached():
    assert refusal("ana\u200bbob").char == "\u200b"
    assert refusal("ana:bob").char == ":"
    assert refusal("\u0410lice").char == "l"  # where the second script starts
    assert refusal("a" * 40).char is None


def test_invisible_characters_are_never_quoted_in_messages():
    # Quoting an invisible character would be as confusing as the nick itself.
    for nick in ["ana\u3164", "ana\u200b", "ana\u202e", "ana\ufe0f"]:
        assert "'" not in str(refusal(nick))


def test_the_length_is_checked_before_the_characters():
    assert refusal("\x07" * 40).reason == "too_long"


def test_combining_marks_up_to_the_limit_are_fine():
    assert (
        validate_nick("q" + "\u0300\u0301\u0302\u0303"[:MAX_MARKS]) == "q\u0300\u0301\u0302\u0303"
    )
    # The count restarts after each base character.
    assert validate_nick("q\u0300\u0301\u0302\u0303x\u0300\u0301\u0302\u0303")


@pytest.mark.parametrize(
    "emoji",
    [
        "\U0001f600",  # GRINNING FACE
        "ana\U0001f600",
        "\U0001f44d\U0001f3fd",  # THUMBS UP SIGN + skin tone
        "\u2764\ufe0f",  # HEAVY BLACK HEART + VARIATION SELECTOR-16
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # a family, joined by ZWJ
        "\U0001f1ea\U0001f1f8",  # the flag of Spain (regional indicators)
    ],
)
def test_emoji_are_refused_as_symbols(emoji):
    error = refusal(emoji)
    assert error.reason == "symbol"
    assert "a symbol or emoji" in str(error)


def test_keycap_emoji_is_refused_for_its_invisible_selector():
    assert refusal("ana1\ufe0f\u20e3").reason == "invisible"


def test_mixed_scripts_can_be_allowed():
    assert validate_nick("Dmitry_\u0414\u043c\u0438", allow_mixed_scripts=True)
    # The key still makes lookalikes clash.
    mixed = validate_nick("\u0410lice", allow_mixed_scripts=True)
    assert nick_key(mixed) == nick_key("Alice")


def test_reserved_prefix_is_matched_in_any_lookalike_spelling():
    assert refusal("gu\u0435st-1", allow_mixed_scripts=True).reason == "reserved"
    assert refusal("GUEST-l").reason == "reserved"


def test_reserved_names_and_their_lookalikes_are_refused():
    error = refusal("Assistant", reserved=["assistant", "server"])
    assert (error.reason, str(error)) == ("reserved", "nick 'assistant' is reserved")
    assert refusal("\uff33erver", reserved=["server"]).reason == "reserved"
    assert refusal("\u0405erver", reserved=["server"], allow_mixed_scripts=True).reason == (
        "reserved"
    )
    assert validate_nick("ana", reserved=["assistant"]) == "ana"


def test_punctuation_allowed_is_the_documented_set():
    assert NICK_PUNCTUATION == "-_.'"
    for char in string.punctuation:
        if char in NICK_PUNCTUATION:
            assert validate_nick(f"a{char}b") == f"a{char}b"
        else:
            assert refusal(f"a{char}b").reason in ("punctuation", "symbol")


# --------------------------------------------------------------------------------------- guests


def test_guest_names_are_reserved_and_distinct():
    assert guest_nick(1) == f"{GUEST_PREFIX}1" == "guest-1"
    keys = {nick_key(guest_nick(number)) for number in range(10_000)}
    assert len(keys) == 10_000  # 0 reads as o and 1 as l, but no two numbers clash
    for number in (0, 1, 10, 42, 123456):
        assert refusal(guest_nick(number)).reason == "reserved"
        assert is_guest_nick(guest_nick(number))


def test_is_guest_nick_follows_the_key():
    assert is_guest_nick("Guest-7")
    assert is_guest_nick("\uff47uest-7")
    assert not is_guest_nick("guest")
    assert not is_guest_nick("ana")


def test_guest_numbers_are_not_negative():
    with pytest.raises(ValueError, match="not negative"):
        guest_nick(-1)


# ------------------------------------------------------------------------------------ properties

ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=40)
TRICKY = st.sampled_from(
    [" ", "\u200b", "\u202e", "\u0301", "\u3164", "\ufe0f", "-", ":", "/", "\u0410", "\u0131"]
)


def script_text(first: int, last: int) -> st.SearchStrategy[str]:
    """Nick-like text in one script: its letters and marks, digits and the allowed punctuation."""
    letters = st.characters(min_codepoint=first, max_codepoint=last, categories=["L", "Mn"])
    return st.text(
        alphabet=st.one_of(letters, st.sampled_from("0123456789" + NICK_PUNCTUATION)),
        min_size=1,
        max_size=MAX_NICK,
    )


NICK_LIKE = st.one_of(
    script_text(0x41, 0x24F),  # Latin
    script_text(0x370, 0x3FF),  # Greek
    script_text(0x400, 0x4FF),  # Cyrillic
    script_text(0x4E00, 0x4FFF),  # Han
    script_text(0xAC00, 0xAD00),  # Hangul
    script_text(0x600, 0x6FF),  # Arabic
    script_text(0x900, 0x97F),  # Devanagari
)


@settings(max_examples=300)
@given(st.one_of(ANY_TEXT, st.lists(st.one_of(TRICKY, NICK_LIKE), max_size=4).map("".join)))
def test_validate_only_ever_raises_nick_error(text):
    try:
        nick = validate_nick(text)
    except NickError as error:
        assert error.reason
        assert str(error).startswith("nick")
    else:
        assert 1 <= len(nick) <= MAX_NICK
        assert validate_nick(nick) == nick  # a valid nick stays valid


@settings(max_examples=500)
@given(ANY_TEXT)
def test_key_is_idempotent_on_any_text(text):
    key = nick_key(text)
    assert nick_key(key) == key


@settings(max_examples=300)
@given(NICK_LIKE)
def test_keys_of_valid_nicks_are_idempotent_and_ignore_case(text):
    try:
        nick = validate_nick(text)
    except NickError:
        assume(False)
        raise
    key = nick_key(nick)
    assert key
    assert nick_key(key) == key
    assert nick_key(nick.upper()) == key
    assert nick_key(nick.lower()) == key
    assert nick_key(nick.swapcase()) == key
    assert nick_key(unicodedata.normalize("NFD", nick)) == key


# ------------------------------------------------------------------------------- the generator


def load_generator() -> ModuleType:
    path = REPO / "scripts" / "gen_confusables.py"
    spec = importlib.util.spec_from_file_location("gen_confusables", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_confusables", module)
    spec.loader.exec_module(module)
    return module


SAMPLE = """\ufeff# confusables.txt
# Version: 99.0.0
0430 ;\t0061 ;\tMA\t# ( \u0430 \u2192 a ) CYRILLIC SMALL LETTER A \u2192 LATIN SMALL LETTER A
0030 ;\t004F ;\tMA\t#* ( 0 \u2192 O ) DIGIT ZERO \u2192 LATIN CAPITAL LETTER O
0422 ;\t0054 ;\tMA\t# ( \u0422 \u2192 T ) CYRILLIC CAPITAL LETTER TE \u2192 LATIN CAPITAL T

0442 ;\t1D1B ;\tMA\t# ( \u0442 \u2192 \u1d1b ) CYRILLIC SMALL LETTER TE \u2192 SMALL CAPITAL T
0049 ;\t006C ;\tMA\t# ( I \u2192 l ) LATIN CAPITAL LETTER I \u2192 LATIN SMALL LETTER L
006D ;\t0072 006E ;\tMA\t# ( m \u2192 rn ) LATIN SMALL LETTER M \u2192 r, n
"""


def test_generator_builds_a_closed_merged_table_that_reads_back():
    generator = load_generator()
    version, mapping = generator.parse(SAMPLE.lstrip("\ufeff"))
    assert version == "99.0.0"
    assert mapping["m"] == "rn"
    closed = generator.close(mapping)
    assert closed["0"] == "o"  # 0 -> O -> casefold -> o
    table = {s: t for s, t in closed.items() if generator.reachable(s) and t != s}
    assert "I" not in table  # casefold turns I into i before any lookup
    table = generator.merge_cases(table, mapping)
    # Capital te looks like T, so small te and small capital T follow t...
    assert table["\u0442"] == table["\u1d1b"] == "t"
    # ...but I looking like l must not join i and l.
    assert "i" not in table
    assert "l" not in table
    source = generator.render(version, table)
    namespace: dict[str, object] = {}
    exec(compile(source, "_confusables.py", "exec"), namespace)
    assert namespace["SOURCE_VERSION"] == "99.0.0"
    assert _parse_table(str(namespace["TABLE"])) == table
    assert max(len(line) for line in source.splitlines()) <= 100


def test_shipped_table_is_rendered_as_the_generator_renders_it():
    generator = load_generator()
    shipped = Path(_confusables.__file__).read_text(encoding="utf-8")
    rendered = generator.render(
        _confusables.SOURCE_VERSION, _table(), unidata=_confusables.UNIDATA_VERSION
    )
    assert rendered == shipped


# --------------------------------------------------------------------------------- sans-I/O


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


MODULES = [nicknames, _confusables]


@pytest.mark.parametrize("module", MODULES)
def test_the_module_does_no_io(module):
    # protocol/ is sans-I/O: no sockets, event loops, threads or clocks.
    assert not imported_modules(Path(module.__file__)) & {"socket", "asyncio", "threading", "time"}
