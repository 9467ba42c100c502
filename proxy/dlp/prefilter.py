"""Coarse prefilters: a regex rewritten over a translated copy of the text.

CPython's ``re`` is fast in exactly one situation: when a pattern begins with a literal, the
search skips to the next occurrence of that literal in a tight C loop (hundreds of MB/s). A
pattern whose alternatives begin with *different* characters falls back to testing a
character class at every position (~5 ns per character even when nothing matches).

So each scanning pass translates the text (``str.encode("ascii", "replace")`` then
``bytes.translate``: one byte per character, offsets unchanged) with a table that maps all
of the pass's *anchor* characters to the marker byte ``\\x01``, and searches a *coarse*
pattern that starts with that literal marker. The coarse pattern is derived mechanically from
the precise one (an ``re`` parse tree) so that it matches the translated text wherever the
precise pattern matches the original text (a superset): every character class becomes the
set of its images under the table, case-insensitive parts are expanded, negative assertions
are rewritten over the *sub*-image (bytes all of whose pre-images are in the class) or
dropped. Only at coarse hits does the scanner run the precise pattern on the original text.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from re import _constants as sre_constants  # private but stable since 3.11
from re import _parser as sre_parse
from typing import Any

__all__ = ["MARKER", "Table", "coarse_alternative", "coarse_pattern"]

MARKER = 0x01
_ASCII = frozenset(range(128))
_QUESTION = ord("?")
_CATEGORIES = {
    "CATEGORY_DIGIT": frozenset(string.digits.encode()),
    "CATEGORY_SPACE": frozenset(b" \t\n\r\f\v"),
    "CATEGORY_WORD": frozenset((string.ascii_letters + string.digits + "_").encode()),
}


class Table:
    """A translation of ASCII text to bytes, with the pre-images of every byte.

    ``anchors`` map to :data:`MARKER`; ``fold_case`` maps capitals to lower case; a literal
    ``\\x01`` in the text maps to ``?`` (so the marker means "anchor" only); non-ASCII
    characters arrive as ``?`` (``encode("ascii", "replace")``).
    """

    def __init__(self, anchors: Iterable[str], *, fold_case: bool = False) -> None:
        tbl = bytearray(range(256))
        tbl[MARKER] = _QUESTION
        if fold_case:
            for c in string.ascii_uppercase:
                tbl[ord(c)] = ord(c.lower())
        nonascii_anchor = False
        for a in anchors:
            if ord(a) < 128:
                tbl[ord(a)] = MARKER
            else:
                nonascii_anchor = True
        if nonascii_anchor:             # non-ASCII characters all arrive as "?"
            tbl[_QUESTION] = MARKER
        self.bytes = bytes(tbl)
        #: byte -> the ASCII characters that map to it
        self.pre: dict[int, set[int]] = {}
        for c in range(128):
            self.pre.setdefault(tbl[c], set()).add(c)
        #: the byte non-ASCII characters map to
        self.nonascii = tbl[_QUESTION]

    def image(self, chars: Iterable[int], nonascii: bool) -> set[int]:
        out = {self.bytes[c] for c in chars}
        if nonascii:
            out.add(self.nonascii)
        return out

    def subimage(self, chars: frozenset[int] | set[int], nonascii: bool) -> set[int]:
        """Bytes all of whose pre-images are in ``chars`` (+ all non-ASCII if ``nonascii``)."""
        out = set()
        for b, pre in self.pre.items():
            if not pre <= chars:
                continue
            if b == self.nonascii and not nonascii:
                continue
            out.add(b)
        return out


def _cls(bs: set[int]) -> str:
    if not bs:
        return "(?!)"
    if len(bs) == 1:
        (b,) = bs
        return re.escape(chr(b)) if chr(b).isalnum() else f"\\x{b:02x}"
    return "[" + "".join(f"\\x{b:02x}" for b in sorted(bs)) + "]"


def _class_set(items: Any, flags: int) -> tuple[frozenset[int], bool]:
    """(ASCII characters, matches some non-ASCII?) of a parsed character class."""
    chars: set[int] = set()
    nonascii = False
    negate = False
    for op, av in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            if av < 128:
                chars.add(av)
            else:
                nonascii = True
        elif name == "RANGE":
            lo, hi = av
            chars.update(range(lo, min(hi, 127) + 1))
            nonascii = nonascii or hi >= 128
        elif name == "CATEGORY":
            cat = str(av)
            if cat.startswith("CATEGORY_NOT_"):
                chars |= _ASCII - _CATEGORIES[cat.replace("NOT_", "")]
                nonascii = True
            elif cat in _CATEGORIES:
                chars |= _CATEGORIES[cat]
            else:                          # linebreak categories etc.: be generous
                chars |= _ASCII
                nonascii = True
        else:
            chars |= _ASCII
            nonascii = True
    if flags & re.IGNORECASE:
        chars |= {ord(chr(c).swapcase()) for c in chars if chr(c).isalpha()}
    if negate:
        return frozenset(_ASCII - chars), True
    return frozenset(chars), nonascii


def _literal_set(c: int, flags: int) -> tuple[frozenset[int], bool]:
    if c >= 128:
        return frozenset(), True
    s = {c}
    if flags & re.IGNORECASE and chr(c).isalpha():
        s.add(ord(chr(c).swapcase()))
    return frozenset(s), False


_ANY = "[\\x00-\\x7f]"


def _translate(items: Any, flags: int, table: Table, sub: bool) -> str:
    """``sub=False``: a superset over the translated text; ``sub=True``: a subset (used
    inside negative assertions, whose meaning flips)."""
    out: list[str] = []
    for op, av in items:
        name = str(op)
        if name in ("LITERAL", "IN", "NOT_LITERAL", "ANY"):
            if name == "LITERAL":
                chars, nonascii = _literal_set(av, flags)
            elif name == "IN":
                chars, nonascii = _class_set(av, flags)
            elif name == "NOT_LITERAL":
                chars, nonascii = frozenset(_ASCII - {av} if av < 128 else _ASCII), True
            else:
                dotall = bool(flags & re.DOTALL)
                chars, nonascii = frozenset(_ASCII if dotall else _ASCII - {10}), True
            img = table.subimage(chars, nonascii) if sub else table.image(chars, nonascii)
            out.append(_cls(img))
        elif name == "BRANCH":
            alts = [_translate(a.data, flags, table, sub) for a in av[1]]
            out.append("(?:" + "|".join(dict.fromkeys(alts)) + ")")
        elif name == "SUBPATTERN":
            _, add, dele, p = av
            out.append("(?:" + _translate(p.data, (flags | add) & ~dele, table, sub) + ")")
        elif name == "ATOMIC_GROUP":
            out.append("(?:" + _translate(av.data, flags, table, sub) + ")")
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, hi, p = av
            q = f"{{{lo},}}" if hi == sre_constants.MAXREPEAT else f"{{{lo},{hi}}}"
            out.append("(?:" + _translate(p.data, flags, table, sub) + ")" + q)
        elif name == "ASSERT":
            direction, p = av
            out.append(("(?=" if direction > 0 else "(?<=")
                       + _translate(p.data, flags, table, sub) + ")")
        elif name == "ASSERT_NOT":
            direction, p = av
            # (?!Y) holds on the original if the translated text does not match a superset
            # of Y; inside a subset translation the same reasoning applies, flipped.
            inner = _translate(p.data, flags, table, not sub)
            if sub or (inner and "(?!)" not in inner):
                out.append(("(?!" if direction > 0 else "(?<!") + inner + ")")
            # else: the negative assertion can never fire on the translated text: drop it
        elif name == "AT":
            if sub:
                out.append("(?!)")
            # superset: anchors and word boundaries are dropped
        else:                               # GROUPREF and friends: not supported here
            if sub:
                out.append("(?!)")
            else:
                raise ValueError(f"cannot build a prefilter for regex operation {name}")
    return "".join(out)


def coarse_alternative(pattern: str, flags: int, table: Table) -> str:
    """The coarse version of a precise branch that begins with one literal anchor character,
    *without* that first character (the caller puts the shared marker in front)."""
    parsed = sre_parse.parse(pattern, flags)
    data = list(parsed.data)
    if not data or str(data[0][0]) != "LITERAL":
        raise ValueError("a branch must begin with a literal anchor character")
    return _translate(data[1:], parsed.state.flags, table, False)


def coarse_pattern(alternatives: Iterable[str]) -> re.Pattern[bytes]:
    alts = list(dict.fromkeys(alternatives))
    body = "|".join(alts)
    return re.compile(("\\x01(?:" + body + ")").encode("latin-1"))
