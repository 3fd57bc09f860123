"""btf mode: offsets from the kernel's BTF, checked against bpftool, no syscall hook, and a
wrong offset refused with the reason."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from osquery_netutil.kernel.btf import VMLINUX, Btf, BtfError
from osquery_netutil.catalog import Catalog
from osquery_netutil.kernel.fields import BTF_FIELDS, REGS_FIELDS, SEND_FIELDS, btf_defines, btf_offsets
from osquery_netutil.kernel.preflight import ProbeError, fentry_problem
from osquery_netutil.kernel.probe import Probe
from osquery_netutil.kernel.program import compile_program
from osquery_netutil.events.sensor import Sensor
from osquery_netutil.store.store import Store

from tests.conftest import need, probe_unavailable

PROG_TYPE_TRACEPOINT, PROG_TYPE_RAW_TRACEPOINT, PROG_TYPE_TRACING = 5, 17, 26


def _kernel_btf() -> Btf:
    need(None if VMLINUX.is_file() else f"{VMLINUX} is missing: the kernel has no BTF")
    return Btf.load()


def _bpftool_structs(names: set[str]) -> dict[int, tuple[str, list[tuple[str, int, int]]]]:
    """bpftool's raw dump: type id -> (name, [(member, type id, bit offset)]) of every
    struct and union (anonymous ones too, which named ones contain)."""
    need(None if shutil.which("bpftool") else "bpftool is not installed (scripts/setup.sh installs it)")
    dump = subprocess.run(["bpftool", "btf", "dump", "file", str(VMLINUX), "format", "raw"],
                          capture_output=True, text=True, check=True, timeout=120).stdout
    types: dict[int, tuple[str, list[tuple[str, int, int]]]] = {}
    current: list[tuple[str, int, int]] | None = None
    for line in dump.splitlines():
        head = re.match(r"\[(\d+)\] (STRUCT|UNION) '([^']*)'", line)
        if head:
            current = [] if head[3] in names or head[3] == "(anon)" else None
            if current is not None:
                types[int(head[1])] = (head[3], current)
        elif line.startswith("["):
            current = None
        elif current is not None:
            member = re.match(r"\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)", line)
            if member:
                current.append((member[1], int(member[2]), int(member[3])))
    return types


def _bpftool_offset(types: dict[int, tuple[str, list[tuple[str, int, int]]]], struct: str, member: str) -> int:
    def find(members: list[tuple[str, int, int]]) -> int | None:
        for name, type_id, bits in members:
            if name == member:
                return bits
            if name == "(anon)" and type_id in types:
                inner = find(types[type_id][1])
                if inner is not None:
                    return bits + inner
        return None

    (members,) = [m for name, m in types.values() if name == struct][:1]
    bits = find(members)
    assert bits is not None and bits % 8 == 0, f"{struct}.{member}"
    return bits // 8


def test_offsets_equal_what_bpftool_reads_from_the_same_btf() -> None:
    btf = _kernel_btf()
    fields = {**BTF_FIELDS, **REGS_FIELDS, **SEND_FIELDS}
    types = _bpftool_structs({struct for struct, _ in fields.values()})
    for name, (struct, member) in fields.items():
        assert btf.offset(struct, member) == _bpftool_offset(types, struct, member), name
    assert btf.has_raw_tracepoint("sched_process_exec") and not btf.has_raw_tracepoint("no_such_tracepoint")
    # mm_struct keeps arg_start in an anonymous struct: the walk into it is what is proven.
    assert btf.offset("mm_struct", "arg_start") > 0


def test_a_missing_struct_member_or_a_blob_that_is_not_btf_is_refused_by_name() -> None:
    btf = _kernel_btf()
    with pytest.raises(BtfError, match="struct task_struct has no member no_such_field"):
        btf.offset("task_struct", "no_such_field")
    with pytest.raises(BtfError, match="struct no_such_struct is not in the kernel's BTF"):
        btf.offset("no_such_struct", "x")
    with pytest.raises(BtfError, match="not BTF"):
        Btf(b"\0" * 64)
    with pytest.raises(BtfError, match="cannot read"):
        Btf.load(Path("/nonexistent/vmlinux"))


def _held_bpf(pid: int) -> tuple[list[int], list[str], int]:
    """What a process holds, from /proc (not from our bookkeeping): the types of its BPF
    programs, the tracepoint names of its raw tracepoint links, its perf events (how
    classic tracepoints are attached)."""
    progs, links, perf_events = [], [], 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in info.splitlines() if ":\t" in line)
        if target == "anon_inode:bpf-prog":
            progs.append(int(fields["prog_type"]))
        elif target == "anon_inode:bpf_link" and fields.get("link_type") == "raw_tracepoint":
            links.append(fields["tp_name"].strip())
        elif target == "anon_inode:[perf_event]":
            perf_events += 1
    return progs, links, perf_events


HOLDER = """
import sys, time
from osquery_netutil.catalog import Catalog
from osquery_netutil.kernel.probe import Probe
probe = Probe(Catalog.load().kernel_names(), lambda rec: None, mode=sys.argv[1])
probe.start()
print(probe.mode, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("mode", ["btf", "tracepoint"])
def test_btf_mode_attaches_no_syscall_tracepoint(mode: str) -> None:
    """A process running the probe in btf mode holds raw tracepoint programs on exec and
    fork (and an fentry where the kernel allows it), nothing else; tracepoint mode, the
    control, holds classic tracepoint programs on perf events."""
    need(probe_unavailable())
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, mode], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == mode
        progs, links, perf_events = _held_bpf(holder.pid)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    if mode == "btf":
        assert progs and set(progs) <= {PROG_TYPE_RAW_TRACEPOINT, PROG_TYPE_TRACING}, progs
        assert sorted(links) == ["sched_process_exec", "task_newtask"]
        assert perf_events == 0
    else:
        assert set(progs) == {PROG_TYPE_TRACEPOINT} and perf_events == len(progs) == 6


