"""The question of a DNS message, read from the bytes a tracked socket sent."""

from __future__ import annotations

import struct

from osquery_netutil.events.dns import question


def query(name: bytes, qtype: int, flags: int = 0x0100, qdcount: int = 1) -> bytes:
    labels = b"".join(bytes([len(label)]) + label for label in name.split(b".") if label) + b"\0"
    return struct.pack("!HHHHHH", 0x1234, flags, qdcount, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def test_a_query_s_name_and_type() -> None:
    assert question(query(b"c2.example.com", 1), tcp=False) == ("c2.example.com", "A")
    assert question(query(b"x.example", 16), tcp=False) == ("x.example", "TXT")
    assert question(query(b"x.example", 10), tcp=False) == ("x.example", "NULL")
    assert question(query(b"x.example", 4242), tcp=False) == ("x.example", "TYPE4242")


def test_tcp_has_a_length_first() -> None:
    message = query(b"a.b.example", 28)
    assert question(struct.pack("!H", len(message)) + message, tcp=True) == ("a.b.example", "AAAA")


def test_tcp_whose_length_was_sent_apart_is_read_from_its_start() -> None:
    # A sender that writes the two-byte length, then the message: the second send is read alone.
    message = query(b"split.example", 1)
    assert question(message, tcp=True) == ("split.example", "A")
    assert question(struct.pack("!H", len(message)), tcp=True) is None


def test_bytes_that_are_not_printable_stay_visible() -> None:
    assert question(query(b"a\x00b.c\\d.example", 1), tcp=False) == ("a\\000b.c\\092d.example", "A")


def test_what_is_no_question_gives_none() -> None:
    message = query(b"c2.example.com", 1)
    assert question(message[:20], tcp=False) is None                          # cut short
    assert question(query(b"c2.example.com", 1, flags=0x8180), tcp=False) is None   # a response
    assert question(query(b"c2.example.com", 1, flags=0x2800), tcp=False) is None   # an UPDATE
    assert question(query(b"c2.example.com", 1, qdcount=0), tcp=False) is None
    assert question(message[:12] + b"\xc0\x0c" + message[-4:], tcp=False) is None  # a pointer
    assert question(b"GET / HTTP/1.1\r\n\r\n", tcp=False) is None
    assert question(message[:12] + (b"\x3f" + b"a" * 63) * 5 + b"\0" + message[-4:], tcp=False) is None  # over 255


def test_the_root() -> None:
    assert question(query(b"", 2), tcp=False) == (".", "NS")
