"""The probe's C program: its text (bpf/, or the package's copy in the .ext) and its
compilation by bcc with the sizes and a mode's -D flags (docs/design.md, "The kernel side")."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from osquery_netutil.kernel.memory import page_out_compiler, return_freed_memory
from osquery_netutil.kernel.preflight import ProbeError
from osquery_netutil.kernel.records import SIZES

# The program lives in the repository's bpf/; the packaged extension (.ext) carries a copy
# as package data.
BPF_DIR = Path(__file__).resolve().parents[3] / "bpf"
# The C program, in the order compiled: what both modes share, then each mode's programs.
BPF_SOURCES = ("netutil_exec.bpf.c", "netutil_exec_btf.bpf.c", "netutil_exec_tracepoint.bpf.c", "netutil_sock.bpf.c",
               "netutil_sock_send.bpf.c")


def bpf_source() -> str:
    """The C program's text, its files joined: from the repository, else from the package
    (the .ext)."""
    if (BPF_DIR / BPF_SOURCES[0]).is_file():
        return "\n".join((BPF_DIR / name).read_text() for name in BPF_SOURCES)
    data = resources.files("osquery_netutil").joinpath("data")
    return "\n".join(data.joinpath(name).read_text() for name in BPF_SOURCES)


def compile_program(defines: dict[str, int]) -> Any:
    """bcc's BPF object for the program with these -D flags (and the sizes); it
    attaches its programs as it loads them. An fentry the kernel refuses leaves its
    reason in the object's fentry_error."""
    from bcc import BPF

    class _Bpf(BPF):
        """bcc's BPF, where an fentry the kernel refuses to attach is noted, not fatal."""

        fentry_error = ""

        def attach_kfunc(self, fn_name: bytes = b"") -> "_Bpf":
            try:
                return super().attach_kfunc(fn_name=fn_name)
            except Exception as exc:   # bcc raises bare Exception
                self.fentry_error = str(exc)
                return self

    cflags = [f"-D{k}={v}" for k, v in {**SIZES, **defines}.items()] + ["-Wno-unused-function"]
    try:
        bpf = _Bpf(text=bpf_source().encode(), cflags=cflags)
    except Exception as exc:  # bcc raises bare Exception with the compiler/verifier log
        raise ProbeError(f"the BPF program failed to load: {str(exc).strip()[:2000]}") from exc
    return_freed_memory()   # clang's freed heap (~25 MB)
    page_out_compiler()     # and its code (~85 MB), which never runs again
    return bpf


def run_stats(bpf: Any) -> dict[str, tuple[int, int]]:
    """Per program bcc loaded: (runs, total ns), as the kernel counts them (only while
    sysctl kernel.bpf_stats_enabled is 1)."""
    stats = {}
    for name, fn in bpf.funcs.items():
        info = Path(f"/proc/self/fdinfo/{fn.fd}").read_text()
        fields = dict(line.split(":\t", 1) for line in info.splitlines() if ":\t" in line)
        stats[name.decode()] = (int(fields.get("run_cnt", 0)), int(fields.get("run_time_ns", 0)))
    return stats
