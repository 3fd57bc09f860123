"""The catalog: built-in coverage, comm truncation, and every user-file error message."""

from __future__ import annotations

from pathlib import Path

import pytest

from osquery_netutil.catalog import CATEGORIES, Catalog, CatalogError

# The union of the peers' lists (shared/reference/peer-detections.md, section (a)).
PEER_TOOLS = """
nslookup dig host whois iodine dnscat dnscat2 nstxd tuns httpdns curl wget lwp-download ftp tftp scp sftp rsync dcp
nc ncat netcat nc.traditional netcat.openbsd socat telnet ssh rsh nmap zmap masscan zgrab
rustscan fping pnscan hping3 nping naabu zenmap ping mtr tcpdump tshark ngrep mitmproxy
sshuttle chisel gost ngrok ptunnel-ng hans 3proxy wstunnel drill delv aria2c nc.openbsd traceroute
""".split()


def test_builtin_catalog_covers_the_peers_lists() -> None:
    catalog = Catalog.load()
    assert len(catalog) >= 45
    missing = [t for t in PEER_TOOLS if catalog.by_basename(t) is None]
    assert not missing
    assert {u.category for u in catalog.utilities} == set(CATEGORIES)
    assert catalog.by_basename("nc.openbsd").name == "netcat"


def test_comm_truncated_to_15_bytes_still_finds_the_utility() -> None:
    catalog = Catalog.load()
    assert catalog.by_comm("inetutils-telne").name == "telnet"     # inetutils-telnet, cut by the kernel
    assert catalog.by_comm("nc").name == "netcat"
    assert catalog.by_comm("inetutils-telx") is None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "extra.yaml"
    path.write_text(text)
    return path


GOOD = "utilities:\n  - {name: mytool, basenames: [mytool], category: tunnel, technique: T1572, description: in-house tunnel}\n"


def test_a_user_file_adds_entries(tmp_path: Path) -> None:
    catalog = Catalog.load(write(tmp_path, GOOD))
    assert catalog.by_basename("mytool").category == "tunnel"
    assert catalog.by_basename("curl") is not None


@pytest.mark.parametrize(
    "text, message",
    [
        ("utilities:\n  - {name: x\n", r"extra.yaml:\d+: YAML error .*: fix the YAML syntax"),
        ("tools: []\n", r"extra.yaml:1: expected a mapping with one key, 'utilities:'"),
        ("utilities:\n  - just-a-string\n", r"each item of 'utilities' must be a mapping"),
        (GOOD.replace("description:", "colour: red, description:"), r"extra.yaml:2: unknown key 'colour': allowed keys are name, basenames"),
        (GOOD.replace("technique: T1572, ", ""), r"extra.yaml:2: missing key 'technique'"),
        (GOOD.replace("basenames: [mytool]", "basenames: mytool"), r"extra.yaml:2: 'basenames' must be a non-empty list of strings"),
        (GOOD.replace("basenames: [mytool]", "basenames: [/usr/bin/mytool]"), r"'basenames' must list file names \(no '/'\)"),
        (GOOD.replace("name: mytool", "name: 7"), r"extra.yaml:2: 'name' must be a non-empty string"),
        (GOOD.replace("category: tunnel", "category: evil"), r"category 'evil' unknown: use one of dns, transfer"),
        (GOOD.replace("name: mytool", "name: curl"), r"extra.yaml:2: duplicate name 'curl' \(built in\): names must be unique"),
        (GOOD + GOOD.replace("utilities:\n", "").replace("basenames: [mytool]", "basenames: [other]"),
         r"extra.yaml:3: duplicate name 'mytool' \(line 2\)"),
        (GOOD.replace("basenames: [mytool]", "basenames: [nc]"), r"basename 'nc' already belongs to 'netcat': list each basename once"),
        (GOOD.replace("category: tunnel", "category: tunnel, args: s_client"), r"extra.yaml:2: 'args' must list arguments"),
        (GOOD.replace("category: tunnel", "category: tunnel, argz: [x]"), r"unknown key 'argz': allowed keys are .*, args"),
    ],
)
def test_a_bad_user_file_names_file_line_and_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        Catalog.load(write(tmp_path, text))


def test_an_unreadable_user_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"missing.yaml: cannot read \(No such file or directory\)"):
        Catalog.load(tmp_path / "missing.yaml")

