"""osquery's regular expressions in Python: C++ std::regex, ECMAScript grammar.

osquery's regex_match and regex_split compile their pattern with std::regex (osquery's
Linux builds use libc++), whose ECMAScript grammar is not Python's: it has no lookbehind,
inline flags, named, atomic or conditional groups, possessive quantifiers or \\A and \\Z,
refuses a lone { } or ], and reads ., $, \\d, \\w, \\s and [[:alpha:]] its own way. A
hunting query must behave in the embedded host exactly as in osqueryi, so a pattern is
translated here into a Python pattern with the same meaning, or refused with the reason
(osquery itself says only "Invalid regex").
"""

from __future__ import annotations

import re
from functools import lru_cache

MAX_SIZE = 256   # osquery's --regex_max_size default, in bytes

# [:name:] inside a bracket expression, in the C locale libc++ uses for char.
_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9",
    "graph": "\\x21-\\x7e", "lower": "a-z", "print": "\\x20-\\x7e", "punct": "!-/:-@\\[-`{-~",
    "space": " \\t\\n\\r\\f\\v", "upper": "A-Z", "xdigit": "0-9A-Fa-f", "w": "0-9A-Za-z_", "d": "0-9", "s": " \\t\\n\\r\\f\\v",
}
_CONTROL = {"f": "\\f", "n": "\\n", "r": "\\r", "t": "\\t", "v": "\\v"}
_CLASS_ESCAPES = set("dDsSwW")
# ECMAScript's . matches anything but a line terminator; Python's anything but \n.
_DOT = "[^\\n\\r\\u2028\\u2029]"
_QUANTIFIER = re.compile(r"\{(\d+)(,(\d*))?\}")


class RegexError(ValueError):
    """std::regex refuses the pattern; the message says why."""


@lru_cache(maxsize=256)
def compile_ecmascript(pattern: str) -> re.Pattern[str]:
    """The compiled Python equivalent of an ECMAScript pattern, or RegexError."""
    if len(pattern.encode()) > MAX_SIZE:
        raise RegexError(f"too big, max size is {MAX_SIZE} bytes")
    source = _Translator(pattern).translate()
    try:
        return re.compile(source, re.ASCII)
    except re.error as exc:
        raise RegexError(str(exc)) from None