@pytest.mark.parametrize("field", ["OFF_MM_ARG_START", "OFF_TASK_PID", "OFF_BPRM_ARGC", "OFF_BPRM_FILENAME", "OFF_BPRM_INTERP"])
def test_a_wrong_offset_makes_btf_mode_refuse_itself_and_fall_back(catalog: Catalog, field: str) -> None:
    need(probe_unavailable())
    offsets = btf_offsets(_kernel_btf())
    offsets[field] += 8   # the next field over: a plausible mistake, readable memory
    probe = Probe(catalog.kernel_names(), lambda rec: None, btf_offsets=offsets)
    probe.start()
    try:
        assert probe.mode == "tracepoint"
        assert probe.mode_note.startswith("btf mode refused: the self-check exec")
        assert "the BTF offsets do not fit this kernel" in probe.mode_note or "was not reported" in probe.mode_note
    finally:
        probe.stop()
    forced = Probe(catalog.kernel_names(), lambda rec: None, mode="btf", btf_offsets=offsets)
    with pytest.raises(ProbeError, match="btf mode refused: .*--probe-mode tracepoint"):
        forced.start()


def test_the_status_row_names_the_mode_and_why_btf_was_refused(catalog: Catalog, place: Path) -> None:
    need(probe_unavailable())
    offsets = btf_offsets(_kernel_btf())
    with Store(place / "events.db") as store:
        for wrong, mode in ((False, "btf"), (True, "tracepoint")):
            bad = {**offsets, "OFF_TASK_PID": offsets["OFF_TASK_PID"] + 8} if wrong else None
            sensor = Sensor(catalog, store, btf_offsets=bad)
            sensor.start()
            try:
                status = sensor.status()
            finally:
                sensor.stop()
            assert status["state"] == "running" and status["probe_mode"] == mode
            if wrong:
                assert status["probe_mode_note"].startswith("btf mode refused: the self-check exec read parent 0")
            else:
                assert not status["probe_mode_note"].startswith("btf mode refused")


def test_the_fentry_program_compiles_and_a_kernel_that_refuses_it_is_noted_not_fatal() -> None:
    """The program that names scripts without #! is built even where the kernel will not
    load it (this VM answers EPERM), so that its C is checked here too."""
    need(probe_unavailable())
    btf = _kernel_btf()
    bpf = compile_program(btf_defines(btf, btf_offsets(btf), fentry=True, verdicts=True, machine=platform.machine()))
    try:
        loaded = {name.decode() for name in bpf.funcs}
        assert {"raw_tracepoint__sched_process_exec", "raw_tracepoint__task_newtask"} <= loaded
        if fentry_problem(btf) is None:
            assert bpf.fentry_error == "" and "kfunc__security_bprm_check" in loaded
        else:
            assert bpf.fentry_error, "the kernel refused fentry programs, the loader should say so"
    finally:
        bpf.cleanup()
