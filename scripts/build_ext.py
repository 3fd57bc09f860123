"""Build dist/osquery-netutil.ext: one executable file that osquery can autoload.

A zipapp holding the osquery_netutil package, the eBPF C source and the pure-Python parts
of its dependencies, copied from the installed environment (so building needs no
network). It runs on the host's Debian/Ubuntu Python, where python3-bpfcc provides bcc
(and python3-apsw the command's SQLite): `#!/usr/bin/python3` unless --python says
otherwise. Compiled speed-ups of thrift and PyYAML cannot load from a zip; both fall back
to their pure-Python code. The same file is the `osquery-netutil` command when run under
that name or with a command first (launcher.py).

Every module is also compiled by that interpreter, its .pyc beside its source: zipimport
cannot write a cache, so without them each start compiles them all again, which under
osqueryd's CPUQuota=20% took the extension 1.9-2.6 s to register, against the 3 s osqueryd
waits by default (bench/cpu_quota.py). A .pyc of another Python version is ignored by
zipimport, which then reads the source.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("osquery_netutil", "osquery", "thrift", "yaml", "future")
MAIN = "import sys\nfrom osquery_netutil.app.launcher import main\nsys.exit(main())\n"


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith((".so", ".pyc"))}


def build(output: Path, python: str = "/usr/bin/python3") -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        for name in PACKAGES:
            source = Path(importlib.import_module(name).__file__).parent
            shutil.copytree(source, staging / name, ignore=_ignore)
        for program in sorted((ROOT / "bpf").glob("*.bpf.c")):   # program.BPF_SOURCES
            shutil.copy(program, staging / "osquery_netutil" / "data")
        (staging / "__main__.py").write_text(MAIN)
        # unchecked-hash: zipimport checks no timestamp (a zip keeps them to 2 s).
        subprocess.run([python, "-m", "compileall", "-q", "-b", "--invalidation-mode", "unchecked-hash", str(staging)],
                       check=True, stdout=subprocess.DEVNULL)
        output.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(staging, output, interpreter=python, compressed=True)
    output.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)   # 0755: osquery refuses writable ones
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, nargs="?", default=ROOT / "dist" / "osquery-netutil.ext")
    parser.add_argument("--python", default="/usr/bin/python3", help="interpreter for the #! line")
    args = parser.parse_args()
    if not Path(args.python).is_file() or not os.access(args.python, os.X_OK):
        print(f"build_ext: {args.python} is not an executable interpreter here: the .ext would not start "
              "(osquery would log only that it failed); install python3 or pass --python PATH", file=sys.stderr)
        return 2
    path = build(args.output, args.python)
    print(f"built {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
