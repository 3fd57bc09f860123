#!/usr/bin/env bash
# One-time (and idempotent) set-up for osquery-netutil on Debian/Ubuntu, as root.
#
# Shared by the README's two commands (`make watch` and `make test`). Every step
# checks first and does nothing when already done, so a second run takes about a
# second. A prerequisite that cannot be installed stops set-up with one line that
# names it and the fix.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# --bench: also what `make bench` compares against (bpftrace, auditd, a static libc for
# the C test binary, g++ and SQLite's headers for osquery's regex_match in C++) and plots with
# (matplotlib).
BENCH=0
[ "${1:-}" = "--bench" ] && BENCH=1
PYTHON=${PYTHON:-python3}

die() { echo "setup: $*" >&2; exit 1; }
say() { echo "setup: $*"; }

# --- root ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, mounts and BPF need it): run 'sudo make ${MAKECMDGOALS:-test}'"
command -v apt-get >/dev/null || die "apt-get not found: this set-up supports Debian and Ubuntu only"

# --- Debian packages ------------------------------------------------------------------
# bcc from Debian (PyPI's 'bcc' is an unrelated package), the network utilities the probe
# tests really run, bpftool (the tests check our BTF offsets against it), and what the
# Debian package depends on (python3-apsw) and is checked with (lintian, logrotate, man-db
# for the unit's Documentation=; tests/app/test_package.py).
PACKAGES=(
  python3-bpfcc python3-apsw
  netcat-openbsd ncat socat curl wget dnsutils iputils-ping telnet whois
  openssh-client rsync nmap openssl git
  procps util-linux iproute2
  bpftool
  lintian logrotate man-db
)
[ "$BENCH" -eq 0 ] || PACKAGES+=(bpftrace auditd gcc libc6-dev g++ libsqlite3-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed: check the network path to the Debian/Ubuntu mirrors"
    apt_updated=1
  fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed: run it by hand to see why"
}
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"

# --- kernel headers -------------------------------------------------------------------
# bcc compiles the probe at start-up and needs a kernel build tree. The probe takes no
# struct layout from headers (btf mode reads offsets from the running kernel's BTF), so
# headers of another kernel version are good enough: take the exact ones when the
# distribution has them, else the distribution's default flavour.
KREL=$(uname -r)
KBUILD=/lib/modules/$KREL/build
if [ ! -e "$KBUILD/include" ]; then
  if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
    apt_install "linux-headers-$KREL"
  fi
  if [ ! -e "$KBUILD/include" ]; then
    flavour=linux-headers-amd64
    [ "$(dpkg --print-architecture)" = arm64 ] && flavour=linux-headers-arm64
    grep -qi ubuntu /etc/os-release && flavour=linux-headers-generic
    dpkg-query -W -f='${Status}' "$flavour" 2>/dev/null | grep -q "install ok installed" || apt_install "$flavour"
    arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 /usr/src/linux-headers-*-arm64 /usr/src/linux-headers-*-generic 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$arch_dir" ] || die "no kernel headers under /usr/src after installing $flavour: install headers for $KREL"
    common_dir=$(ls -d "${arch_dir%-*}"-common 2>/dev/null || ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || echo "$arch_dir")
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$arch_dir" "$KBUILD"
    ln -sfn "$common_dir" "/lib/modules/$KREL/source"
    say "linked $KBUILD -> $arch_dir (headers of another kernel: fine, the probe takes struct offsets from the running kernel's BTF, never from headers)"
  fi
fi

# --- tracefs and debugfs --------------------------------------------------------------
if [ ! -e /sys/kernel/tracing/events/syscalls ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
if ! mountpoint -q /sys/kernel/debug; then
  mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
fi
# btf mode needs the kernel's BTF; tracepoint mode, its fallback, the syscall tracepoints.
[ -r /sys/kernel/btf/vmlinux ] || [ -e /sys/kernel/tracing/events/syscalls/sys_enter_execve ] \
  || die "the kernel has neither BTF (/sys/kernel/btf/vmlinux: CONFIG_DEBUG_INFO_BTF) nor syscall tracepoints (CONFIG_FTRACE_SYSCALLS, tracefs at /sys/kernel/tracing): the probe has no way in"

# --- Python virtual environment -------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PYTHON --version 2>&1)"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    apt_install python3-venv
    "$PYTHON" -m venv "$VENV" || die "cannot create a venv with $PYTHON: install python3-venv"
  fi
fi
extras=test
[ "$BENCH" -eq 0 ] || extras=test,bench
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)-$extras"
if [ ! -e "$stamp" ]; then
  say "installing Python dependencies ($extras) into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]" \
    || die "pip install failed: check access to PyPI"
  [ "$BENCH" -eq 1 ] || rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

# bcc is Debian's pure-Python package over libbcc. Expose only that package to the venv
# (a link inside site-packages), not the whole of Debian's dist-packages, whose compiled
# modules may belong to another Python.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -d /usr/lib/python3/dist-packages/bcc ] || die "python3-bpfcc installed but /usr/lib/python3/dist-packages/bcc is missing: reinstall python3-bpfcc"
ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
"$VENV/bin/python" -c 'import bcc' 2>/dev/null || die "bcc does not import in $VENV: reinstall python3-bpfcc"

# --- BPF syscall ----------------------------------------------------------------------
"$VENV/bin/python" - <<'EOF' || exit 1
import sys
from osquery_netutil.kernel.preflight import check_bpf_syscall
problem = check_bpf_syscall()
if problem:
    sys.exit(f"setup: {problem}")
EOF
