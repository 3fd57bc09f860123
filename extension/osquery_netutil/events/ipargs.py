"""IP literals in a command line: the ip_args and public_ip_args columns.

Two strengths of evidence:

* Anywhere in any argument, the unambiguous forms: dotted quads (strictly 0-255, no
  leading zeros, not glued to letters, dots or dashes, so `1.2.3.4-beta` and `v1.2.3.4`
  are versions, not addresses), IPv6 (bare or in brackets) and IPv4-mapped IPv6.
* In host position only, also the forms that curl, ping and glibc's inet_aton accept and
  that naive regexes miss: `127.1`, `0x7f.0.0.1`, `0177.0.0.1`, `2130706433`. Host position
  is a URL's host, `user@host` or `@server`, a socat address's host, and the target
  arguments of the tools that take one (ping, nc, ssh, nmap, ...). Elsewhere those forms
  are numbers and versions, and are left alone.

Addresses are returned normalised (`127.1` -> `127.0.0.1`, `::ffff:8.8.8.8` -> `8.8.8.8`),
once each, in order of appearance.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Sequence
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_STRICT_V4 = re.compile(rf"(?<![\w.\-]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.\-])")
_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+(?:%[\w.\-]+)?)\]")
_PIECES = re.compile(r"[^\s,;=/'\"()<>@\[\]]+")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
_AT_HOST = re.compile(r"(?:^|[^\s@/]*)@(\[[^\]]+\]|[^\s:/@,;]+)")
_LOOSE_V4 = re.compile(r"(?:0[xX][0-9A-Fa-f]+|\d+)(?:\.(?:0[xX][0-9A-Fa-f]+|\d+)){0,3}")

# Tools whose positional arguments name hosts: which positionals are targets, and which
# short options take a value (so `ping -i 1.5 127.1` does not read 1.5 as an address).
_TARGETS: dict[str, tuple[str, str]] = {
    "netcat": ("all", "IiMmOpqsTVwXx"),
    "ncat": ("all", "dimopsw"),
    "telnet": ("first", "belnX"),
    "ssh": ("first", "BbcDEeFIiJLlmOoPpQRSWw"),
    "ping": ("last", "cFiIlmMpQsStTwW"),
    "traceroute": ("last", "AfgiImNpqstwz"),
    "mtr": ("last", "aBcfGiImPQsuYZ"),
    "arping": ("last", "cfiIsTw"),
    "nmap": ("all", "bDeginopsS"),
    "nping": ("all", "cgpS"),
    "masscan": ("all", "cepr"),
    "zmap": ("all", "BbcfGiMnopPrstTwX"),
    "fping": ("all", "BbcCfgHiIOpqrSt"),
    "hping3": ("all", "acdEfgHIKMNopstTwWx"),
}
_SMALLEST_BARE_NUMBER = 1 << 24   # a bare integer below this is a port or a count, not 1.x.x.x


def parse_loose_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """inet_aton's forms: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x); the
    last part fills the remaining bytes. None if text is not one."""
    if not _LOOSE_V4.fullmatch(text):
        return None
    values = []
    for part in text.split("."):
        try:
            if part[:2].lower() == "0x":
                values.append(int(part[2:], 16))
            elif len(part) > 1 and part[0] == "0":
                values.append(int(part[1:], 8))
            else:
                values.append(int(part))
        except ValueError:   # 8 or 9 in an octal part
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    if not head and last < _SMALLEST_BARE_NUMBER:
        return None
    number = last
    for i, v in enumerate(head):
        number += v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def _strict(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _host(text: str) -> IPAddress | None:
    """An address in host position: strict forms, brackets, or inet_aton's loose forms."""
    text = text.strip("[]")
    return _strict(text) or parse_loose_ipv4(text)


def _anywhere(arg: str) -> Iterable[tuple[int, IPAddress]]:
    for m in _STRICT_V4.finditer(arg):
        yield m.start(), ipaddress.IPv4Address(m.group())
    for m in _BRACKETED.finditer(arg):
        ip = _strict(m.group(1))
        if ip is not None:
            yield m.start(), ip
    for m in _PIECES.finditer(arg):
        if m.group().count(":") >= 2:
            ip = _strict(m.group())
            if ip is not None:
                yield m.start(), ip


def _host_positions(arg: str) -> Iterable[tuple[int, IPAddress]]:
    for m in _URL.finditer(arg):
        try:
            host = urlsplit(m.group()).hostname
        except ValueError:
            continue
        ip = _host(host) if host else None
        if ip is not None:
            yield m.start(), ip
    for m in _AT_HOST.finditer(arg):
        ip = _host(m.group(1))
        if ip is not None:
            yield m.start(1), ip


def _targets(utility: str, args: Sequence[str]) -> list[str]:
    """The positional arguments of a host-taking tool that name its target(s)."""
    if utility == "socat":   # addresses like TCP:host:port, OPENSSL:host:port,verify=0
        return [a.split(":")[1] for a in args if a.count(":") >= 2]
    mode, value_options = _TARGETS.get(utility, ("", ""))
    if not mode:
        return []
    positionals: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg.startswith("--") or arg == "-":
            continue
        elif arg.startswith("-"):
            for i, flag in enumerate(arg[1:], 1):
                if flag in value_options:
                    skip_next = i == len(arg) - 1   # value in the next argument
                    break
        else:
            positionals.append(arg)
    if not positionals:
        return []
    return {"first": positionals[:1], "last": positionals[-1:]}.get(mode, positionals)


def find_ips(utility: str, argv: Sequence[str]) -> list[IPAddress]:
    """IP literals in argv[1:] of a run of `utility` (catalog name), normalised, once each."""
    args = list(argv[1:])
    found: list[IPAddress] = []
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        hits = sorted([*_anywhere(value), *_host_positions(value)], key=lambda hit: hit[0])
        found.extend(ip for _, ip in hits)
    for target in _targets(utility, args):
        ip = _host(target)
        if ip is not None:
            found.append(ip)
    return list(dict.fromkeys(found))


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, link-local, shared, reserved,
    documentation, multicast or unspecified."""
    return ip.is_global and not ip.is_multicast


def is_public_address(text: str) -> bool:
    """is_public of an address written as text ('' or not an address: False)."""
    try:
        return is_public(ipaddress.ip_address(text))
    except ValueError:
        return False


def ip_columns(utility: str, argv: Sequence[str]) -> tuple[str, str]:
    """(ip_args, public_ip_args) as the table stores them: comma-separated."""
    ips = find_ips(utility, argv)
    return ",".join(map(str, ips)), ",".join(str(ip) for ip in ips if is_public(ip))