class _Translator:
    """One pass over the pattern, emitting Python regex source (ECMAScript grammar, as in
    the C++ standard's [re.grammar] and libc++'s parser)."""

    def __init__(self, pattern: str) -> None:
        self.p, self.i = pattern, 0
        self.out: list[str] = []
        self.groups: list[str] = []     # kinds of the groups open now
        self.captures = 0
        self.quantifiable = False       # may the previous token take a quantifier

    def translate(self) -> str:
        while self.i < len(self.p):
            self._token()
        if self.groups:
            raise RegexError("a group is not closed: ')' missing")
        return "".join(self.out)

    def _emit(self, text: str, quantifiable: bool) -> None:
        self.out.append(text)
        self.quantifiable = quantifiable

    def _token(self) -> None:
        c = self.p[self.i]
        self.i += 1
        if c == "\\":
            self._escape()
        elif c == "[":
            self._bracket()
        elif c == "(":
            self._open()
        elif c == ")":
            if not self.groups:
                raise RegexError("')' without a matching '('")
            kind = self.groups.pop()
            self._emit(")", kind in ("capture", "group"))   # a lookahead is an assertion
        elif c == "|":
            self._emit("|", False)
        elif c == "^":
            self._emit("^", False)
        elif c == "$":
            self._emit("\\Z", False)   # Python's $ also matches before a final newline
        elif c == ".":
            self._emit(_DOT, True)
        elif c in "*+?":
            self._quantifier(c)
        elif c == "{":
            match = _QUANTIFIER.match(self.p, self.i - 1)
            if match is None:
                raise RegexError("'{' that starts no {n}, {n,} or {n,m} quantifier")
            self.i = match.end()
            low, high = int(match[1]), match[3]
            if high and int(high) < low:
                raise RegexError(f"quantifier {match[0]} has its bounds the wrong way round")
            self._quantifier(match[0])
        elif c in "}]":
            raise RegexError(f"a lone '{c}' (escape it: \\{c})")
        else:
            self._emit(re.escape(c), True)

    def _quantifier(self, text: str) -> None:
        if not self.quantifiable:
            raise RegexError(f"'{text}' repeats nothing (a quantifier after a quantifier, an assertion or nothing)")
        if self.p.startswith("?", self.i):   # non-greedy
            self.i += 1
            text += "?"
        self._emit(text, False)

    def _open(self) -> None:
        if self.p.startswith("?", self.i):
            kind = {":": "group", "=": "lookahead", "!": "lookahead"}.get(self.p[self.i + 1: self.i + 2])
            if kind is None:
                what = self.p[self.i: self.i + 3]
                raise RegexError(f"'({what}' is not ECMAScript: only (?:, (?= and (?! are (no lookbehind, "
                                 "named or atomic groups, or inline flags)")
            self.groups.append(kind)
            self._emit("(" + self.p[self.i: self.i + 2], False)
            self.i += 2
        else:
            self.groups.append("capture")
            self.captures += 1
            self._emit("(", False)

    def _escape(self) -> None:
        if self.i >= len(self.p):
            raise RegexError("the pattern ends with a lone backslash")
        c = self.p[self.i]
        self.i += 1
        if c in "bB":
            self._emit("\\" + c, False)
        elif c in _CLASS_ESCAPES:
            self._emit("\\" + c, True)
        elif c.isdigit() and c != "0":
            number = c
            while self.i < len(self.p) and self.p[self.i].isdigit():
                number += self.p[self.i]
                self.i += 1
            if int(number) > self.captures:
                raise RegexError(f"back-reference \\{number} to a group that does not exist")
            self._emit(f"(?:\\{number})", True)
        else:
            self._emit(self._character_escape(c), True)

    def _character_escape(self, c: str) -> str:
        """A CharacterEscape after the backslash (outside or inside brackets)."""
        if c in _CONTROL:
            return _CONTROL[c]
        if c == "0":
            if self.i < len(self.p) and self.p[self.i].isdigit():
                raise RegexError("\\0 followed by a digit")
            return "\\x00"
        if c == "c":
            letter = self.p[self.i: self.i + 1]
            if not (letter.isascii() and letter.isalpha()):
                raise RegexError("\\c needs a control letter (A-Z, a-z)")
            self.i += 1
            return f"\\x{ord(letter) % 32:02x}"
        if c in "xu":
            digits = self.p[self.i: self.i + (2 if c == "x" else 4)]
            if len(digits) != (2 if c == "x" else 4) or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise RegexError(f"\\{c} needs {2 if c == 'x' else 4} hex digits")
            self.i += len(digits)
            return f"\\x{digits}" if c == "x" else f"\\u{digits}"
        if c.isalnum() or c == "_":
            raise RegexError(f"\\{c} is not an escape std::regex knows (\\A, \\Z, \\z, \\h, \\p and the like are Python's or PCRE's)")
        return re.escape(c)   # an identity escape: \. \| \( \$ ...

    def _bracket(self) -> None:
        negate = self.p.startswith("^", self.i)
        self.i += negate
        items: list[str] = []
        while True:
            if self.i >= len(self.p):
                raise RegexError("'[' without a closing ']'")
            c = self.p[self.i]
            self.i += 1
            if c == "]":
                break
            if c == "[" and self.p[self.i: self.i + 1] in (":", ".", "="):
                items.append(self._bracket_class(self.p[self.i]))
            elif c == "\\":
                if self.i >= len(self.p):
                    raise RegexError("'[' without a closing ']'")
                e = self.p[self.i]
                self.i += 1
                items.append("\\" + e if e in _CLASS_ESCAPES else "\\x08" if e == "b" else self._character_escape(e))
            elif c == "-":
                items.append("-" if items and self.p[self.i: self.i + 1] != "]" else "\\-")
            else:
                items.append(re.escape(c))
        if not items:   # ECMAScript: [] matches nothing, [^] any character
            self._emit("[\\s\\S]" if negate else "(?!)", True)
        else:
            self._emit("[" + ("^" if negate else "") + "".join(items) + "]", True)

    def _bracket_class(self, kind: str) -> str:
        """[:name:] (a character class), [.x.] or [=x=] (one character) inside brackets."""
        end = self.p.find(kind + "]", self.i + 1)
        if end < 0:
            raise RegexError(f"'[{kind}' without a closing '{kind}]'")
        name = self.p[self.i + 1: end]
        self.i = end + 2
        if kind == ":":
            if name not in _CLASSES:
                raise RegexError(f"[:{name}:] is not a character class")
            return _CLASSES[name]
        if len(name) != 1:
            raise RegexError(f"[{kind}{name}{kind}] names no single character")
        return re.escape(name)
