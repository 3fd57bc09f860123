"""The struct members btf mode reads, by the -D name the C program uses, and the flags
that pass their offsets to it. The offsets come from the running kernel's BTF, never from
headers (btf.py says why)."""

from __future__ import annotations

from osquery_netutil.kernel.btf import Btf, BtfError

BTF_FIELDS: dict[str, tuple[str, str]] = {
    "OFF_TASK_MM": ("task_struct", "mm"),
    "OFF_TASK_PID": ("task_struct", "pid"),
    "OFF_MM_ARG_START": ("mm_struct", "arg_start"),
    "OFF_MM_ARG_END": ("mm_struct", "arg_end"),
    "OFF_BPRM_FILENAME": ("linux_binprm", "filename"),
    "OFF_BPRM_INTERP": ("linux_binprm", "interp"),
    "OFF_BPRM_ARGC": ("linux_binprm", "argc"),
    "OFF_BPRM_BUF": ("linux_binprm", "buf"),
    # The executed image's identity (bprm->file->f_inode: i_ino, i_sb->s_dev).
    "OFF_BPRM_FILE": ("linux_binprm", "file"),
    "OFF_FILE_INODE": ("file", "f_inode"),
    "OFF_INODE_INO": ("inode", "i_ino"),
    "OFF_INODE_SB": ("inode", "i_sb"),
    "OFF_SB_DEV": ("super_block", "s_dev"),
}
# The registers a syscall was entered with (x86_64: its number, then its arguments in
# di, si, dx, r10, r8, r9) and the numbers of the syscalls the programs look for (x86_64's),
# passed wherever a program reads a syscall's arguments (the fentry, the send tracepoint).
SYSCALLS = {"NR_WRITE": 1, "NR_WRITEV": 20, "NR_SENDTO": 44, "NR_SENDMSG": 46, "NR_EXECVE": 59,
            "NR_SENDMMSG": 307, "NR_EXECVEAT": 322}
REGS_FIELDS: dict[str, tuple[str, str]] = {
    "OFF_REGS_NR": ("pt_regs", "orig_ax"),
    "OFF_REGS_ARG2": ("pt_regs", "si"),
    "OFF_REGS_ARG3": ("pt_regs", "dx"),
    "OFF_REGS_ARG5": ("pt_regs", "r8"),
    "OFF_REGS_ARG6": ("pt_regs", "r9"),
}
# The fentry that names scripts without #! reads the exec syscall's number and argv
# (execve's second argument, execveat's third). x86_64 only: bcc 0.26 attaches fentry
# nowhere else.
FENTRY_FUNCTION = "security_bprm_check"
NOT_NAMED_WITHOUT_FENTRY = "scripts run without a #! line are not named in the ancestry"
# The raw tracepoint that reads what tracked processes send (bpf/netutil_sock_send.bpf.c):
# the socket's addresses and protocol, and the syscall's registers. x86_64 only (its
# syscall numbers and argument registers are x86_64's) and where the kernel has it (6.3+);
# elsewhere the egress program reads them.
SEND_TRACEPOINT = "sock_send_length"
# A socket's addresses and ports (struct sock_common), which both socket builds read.
SOCK_COMMON_FIELDS: dict[str, tuple[str, str]] = {
    "OFF_SKC_DADDR": ("sock_common", "skc_daddr"),
    "OFF_SKC_DPORT": ("sock_common", "skc_dport"),
    "OFF_SKC_NUM": ("sock_common", "skc_num"),
    "OFF_SKC_FAMILY": ("sock_common", "skc_family"),
    "OFF_SKC_V6_DADDR": ("sock_common", "skc_v6_daddr"),
}
SEND_FIELDS: dict[str, tuple[str, str]] = {**SOCK_COMMON_FIELDS, "OFF_SK_PROTOCOL": ("sock", "sk_protocol")}
SENDS_AT_SYSCALL_MACHINE = "x86_64"
# The raw tracepoints that tell a TCP connect's outcome and a tracked listener's ended
# connections (bpf/netutil_sock.bpf.c, OUTCOMES_AT_TRACEPOINTS), by name and program;
# where the kernel lacks either (before 5.14), sock_ops does.
OUTCOME_TRACEPOINTS = (("inet_sk_error_report", "netutil_sk_error"), ("tcp_destroy_sock", "netutil_tcp_destroy"))
OUTCOME_FIELDS: dict[str, tuple[str, str]] = {
    **SOCK_COMMON_FIELDS,
    "OFF_SKC_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "OFF_SKC_NET": ("sock_common", "skc_net.net"),
    "OFF_SKC_V6_RCV_SADDR": ("sock_common", "skc_v6_rcv_saddr"),
    "OFF_SKC_COOKIE": ("sock_common", "skc_cookie"),
    "OFF_SK_ERR": ("sock", "sk_err"),
    "OFF_TCP_RCV_NXT": ("tcp_sock", "rcv_nxt"),
    "OFF_TCP_SEGS_OUT": ("tcp_sock", "segs_out"),
    "OFF_TCP_BYTES_ACKED": ("tcp_sock", "bytes_acked"),
    "OFF_NET_INUM": ("net", "ns.inum"),
    "OFF_INET_SPORT": ("inet_sock", "inet_sport"),
}


