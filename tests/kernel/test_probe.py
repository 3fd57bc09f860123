"""The eBPF probe on the real kernel: real utilities, run by real scripts in /tmp."""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from osquery_netutil.catalog import Catalog
from osquery_netutil.kernel.memory import compiler_mappings
from osquery_netutil.kernel.fields import NOT_NAMED_WITHOUT_FENTRY
from osquery_netutil.kernel.preflight import ProbeError, preflight
from osquery_netutil.kernel.probe import Probe
from osquery_netutil.kernel.records import A_FORKED, F_MATCH_COMM, F_MATCH_PATH, F_SCRIPT, I_SCRIPT, I_SCRIPT_NOEXEC, SIZES, ExecRecord

from tests.conftest import need
from testkit.support import Collector, DnsServer, HttpServer, tiny_elf, write_executable

pytestmark = pytest.mark.probe

x86_64_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="the tiny test ELF is x86_64 code")


def test_utilities_run_by_a_tmp_script_arrive_with_argv_parent_and_ancestry(
    probe: Probe, collector: Collector, workdir: Path
) -> None:
    with HttpServer() as http, DnsServer() as dns:
        commands = [
            f"nc -z -w 2 127.0.0.1 {http.port}",
            f"nslookup -port={dns.port} -timeout=2 -retry=1 x.test 127.0.0.1",
            f"curl -s -m 5 -o /dev/null http://127.0.0.1:{http.port}/",
            f"wget -q -T 5 -t 1 -O /dev/null http://127.0.0.1:{http.port}/",
            f"dig @127.0.0.1 -p {dns.port} +time=2 +tries=1 x.test",
            f"socat -u OPEN:/dev/null TCP:127.0.0.1:{http.port}",
        ]
        pidfile = workdir / "script.pid"
        script = write_executable(
            workdir / "dropper.sh", "#!/bin/sh\n" + f"echo $$ > {pidfile}\n" + "\n".join(commands) + "\n"
        )
        mark = collector.mark()
        run = subprocess.run([str(script)], capture_output=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert dns.queries, "the DNS tools never reached the loopback DNS server"
    script_pid = int(pidfile.read_text())

    path_env = os.environ["PATH"]
    for command in commands:
        argv = tuple(a.encode() for a in shlex.split(command))
        hits = collector.wait_for(lambda r: r.argv == argv, since=mark)
        assert len(hits) == 1, f"{command!r}: {len(hits)} records"
        rec = hits[0]
        assert rec.ppid == script_pid
        assert rec.filename == shutil.which(argv[0].decode(), path=path_env).encode()
        assert rec.argc == len(argv) and not rec.args_truncated
        assert rec.comm == argv[0]
        assert rec.flags & F_MATCH_COMM
        assert rec.pid not in (0, script_pid) and rec.uid == os.getuid()
        assert probe.ancestry(rec.pid).ppid == script_pid

    # The script itself is forwarded (it lives in /tmp) and, after it exited, the
    # kernel still names it as the parent of everything above. btf mode reads argv from
    # the new image, where the kernel put the #! interpreter first; tracepoint mode reads
    # what the caller passed.
    (script_rec,) = collector.wait_for(lambda r: r.pid == script_pid, since=mark)
    assert script_rec.filename == str(script).encode() and script_rec.flags & F_MATCH_PATH
    argv = (b"/bin/sh", str(script).encode()) if probe.mode == "btf" else (str(script).encode(),)
    assert script_rec.argv == argv and script_rec.argc == len(argv)
    assert bool(script_rec.flags & F_SCRIPT) == (probe.mode == "btf")
    assert not os.path.exists(f"/proc/{script_pid}")
    parent = probe.ancestry(script_pid)
    assert parent is not None and parent.file == str(script).encode()
    assert parent.head == argv
    assert bool(parent.flags & I_SCRIPT) == (probe.mode == "btf")


@x86_64_only
def test_a_process_living_microseconds_is_caught(probe: Probe, collector: Collector, workdir: Path) -> None:
    nc = write_executable(workdir / "nc", tiny_elf())   # exits after three instructions
    mark = collector.mark()
    procs = [subprocess.Popen([str(nc), "-z", "127.0.0.1", str(i)]) for i in range(20)]
    pids = {p.pid for p in procs}
    assert all(p.wait(timeout=10) == 0 for p in procs)
    hits = collector.wait_for(lambda r: r.pid in pids, count=20, since=mark)
    assert {r.pid for r in hits} == pids
    assert all(r.comm == b"nc" and r.argv[1:3] == (b"-z", b"127.0.0.1") for r in hits)


def test_non_catalog_execs_are_filtered_in_the_kernel(probe: Probe, collector: Collector) -> None:
    loop = "i=0; while [ $i -lt 200 ]; do /usr/bin/true; /usr/bin/id -u; /usr/bin/uname; /usr/bin/env true; /usr/bin/date; i=$((i+1)); done"
    before = probe.counters()
    mark = collector.mark()
    spawner = subprocess.run(["/bin/sh", "-c", f"echo $$; {loop}"], capture_output=True, timeout=120, check=True)
    spawner_pid = int(spawner.stdout.split()[0])
    probe.drain()
    time.sleep(0.3)
    after = probe.counters()
    received = collector.since(mark)
    assert after.execs_seen - before.execs_seen >= 1000
    assert not [r for r in received if r.ppid == spawner_pid], "a non-catalog exec reached user space"
    # Whatever was forwarded meanwhile came from elsewhere on the host and was delivered.
    assert after.forwarded - before.forwarded == len(received)
    assert after.lost == before.lost


@x86_64_only
def test_many_long_and_binary_arguments(probe: Probe, collector: Collector, workdir: Path) -> None:
    nc = str(write_executable(workdir / "nc", tiny_elf()))
    many = [f"a{i}" for i in range(300)]
    # 200 KiB of argv: Linux caps one argument at 128 KiB (MAX_ARG_STRLEN), so two of 100 KiB.
    huge = "B" * (100 * 1024)
    binary = [b"\xff\xfe\x80raw", b"caf\xc3\xa9", b"", b"quote'\"$(x)`;|&"]
    mark = collector.mark()
    p_many = subprocess.Popen([nc, *many])
    p_huge = subprocess.Popen([nc, huge, huge])
    p_bin = subprocess.Popen([nc.encode(), *binary])
    for p in (p_many, p_huge, p_bin):
        assert p.wait(timeout=10) == 0

    (r_many,) = collector.wait_for(lambda r: r.pid == p_many.pid, since=mark)
    assert r_many.argc == 301 and r_many.args_truncated
    assert r_many.argv == tuple(a.encode() for a in [nc, *many[: SIZES["MAX_ARGS"] - 1]])

    # Each argument is cut at the same length in both modes; tracepoint mode reads them
    # one by one, btf mode reads argv's first 9 KiB in one go (the first 100 KiB fill it).
    (r_huge,) = collector.wait_for(lambda r: r.pid == p_huge.pid, since=mark)
    cut = huge[: SIZES["ARG_MAX_LEN"] - 1].encode()
    assert r_huge.argc == 3 and r_huge.args_truncated
    assert r_huge.argv == ((nc.encode(), cut) if probe.mode == "btf" else (nc.encode(), cut, cut))

    (r_bin,) = collector.wait_for(lambda r: r.pid == p_bin.pid, since=mark)
    assert r_bin.argv == (nc.encode(), *binary) and r_bin.argc == 5 and not r_bin.args_truncated


@x86_64_only
def test_argc_is_exact_beyond_the_kept_arguments(probe: Probe, collector: Collector, workdir: Path) -> None:
    nc = str(write_executable(workdir / "nc", tiny_elf()))
    mark = collector.mark()
    procs = {n: subprocess.Popen([nc, *(["x"] * (n - 1))]) for n in (64, 65, 1000, 4000)}
    for p in procs.values():
        assert p.wait(timeout=10) == 0
    for n, p in procs.items():
        (rec,) = collector.wait_for(lambda r, pid=p.pid: r.pid == pid, since=mark)
        assert rec.argc == n
        assert rec.args_truncated == (n > SIZES["MAX_ARGS"])


@x86_64_only
def test_fexecve_of_a_memfd_is_reported_with_its_fd_path(probe: Probe, collector: Collector) -> None:
    code = (
        "import os, sys\n"
        "fd = os.memfd_create('payload', 0)\n"
        "os.write(fd, bytes.fromhex(sys.argv[1]))\n"
        "os.execve(fd, ['kworker', '-c', 'id'], {})\n"
    )
    mark = collector.mark()
    proc = subprocess.Popen([sys.executable, "-c", code, tiny_elf().hex()])
    assert proc.wait(timeout=30) == 0
    # The python exec before it is forwarded too when the venv lives under /tmp.
    (rec,) = collector.wait_for(lambda r: r.pid == proc.pid and r.argv[0] == b"kworker", since=mark)
    assert rec.filename.startswith(b"/dev/fd/"), rec.filename
    assert rec.argv == (b"kworker", b"-c", b"id") and rec.flags & F_MATCH_PATH


def test_a_failed_exec_is_not_reported(probe: Probe, collector: Collector, workdir: Path) -> None:
    missing = workdir / "nc"          # a catalog name in a forwarded directory, but absent
    denied = write_executable(workdir / "curl", b"not executable")
    denied.chmod(0o644)
    before = probe.counters()
    mark = collector.mark()
    for path in (missing, denied):
        with pytest.raises(OSError):
            subprocess.run([str(path), "x"])
    probe.drain()
    time.sleep(0.3)
    assert not [r for r in collector.since(mark) if r.filename.startswith(str(workdir).encode())]
    # Only tracepoint mode sees a failed exec (at syscall exit); btf mode hooks successes.
    failed = probe.counters().failed - before.failed
    assert failed >= 2 if probe.mode == "tracepoint" else failed == 0


@x86_64_only
def test_a_prefix_of_the_users_own_is_forwarded_and_nothing_beside_it(catalog: Catalog) -> None:
    """The kernel's quick rejections (first bytes of names and prefixes) let through what
    the user adds: a prefix starting with a byte no built-in one starts with, and "/"."""
    need(None if os.geteuid() == 0 else "needs root")
    top = Path(tempfile.mkdtemp(prefix="netutil-probe-", dir="/"))   # "/n...": no built-in prefix starts so
    try:
        top.chmod(0o700)
        inside = write_executable(top / "agent", tiny_elf())
        for prefixes, forwarded in (([f"{top}/"], {str(inside)}), (["/"], {str(inside), "/usr/bin/true"})):
            got: list[ExecRecord] = []
            with Probe(catalog.kernel_names(), got.append, forward_prefixes=prefixes) as probe:
                for exe in (str(inside), "/usr/bin/true"):
                    os.waitpid(os.posix_spawn(exe, [exe], {}), 0)
                time.sleep(0.2)
                probe.drain()
            mine = {r.filename.decode() for r in got if r.ppid == os.getpid()}
            assert mine == forwarded, prefixes
            assert all(r.flags & F_MATCH_PATH for r in got if r.ppid == os.getpid())
    finally:
        shutil.rmtree(top)


def test_an_unusable_forward_prefix_is_refused_with_the_fix() -> None:
    with pytest.raises(ProbeError, match="must be absolute, end with '/'"):
        Probe(["nc"], lambda r: None, forward_prefixes=["tmp"])


def test_loading_without_root_names_the_cause() -> None:
    need(None if os.geteuid() == 0 else "needs root to drop to another user and back")
    os.seteuid(65534)
    try:
        with pytest.raises(ProbeError, match="needs root: run as root"):
            preflight()
    finally:
        os.seteuid(0)


def test_scripts_without_exec_stay_named_in_the_ancestry(probe: Probe, collector: Collector, workdir: Path) -> None:
    # A subshell forks without exec'ing: it runs the script's image.
    forked = write_executable(workdir / "forked.sh", "#!/bin/sh\n( nc -h 2>/dev/null; true )\n")
    # No #! line: exec fails with ENOEXEC and bash interprets the file in the child it
    # forked. (dash instead re-execs /bin/sh with the script as argument: see below.)
    plain = write_executable(workdir / "plain.sh", "nc -h 2>/dev/null\n")
    mark = collector.mark()
    subprocess.run([str(forked)], timeout=30)
    subprocess.run(["bash", "-c", f"{plain}; true"], timeout=30)
    subprocess.run(["dash", "-c", f"{plain}; true"], timeout=30)

    # btf mode names a script without #! from an fentry; where the kernel refuses those,
    # the probe says so (status row) and the chain shows the shell that interprets it.
    named = probe.mode == "tracepoint" or NOT_NAMED_WITHOUT_FENTRY not in probe.mode_note
    cases = [(forked, A_FORKED)] + ([(plain, I_SCRIPT_NOEXEC)] if named else [])
    for script, flag in cases:
        hits = collector.wait_for(
            lambda r: r.comm == b"nc" and (a := probe.ancestry(r.ppid)) is not None and a.file == str(script).encode(),
            since=mark,
        )
        assert len(hits) == 1, script
        assert probe.ancestry(hits[0].ppid).flags & flag
    if not named:
        (by_bash,) = collector.wait_for(
            lambda r: r.comm == b"nc" and (a := probe.ancestry(r.ppid)) is not None and a.flags & A_FORKED
            and a.head[-1:] == (f"{plain}; true".encode(),),
            since=mark,
        )
    (by_dash,) = collector.wait_for(
        lambda r: r.comm == b"nc" and (a := probe.ancestry(r.ppid)) is not None
        and a.file in (b"/bin/sh", b"/usr/bin/sh") and a.head[-1:] == (str(plain).encode(),),
        since=mark,
    )
    assert not probe.ancestry(by_dash.ppid).flags & I_SCRIPT_NOEXEC


def test_the_compiler_does_not_stay_resident_once_the_probe_is_loaded(probe: Probe) -> None:
    with open("/proc/self/maps") as f:
        assert compiler_mappings(f.read()), "bcc compiles with LLVM: its libraries should be mapped"
    resident_kb, in_compiler = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if not line[0].isupper():          # a mapping's first line, as in /proc/self/maps
                in_compiler = bool(compiler_mappings(line))
            elif line.startswith("Rss:") and in_compiler:
                resident_kb += int(line.split()[1])
    # About 85 MB when left alone; what stays is the libraries' relocated data.
    assert resident_kb < 16 * 1024, f"LLVM and clang keep {resident_kb // 1024} MB resident"
