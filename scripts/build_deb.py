"""Build dist/osquery-netutil_<version>_all.deb with plain dpkg-deb (no debhelper, no network).

What it installs:
  /usr/lib/osquery-netutil/osquery-netutil.ext   the extension, one zipapp (build_ext.py)
  /usr/sbin/osquery-netutil                      the same file as the command (launcher.py)
  /usr/share/osquery-netutil/packs/              the detections, fixtures and generated
                                                 osquery pack and Fleet files
  /etc/osquery-netutil/netutil.flags             settings (conffile)
  /lib/systemd/system/osquery-netutil.service    watch, for hosts without osquery
  /lib/systemd/system/osquery-netutil-fleetd.service
                                                 the extension on Fleet's osqueryd (fleetd),
                                                 made here from the unit above (fleetd_unit)
  /etc/logrotate.d/osquery-netutil               its results.log (conffile)
The maintainer scripts (packaging/) add the .ext to osquery's extensions.load and take it
out again, enable the fleetd unit where fleetd (orbit) is installed, else the watch
service where osqueryd is not, and keep the event store on purge unless asked
(packaging/postrm).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "extension"))
sys.path.insert(0, str(ROOT / "scripts"))

from build_ext import build as build_ext  # noqa: E402

from osquery_netutil import __version__  # noqa: E402

PACKAGING = ROOT / "packaging"
NAME = "osquery-netutil"
MAINTAINER = "osquery-netutil maintainers <osquery-netutil@users.noreply.github.com>"
CONTROL = f"""Package: {NAME}
Version: {{version}}
Architecture: all
Maintainer: {MAINTAINER}
Installed-Size: {{size}}
Depends: python3 (>= 3.9), python3-bpfcc, python3-apsw
Recommends: linux-headers-amd64 | linux-headers-arm64 | linux-headers-generic, logrotate
Suggests: osquery
Section: admin
Priority: optional
Description: network utilities run by intruders, as osquery tables and packs
 An eBPF exec probe (bcc) sees every exec of nc, socat, curl, wget, nslookup,
 dig, nmap, ssh and other network utilities, with the parent chain at exec
 time, the working directory, IP literals and the container. An osquery
 extension serves the rows as the table network_utility_execs; query packs
 (osquery and Fleet formats) flag utilities launched from writable
 directories, memfds or a container's own service, backdoor and tunnel
 arguments, DNS exfiltration, public IP literals and cloud metadata access.
 .
 Where osqueryd is installed the extension is autoloaded; where Fleet's
 agent (fleetd) runs, osquery-netutil-fleetd.service registers it with
 fleetd's osqueryd; elsewhere osquery-netutil.service runs the same
 detections and writes osquery result-log lines to
 /var/log/osquery-netutil/results.log.