# The image's change time, which content verdicts are given for: its members have moved
# (6.11: i_ctime_sec and i_ctime_nsec; 6.6: __i_ctime; before: i_ctime, a timespec64
# whose tv_sec and tv_nsec come first and at 8).
CTIME_MEMBERS = (("i_ctime_sec", "i_ctime_nsec"), ("__i_ctime.tv_sec", "__i_ctime.tv_nsec"),
                 ("i_ctime.tv_sec", "i_ctime.tv_nsec"))
# Members read in one span each (one helper call instead of one per member, ~60 ns
# each), with their sizes: bprm's (the file, argc, filename and interp) and the inode's
# (i_sb, i_ino and the ctime). The C program takes them from <NAME>_LO, <NAME>_SPAN bytes.
SPANS: dict[str, dict[str, int]] = {
    "BPRM": {"OFF_BPRM_FILE": 8, "OFF_BPRM_ARGC": 4, "OFF_BPRM_FILENAME": 8, "OFF_BPRM_INTERP": 8},
    "INODE": {"OFF_INODE_SB": 8, "OFF_INODE_INO": 8, "OFF_INODE_CTIME_SEC": 8, "OFF_INODE_CTIME_NSEC": 4},
    "REGS": {"OFF_REGS_NR": 8, "OFF_REGS_ARG2": 8, "OFF_REGS_ARG3": 8, "OFF_REGS_ARG5": 8, "OFF_REGS_ARG6": 8},
    "SKC": {"OFF_SKC_DADDR": 4, "OFF_SKC_DPORT": 2, "OFF_SKC_NUM": 2, "OFF_SKC_FAMILY": 2, "OFF_SKC_V6_DADDR": 16},
    # a tracked TCP socket's outcome or end: the above, its local addresses and its namespace
    "SKE": {"OFF_SKC_DADDR": 4, "OFF_SKC_RCV_SADDR": 4, "OFF_SKC_DPORT": 2, "OFF_SKC_NUM": 2, "OFF_SKC_FAMILY": 2,
            "OFF_SKC_NET": 8, "OFF_SKC_V6_DADDR": 16, "OFF_SKC_V6_RCV_SADDR": 16},
}
SPAN_MAX = 160   # bytes of the BPF stack one span may take


def btf_offsets(btf: Btf) -> dict[str, int]:
    """The member offsets btf mode needs, from the kernel's BTF. Raises BtfError."""
    offsets = {name: btf.offset(struct, member) for name, (struct, member) in BTF_FIELDS.items()}
    for sec, nsec in CTIME_MEMBERS:
        try:
            offsets |= {"OFF_INODE_CTIME_SEC": btf.offset("inode", sec), "OFF_INODE_CTIME_NSEC": btf.offset("inode", nsec)}
            break
        except BtfError:
            continue
    else:
        raise BtfError("struct inode has none of " + ", ".join(sec.split(".")[0] for sec, _ in CTIME_MEMBERS))
    return offsets


def spans(offsets: dict[str, int]) -> dict[str, int]:
    """<NAME>_LO and <NAME>_SPAN of each of SPANS whose members are all in offsets. Raises
    BtfError when members are too far apart for the BPF stack (a kernel that moved them)."""
    defines: dict[str, int] = {}
    for name, members in SPANS.items():
        if not members.keys() <= offsets.keys():
            continue
        lo = min(offsets[m] for m in members)
        span = max(offsets[m] + size for m, size in members.items()) - lo
        if span > SPAN_MAX:
            raise BtfError(f"the members {', '.join(members)} span {span} bytes, more than {SPAN_MAX}")
        defines |= {f"{name}_LO": lo, f"{name}_SPAN": span}
    return defines


def btf_defines(btf: Btf, offsets: dict[str, int], fentry: bool, verdicts: bool, machine: str) -> dict[str, int]:
    """The -D flags of btf mode: its offsets, content verdicts when wanted (a sensor
    writes them; a bare probe does not), the fentry's when it is wanted, the send
    tracepoint's on x86_64 kernels that have it (machine: platform.machine()), and the
    outcome tracepoints' where the kernel has both. Raises BtfError."""
    defines = {"PROBE_BTF": 1, "CONTENT_VERDICTS": int(verdicts), **offsets}
    extra: dict[str, tuple[str, str]] = {}
    sends_at_syscall = machine == SENDS_AT_SYSCALL_MACHINE and btf.has_raw_tracepoint(SEND_TRACEPOINT)
    if fentry or sends_at_syscall:
        defines |= SYSCALLS
        extra |= REGS_FIELDS
    if fentry:
        defines["HAVE_FENTRY"] = 1
    if sends_at_syscall:
        defines["SENDS_AT_SYSCALL"] = 1
        extra |= SEND_FIELDS
    if all(btf.has_raw_tracepoint(tracepoint) for tracepoint, _ in OUTCOME_TRACEPOINTS):
        try:   # a kernel without a member (CONFIG_NET_NS=n: no skc_net.net) keeps sock_ops
            defines |= {name: btf.offset(*field) for name, field in OUTCOME_FIELDS.items()}
            defines["OUTCOMES_AT_TRACEPOINTS"] = 1
        except BtfError:
            pass
    defines |= {name: btf.offset(*field) for name, field in extra.items()}
    return defines | spans(defines)
