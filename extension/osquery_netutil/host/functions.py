"""osquery's extra SQL functions, with osquery's semantics (osquery/sql/sqlite_string.cpp,
sqlite_network.cpp): regex_match, regex_split, split, concat, concat_ws, inet_aton,
in_cidr_block. Regular expressions are std::regex's (stdregex.py), so a pattern osquery
refuses is refused here too, with osquery's error text.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any, Sequence

from osquery_netutil.host.stdregex import MAX_SIZE as REGEX_MAX_SIZE, RegexError, compile_ecmascript


def value_text(value: Any) -> str:
    """What sqlite3_value_text gives osquery for a value (constraints, function arguments)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value)


def _regex(pattern: str, function: str) -> re.Pattern[str]:
    """The pattern as std::regex (ECMAScript) reads it, or osquery's own error text."""
    try:
        return compile_ecmascript(pattern)
    except RegexError:
        if function == "regex_match" and len(pattern.encode()) > REGEX_MAX_SIZE:
            raise ValueError(f"Invalid regex: too big, max size is {REGEX_MAX_SIZE} bytes") from None
        raise ValueError("Invalid regex") from None


def _index(value: Any) -> int | None:
    """sqlite3_value_int cast to size_t: negative indexes select nothing."""
    try:
        index = int(value)
    except (TypeError, ValueError):
        index = 0
    return index if index >= 0 else None


def regex_match(value: Any, pattern: Any, index: Any) -> str | None:
    """Group `index` (0: the whole match) of the first match of pattern in value, or NULL."""
    if value is None or pattern is None or index is None:
        return None
    match = _regex(value_text(pattern), "regex_match").search(value_text(value))
    i = _index(index)
    if match is None or i is None or i > (match.re.groups):
        return None
    group = match.group(i)
    return "" if group is None else group


def regex_split(value: Any, pattern: Any, index: Any) -> str | None:
    """Token `index` of value split by the regex (std::sregex_token_iterator, -1, as
    libc++ has it): with no match at all the whole value is the one token, even when it
    is empty (regex_split('', ',', 0) is ''); after the last match, a trailing empty
    token is not produced."""
    if value is None or pattern is None or index is None:
        return None
    if value_text(pattern) == "":
        raise ValueError("Invalid input to split function")
    text, tokens, last = value_text(value), [], 0
    matched = False
    for match in _regex(value_text(pattern), "regex_split").finditer(text):
        matched = True
        tokens.append(text[last:match.start()])
        last = match.end()
    if not matched or last < len(text):
        tokens.append(text[last:])
    i = _index(index)
    return tokens[i] if i is not None and i < len(tokens) else None


def split(value: Any, tokens: Any, index: Any) -> str | None:
    """Token `index` of value split on any of the characters in tokens; empty pieces
    dropped, then each trimmed (osquery::split)."""
    if value is None or tokens is None or index is None:
        return None
    delimiters = value_text(tokens)
    if delimiters == "":
        raise ValueError("Invalid input to split function")
    pieces = re.split("[" + re.escape(delimiters) + "]", value_text(value))
    pieces = [p.strip(" \t\n\v\f\r") for p in pieces if p != ""]
    i = _index(index)
    return pieces[i] if i is not None and i < len(pieces) else None


def _concat(separator: str, values: Sequence[Any]) -> str | None:
    if not values:
        return None
    out = []
    for i, value in enumerate(values):
        if value is None:
            continue
        out.append(value_text(value))
        if separator and i + 1 < len(values):
            out.append(separator)
    return "".join(out)


def concat(*values: Any) -> str | None:
    """Arguments joined, NULLs skipped."""
    return _concat("", values)


def concat_ws(*values: Any) -> str | None:
    """Arguments after the first joined by it, NULLs skipped (a separator still follows
    each non-NULL value that is not the last argument, as in osquery)."""
    if not values:
        raise ValueError("Missing separator to concat_ws")
    separator = "" if values[0] is None else value_text(values[0])
    return _concat(separator, values[1:])


def inet_aton(value: Any) -> int | None:
    """A dotted-quad IPv4 address as an integer; NULL for IPv6 or anything else."""
    if value is None:
        return None
    text = value_text(value)
    if ":" in text:
        return None
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        return None


def in_cidr_block(cidr: Any, address: Any) -> int:
    """1 if address is one of the hosts of the CIDR block (boost's network::hosts(): for
    IPv4 below /32 the network and broadcast addresses are not hosts), else 0."""
    if not isinstance(cidr, str):
        raise ValueError("CIDR must be a string")
    if not isinstance(address, str):
        raise ValueError("IP address must be a string")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError("IP address cannot be parsed") from None
    family = "v4" if ip.version == 4 else "v6"
    try:
        prefix = cidr.partition("/")[2]
        if not (prefix.isascii() and prefix.isdigit()):   # boost's make_network_v4/v6: a prefix length, not a netmask
            raise ValueError
        network = ipaddress.ip_network(cidr, strict=False)
        if network.version != ip.version:
            raise ValueError
    except ValueError:
        raise ValueError(f"CIDR for IP address {family} cannot be parsed") from None
    if ip.version == 6:
        return int(ip in network)
    if network.prefixlen == 32:
        return int(ip == network.network_address)
    return int(int(network.network_address) < int(ip) < int(network.broadcast_address))


FUNCTIONS: dict[str, tuple[Any, int]] = {
    "regex_match": (regex_match, 3),
    "regex_split": (regex_split, 3),
    "split": (split, 3),
    "concat": (concat, -1),
    "concat_ws": (concat_ws, -1),
    "inet_aton": (inet_aton, 1),
    "in_cidr_block": (in_cidr_block, 2),
}
