"""Files the sensor trusts are refused when someone other than root could write them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from osquery_netutil.catalog import Catalog, CatalogError
from osquery_netutil.app.cli import main
from osquery_netutil.store.store import Store

GOOD_ENTRY = "utilities:\n  - {name: tool, basenames: [tool], category: recon, technique: T1016, description: x}\n"


def test_a_writable_catalog_is_refused_and_the_builtin_kept(place: Path) -> None:
    catalog = place / "extra.yaml"
    catalog.write_text(GOOD_ENTRY)
    catalog.chmod(0o644)
    assert Catalog.load(catalog).by_name("tool") is not None
    catalog.chmod(0o666)
    with pytest.raises(CatalogError, match="group- or world-writable: chmod go-w"):
        Catalog.load(catalog)
    catalog.chmod(0o644)
    link = place / "link.yaml"
    link.symlink_to(catalog)
    with pytest.raises(CatalogError, match="symlink"):
        Catalog.load(link)
    if os.geteuid() == 0:
        os.chown(catalog, 65534, 65534)
        with pytest.raises(CatalogError, match="not root: chown root"):
            Catalog.load(catalog)


def test_a_writable_replay_file_is_not_loaded(place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = place / "good.jsonl", place / "bad.jsonl"
    for f in (good, bad):
        f.write_text('{"utility": "curl", "cmdline": "curl http://x/"}\n')
    bad.chmod(0o666)
    store = place / "events.db"
    assert main(["replay", str(good), str(bad), "--store", str(store)]) == 1
    assert "bad.jsonl: the replay file is group- or world-writable" in capsys.readouterr().err
    with Store(store, readonly=True) as kept:
        assert kept.stats()[0] == 1


def test_a_store_in_a_shared_directory_is_refused(place: Path) -> None:
    shared = place / "shared"
    shared.mkdir()
    shared.chmod(0o1777)   # like /tmp
    with pytest.raises(Exception, match="store file's directory is group- or world-writable"):
        Store(shared / "events.db")
