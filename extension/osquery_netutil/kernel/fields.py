"""The struct members btf mode reads, by the -D name the C program uses, and the flags
that pass their offsets to it. The offsets come from the running kernel's BTF, never from
headers (btf.py says why)."""

from __future__ import annotations

from osquery_netutil.kernel.btf import Btf

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
# The fentry that names scripts without #! reads the exec syscall's number and argv from
# the registers it was entered with. x86_64 only: bcc 0.26 attaches fentry nowhere else.
FENTRY_FUNCTION = "security_bprm_check"
FENTRY_FIELDS: dict[str, tuple[str, str]] = {
    "OFF_REGS_NR": ("pt_regs", "orig_ax"),
    "OFF_REGS_EXECVE_ARGV": ("pt_regs", "si"),      # execve(filename, argv, envp)
    "OFF_REGS_EXECVEAT_ARGV": ("pt_regs", "dx"),    # execveat(dfd, filename, argv, envp, flags)
}
FENTRY_CONSTANTS = {"NR_EXECVE": 59, "NR_EXECVEAT": 322}
NOT_NAMED_WITHOUT_FENTRY = "scripts run without a #! line are not named in the ancestry"


def btf_offsets(btf: Btf) -> dict[str, int]:
    """The member offsets btf mode needs, from the kernel's BTF. Raises BtfError."""
    return {name: btf.offset(struct, member) for name, (struct, member) in BTF_FIELDS.items()}


def btf_defines(btf: Btf, offsets: dict[str, int], fentry: bool) -> dict[str, int]:
    """The -D flags of btf mode: its offsets, and the fentry's when it is wanted."""
    defines = {"PROBE_BTF": 1, **offsets}
    if fentry:
        defines |= {"HAVE_FENTRY": 1, **FENTRY_CONSTANTS}
        defines |= {name: btf.offset(*field) for name, field in FENTRY_FIELDS.items()}
    return defines
