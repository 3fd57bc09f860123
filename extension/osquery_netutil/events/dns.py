"""The question of a DNS message as a tracked socket sent it (RFC 1035, section 4.1).

The kernel copies the first bytes of what was sent to port 53 (bpf/netutil_sock_send.bpf.c);
a TCP socket's start with the message's two-byte length, unless the sender wrote that
apart (its own send, then the message in the next). Only queries are read: anything
else (an answer sent back by a tracked resolver, a message cut short, garbage sent to
port 53) gives None, and the row keeps its action without a name.
"""

from __future__ import annotations

import struct

# QTYPE values by name (IANA's "Resource Record (RR) TYPEs"); others print as TYPEnnn (RFC 3597).
TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
         28: "AAAA", 33: "SRV", 35: "NAPTR", 43: "DS", 48: "DNSKEY", 52: "TLSA", 64: "SVCB", 65: "HTTPS",
         99: "SPF", 252: "AXFR", 255: "ANY", 257: "CAA"}
_HEADER = 12
_MAX_NAME = 255


def question(payload: bytes, tcp: bool) -> tuple[str, str] | None:
    """(name, type) of the first question of a DNS query, or None when payload is none.
    The name has no final dot (c2.example.com; the root is ".").
    Labels keep their bytes: a byte that is not printable ASCII, a dot or a backslash in
    a label is written \\DDD (RFC 4343's presentation form), so an exfiltrated binary
    label stays visible and unambiguous."""
    if tcp:
        return _first_question(payload[2:]) or _first_question(payload)
    return _first_question(payload)


def _first_question(payload: bytes) -> tuple[str, str] | None:
    if len(payload) < _HEADER + 5:
        return None
    flags, qdcount = struct.unpack_from("!HH", payload, 2)
    if flags & 0x8000 or flags & 0x7800 or qdcount < 1:   # a response, or not a standard QUERY
        return None
    labels: list[str] = []
    at, size = _HEADER, 0
    while True:
        if at >= len(payload):
            return None
        length = payload[at]
        if length == 0:
            at += 1
            break
        if length > 63 or at + 1 + length > len(payload):   # a pointer (no question has one) or cut short
            return None
        size += length + 1
        if size > _MAX_NAME:
            return None
        labels.append(_presentation(payload[at + 1: at + 1 + length]))
        at += 1 + length
    if at + 4 > len(payload):
        return None
    (qtype,) = struct.unpack_from("!H", payload, at)
    return ".".join(labels) or ".", TYPES.get(qtype, f"TYPE{qtype}")


def _presentation(label: bytes) -> str:
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b not in (0x2E, 0x5C) else f"\\{b:03d}" for b in label)