"""
CONFFILES = ("/etc/osquery-netutil/netutil.flags", "/etc/logrotate.d/osquery-netutil")


def _gzip(source: Path, target: Path) -> None:
    """gzip -9n: no name, no time stamp (a reproducible file, as lintian asks)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src, open(target, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as out:
        shutil.copyfileobj(src, out)


def _install(source: Path, target: Path, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


# What differs on a fleetd host: orbit runs its own osqueryd, gives it
# --extensions_autoload=/opt/orbit/extensions.load after its flag file whenever Fleet
# delivers an extension, and rewrites that file from Fleet's agent options at every config
# fetch (fleetdm/fleet orbit/cmd/orbit/orbit.go, orbit/pkg/update/flag_runner.go); Fleet
# refuses extensions_autoload in command_line_flags (server/fleet/agent_options.go). So
# the extension is started beside orbit and registers on orbit's extension socket, and
# starts again (Restart=always) whenever orbit restarts osqueryd and the core goes away.
FLEETD_SOCKET = "/opt/orbit/orbit-osquery.em"
FLEETD_HEADER = """\
# osquery-netutil on hosts where Fleet's agent (fleetd, orbit) runs osqueryd: the extension,
# started beside orbit, registers its tables on orbit's extension socket; orbit's osqueryd
# reads no autoload list of ours (scripts/build_deb.py says why). When orbit restarts its
# osqueryd, the extension stays (--reconnect: its probe keeps recording) and registers with
# the next one; it writes the store and its socket beside orbit's. Made at build time from
# osquery-netutil.service: the same sandbox and capabilities, another command and paths.
"""
FLEETD = {
    "Description=osquery-netutil: network utilities run by intruders, seen by an eBPF exec probe":
        "Description=osquery-netutil: network utility tables for Fleet's osqueryd (fleetd)",
    "After=local-fs.target": "After=local-fs.target orbit.service\nConditionPathExists=/opt/orbit",
    "ExecStart=/usr/sbin/osquery-netutil watch --format json --log /var/log/osquery-netutil/results.log --pidfile /run/osquery-netutil/watch.pid":
        f"ExecStart=/usr/lib/osquery-netutil/osquery-netutil.ext --socket {FLEETD_SOCKET} --timeout 10 --interval 3 "
        "--reconnect",
    "# logrotate's postrotate sends SIGHUP through the pid file; `systemctl reload` does too.\nExecReload=/bin/kill -HUP $MAINPID\n": "",
    "Restart=on-failure": "Restart=always",
    "RuntimeDirectory=osquery-netutil\n": "",
    "# The store and the log are the only places written; everything else is read-only.":
        "# The store and the socket (orbit-osquery.em.<uuid>, beside orbit's) are the only places\n"
        "# written; everything else is read-only.",
    "ReadWritePaths=/var/osquery /var/log/osquery-netutil": "ReadWritePaths=/var/osquery /opt/orbit",
}


def fleetd_unit(watch_unit: str) -> str:
    """osquery-netutil-fleetd.service from osquery-netutil.service: its own header comment,
    the same sandbox and capabilities, another command. Each replaced line must be there."""
    unit = FLEETD_HEADER + "[Unit]" + watch_unit.split("[Unit]", 1)[1]
    for old, new in FLEETD.items():
        if unit.count(old) != 1:
            raise SystemExit(f"build_deb: packaging/osquery-netutil.service no longer has {old.strip()!r} once: "
                             "update FLEETD in scripts/build_deb.py")
        unit = unit.replace(old, new)
    return unit


def _script(name: str) -> str:
    """A maintainer script with the autoload functions inlined: postrm runs after the
    package's files are gone, so it cannot source them."""
    return (PACKAGING / name).read_text().replace("#AUTOLOAD#", (PACKAGING / "autoload.sh").read_text().strip())


def stage(tree: Path) -> None:
    """The package's files under tree, as they will be installed."""
    lib = tree / "usr/lib/osquery-netutil"
    lib.mkdir(parents=True)
    build_ext(lib / f"{NAME}.ext")
    (tree / "usr/sbin").mkdir(parents=True)
    (tree / "usr/sbin" / NAME).symlink_to(f"../lib/osquery-netutil/{NAME}.ext")
    shutil.copytree(ROOT / "packs", tree / "usr/share/osquery-netutil/packs",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _install(PACKAGING / "netutil.flags", tree / "etc/osquery-netutil/netutil.flags")
    _install(PACKAGING / "osquery-netutil.logrotate", tree / "etc/logrotate.d/osquery-netutil")
    _install(PACKAGING / "osquery-netutil.service", tree / "lib/systemd/system/osquery-netutil.service")
    fleetd = tree / "lib/systemd/system/osquery-netutil-fleetd.service"
    fleetd.write_text(fleetd_unit((PACKAGING / "osquery-netutil.service").read_text()))
    _gzip(PACKAGING / "osquery-netutil.8", tree / "usr/share/man/man8/osquery-netutil.8.gz")
    doc = tree / "usr/share/doc" / NAME
    _install(PACKAGING / "copyright", doc / "copyright")
    _gzip(PACKAGING / "changelog", doc / "changelog.gz")
    _gzip(ROOT / "README.md", doc / "README.md.gz")
    for path in tree.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
        elif path.is_file() and not path.is_symlink() and path.suffix != ".ext":
            path.chmod(0o644)


def control(tree: Path, version: str) -> None:
    debian = tree / "DEBIAN"
    debian.mkdir()
    debian.chmod(0o755)   # dpkg-deb refuses other modes
    size = sum(p.lstat().st_size for p in tree.rglob("*") if not p.is_dir()) // 1024 + 1
    (debian / "control").write_text(CONTROL.format(version=version, size=size))
    (debian / "conffiles").write_text("".join(f"{c}\n" for c in CONFFILES))
    sums = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(tree)}\n"
            for p in sorted(tree.rglob("*")) if p.is_file() and not p.is_symlink() and debian not in p.parents
            and f"/{p.relative_to(tree)}" not in CONFFILES]
    (debian / "md5sums").write_text("".join(sums))
    for name in ("postinst", "prerm", "postrm"):
        (debian / name).write_text(_script(name))
        (debian / name).chmod(0o755)
    for path in debian.iterdir():
        if path.name not in ("postinst", "prerm", "postrm"):
            path.chmod(0o644)


def build(output_dir: Path) -> Path:
    changelog = (PACKAGING / "changelog").read_text().split("\n", 1)[0]
    if f"({__version__})" not in changelog:
        raise SystemExit(f"build_deb: packaging/changelog's first entry ({changelog}) is not version {__version__}: "
                         "add an entry for it")
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / f"{NAME}_{__version__}_all.deb"
    with tempfile.TemporaryDirectory(prefix="netutil-deb-") as tmp:
        tree = Path(tmp) / "root"
        tree.mkdir()
        tree.chmod(0o755)   # the package's "./", whatever the umask
        stage(tree)
        control(tree, __version__)
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(output)],
                       check=True, stdout=subprocess.DEVNULL)
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    args = parser.parse_args()
    if shutil.which("dpkg-deb") is None:
        print("build_deb: dpkg-deb is not installed: run on Debian/Ubuntu (apt install dpkg)", file=sys.stderr)
        return 2
    path = build(args.output_dir)
    print(f"built {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
