"""The kernel/user-space contract, checked against the C program itself: the flags, filter
values and counter indices that bpf/netutil_exec.bpf.c #defines are the ones records.py defines, and
every size and struct offset the loader passes as a -D flag is one the program uses. A
change on one side that the other does not follow fails here, before any probe loads."""

from __future__ import annotations

import re

from osquery_netutil.kernel import fields, program, records, sockets

SOURCE = program.bpf_source()
DEFINES = {name: int(value) for name, value in re.findall(r"^#define ([A-Z][A-Z0-9_]*) (\d+)\b", SOURCE, re.M)}


def test_event_and_ancestry_flags_are_the_programs() -> None:
    mirrored_names = r"[FIN]_[A-Z_]+|TRACK_(KEEP|END)"
    mirrored = {name: getattr(records, name) for name in dir(records) if re.fullmatch(mirrored_names, name)}
    defined = {name: value for name, value in DEFINES.items() if re.fullmatch(mirrored_names, name)}
    assert mirrored == defined
    ancestry = [v for n, v in mirrored.items() if n.startswith("I_")]
    assert records.A_FORKED not in ancestry and "A_FORKED" not in SOURCE   # user space's own bit


def test_socket_actions_and_outcomes_are_the_programs() -> None:
    mirrored = {name: getattr(sockets, name) for name in dir(sockets) if re.fullmatch(r"[AS]_[A-Z_0-9]+", name)}
    defined = {name: value for name, value in DEFINES.items() if re.fullmatch(r"[AS]_[A-Z_0-9]+", name)}
    assert mirrored == defined


def test_counters_are_read_in_the_programs_order() -> None:
    indices = {name: value for name, value in DEFINES.items() if name.startswith("C_") and name != "C_COUNT"}
    assert [name.removeprefix("C_").lower() for name, _ in sorted(indices.items(), key=lambda kv: kv[1])] == \
        list(records.COUNTERS)
    assert DEFINES["C_COUNT"] == len(records.COUNTERS)


def test_every_size_and_offset_passed_is_used_and_not_defined_twice() -> None:
    for name in [*records.SIZES, *fields.BTF_FIELDS, *fields.REGS_FIELDS, *fields.SEND_FIELDS, *fields.OUTCOME_FIELDS,
                 *fields.SYSCALLS]:
        assert re.search(rf"\b{name}\b", SOURCE), f"{name} is passed with -D but the program never uses it"
        assert name not in DEFINES, f"{name} is #defined in the program and passed with -D: one place only"
