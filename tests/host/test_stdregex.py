"""The embedded host's regex_match and regex_split behave as osquery's: C++ std::regex with
its ECMAScript grammar (libc++, osquery's Linux builds), not Python's re.

The table says, per pattern, what osquery answers (from osquery/sql/sqlite_string.cpp,
the C++ standard's [re.grammar] and libc++'s parser): the match, NULL, or its error."""

from __future__ import annotations

import re

import pytest

from osquery_netutil.packs import source as packs, verify
from osquery_netutil.host.database import Host
from osquery_netutil.host.errors import QueryError
from osquery_netutil.host.stdregex import RegexError, compile_ecmascript

INVALID = "Invalid regex"

# (pattern, input, what regex_match(input, pattern, 0) gives: text, None, or an error)
TABLE = [
    # Refused by std::regex, accepted by Python.
    ("(?<=a)b", "abc", INVALID),                  # lookbehind
    ("(?<!a)b", "abc", INVALID),
    ("(?i)abc", "ABC", INVALID),                  # inline flags
    ("(?P<x>a)", "a", INVALID),                   # named groups, both spellings
    ("(?<x>a)", "a", INVALID),
    ("(?>a+)b", "aab", INVALID),                  # atomic group
    ("(?#note)a", "a", INVALID),                  # comment group
    ("(a)?(?(1)b|c)", "ab", INVALID),             # conditional
    ("a*+", "aaa", INVALID),                      # possessive quantifiers
    ("a++", "aaa", INVALID),
    ("a{2}+", "aaa", INVALID),
    ("\\Aabc", "abc", INVALID),                   # \A \Z \z and other letter escapes
    ("abc\\Z", "abc", INVALID),
    ("abc\\z", "abc", INVALID),
    ("\\h", " ", INVALID),
    ("\\p{L}", "a", INVALID),
    ("a{", "a{", INVALID),                        # a lone brace or bracket is no character
    ("a}", "a}", INVALID),
    ("a]", "a]", INVALID),
    ("a{,2}", "aa", INVALID),
    ("a{3,1}", "aaa", INVALID),
    ("*a", "a", INVALID),
    ("^*", "a", INVALID),                         # an assertion takes no quantifier
    ("(?=a)*", "a", INVALID),
    ("(a", "a", INVALID),
    ("a)", "a", INVALID),
    ("[a", "a", INVALID),
    ("\\2(a)", "a", INVALID),                     # back-reference to no group
    ("\\c1", "a", INVALID),
    ("\\x4", "a", INVALID),
    ("[[:nope:]]", "a", INVALID),
    ("a\\", "a", INVALID),
    ("a" * 257, "a" * 257, "Invalid regex: too big, max size is 256 bytes"),
    # Accepted by both, read alike once translated.
    ("a" * 256, "a" * 256, "a" * 256),
    ("\\d+", "x١٢3", "3"),                        # \d is ASCII: Python's alone takes Arabic digits
    ("\\w+", "éa_1", "a_1"),
    ("\\s", "a\u00a0b c", " "),
    ("[[:alpha:]]+", "12abC3", "abC"),           # POSIX classes in brackets
    ("[[:digit:][:space:]]+", "ab1 2c", "1 2"),
    ("[^[:alnum:]]", "ab-c", "-"),
    ("[[:xdigit:]]+", "zzBEEFzz", "BEEF"),
    ("[[:punct:]]", "ab!c", "!"),
    ("[[.-.]]", "a-b", "-"),
    ("[]a]", "]a", INVALID),                      # ECMAScript: [] is an empty class, then a lone ]
    ("[^]", "\n", "\n"),                          # [^] is any character, newlines too
    ("a[]", "a", None),                           # [] matches nothing
    ("a.c", "a\nc", None),                        # . stops at line terminators, \r too
    ("a.c", "a\rc", None),
    ("a.c", "abc", "abc"),
    ("abc$", "abc\n", None),                      # $ is the end, not before a final newline
    ("^abc$", "abc", "abc"),
    ("(?:ab)+", "ababx", "abab"),
    ("a(?=b)", "ab", "a"),
    ("a(?!b)", "ab a", "a"),
    ("(a)\\1", "aa", "aa"),
    ("(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)\\10", "abcdefghijj", "abcdefghijj"),
    ("a{2,}?", "aaaa", "aa"),
    ("\\x41\\u0042\\cJ", "AB\n", "AB\n"),
    ("\\.\\|\\$\\(", ".|$(", ".|$("),
    ("[\\b]", "a\bb", "\b"),                      # \b in brackets is a backspace
    ("\\bnc\\b", "x nc -l", "nc"),
    ("[a-c-]+", "xa-cb", "a-cb"),
    ("a|", "b", ""),
    ("caf\u00e9", "un caf\u00e9", "caf\u00e9"),
]


@pytest.mark.parametrize(("pattern", "text", "expected"), TABLE, ids=[repr(t[0])[:40] for t in TABLE])
def test_regex_match_answers_as_osquery_does(pattern: str, text: str, expected: str | None) -> None:
    host = Host([])
    sql = "SELECT regex_match(?, ?, 0)"
    if expected is not None and expected.startswith(INVALID):
        with pytest.raises(QueryError) as caught:
            host.query(sql, (text, pattern))
        assert str(caught.value).endswith(expected), caught.value
    else:
        assert host.query(sql, (text, pattern))[1] == [(expected,)]


def test_regex_split_refuses_what_std_regex_refuses_with_osquerys_text() -> None:
    host = Host([])
    assert host.query("SELECT regex_split('a1b22c', '\\d+', 2)")[1] == [("c",)]
    for pattern in ("(?<=a)", "a" * 257, "\\A"):
        with pytest.raises(QueryError, match=r"Invalid regex$"):
            host.query("SELECT regex_split('abc', ?, 0)", (pattern,))


def test_refusals_say_why() -> None:
    with pytest.raises(RegexError, match="lookbehind"):
        compile_ecmascript("(?<=a)b")
    with pytest.raises(RegexError, match=r"\\A, \\Z"):
        compile_ecmascript("\\Aabc")


def test_every_pattern_in_the_packs_is_one_osquery_accepts() -> None:
    patterns = [p for q in packs.load() for p in verify.regex_literals(q.sql)]
    assert len(patterns) >= 20, "the packs' regex_match patterns should all be found"
    for pattern in patterns:
        assert isinstance(compile_ecmascript(pattern), re.Pattern), pattern
