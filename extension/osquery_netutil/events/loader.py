"""The program a dynamic loader was asked to run: `ld.so [OPTIONS] PROGRAM [ARGS]`.

Run as a command, glibc's and musl's loaders map PROGRAM themselves: the kernel execs
only the loader (comm `ld-linux-x86-64`), so without this the utility is never a row.
The options are those of glibc's `elf/rtld.c` (the argument loop of `dl_main`) and
musl's `ldso/dynlink.c` (`__dls3`): the ones listed in WITH_VALUE take the next argument.
"""

from __future__ import annotations

from dataclasses import dataclass

from osquery_netutil.catalog import LOADERS

WITH_VALUE = frozenset({
    "--library-path", "--preload", "--audit", "--argv0", "--inhibit-rpath",
    "--glibc-hwcaps-prefix", "--glibc-hwcaps-mask",
})
# Asked to describe PROGRAM, not to run it (ldd passes --list or --verify).
NOT_RUNNING = frozenset({"--list", "--verify", "--help", "--version", "--list-tunables", "--list-diagnostics"})
# ldd runs the loader with this in its environment: it lists PROGRAM's libraries, does not
# run it. The environment is read while the loader lives, and ldd itself (a script run
# from one of LDD) says so when it has already exited.
TRACE_ENV = b"LD_TRACE_LOADED_OBJECTS=1"
LDD = ("/usr/bin/ldd", "/bin/ldd")
_COMMS = frozenset(name.encode()[:15] for name in LOADERS)


@dataclass(frozen=True)
class Loaded:
    program: str                 # PROGRAM as given (relative to the loader's cwd, or absolute)
    argv: tuple[str, ...]        # the program's own argv: argv[0] (PROGRAM, or --argv0's value) first


def is_loader(comm: bytes) -> bool:
    """Whether comm is a dynamic loader's (the kernel's 15 bytes of its file name)."""
    return comm in _COMMS


def loaded(argv: list[str]) -> Loaded | None:
    """What `argv` (the loader's, argv[0] first) runs; None when it runs nothing (no
    PROGRAM, or --list/--verify: ldd asking what a file needs)."""
    argv0: str | None = None
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if arg in NOT_RUNNING:
            return None
        if arg in WITH_VALUE:
            if arg == "--argv0" and i + 1 < len(argv):
                argv0 = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--"):
            i += 1   # a flag of a newer loader: it takes no value in either loader today
            continue
        break
    if i >= len(argv):
        return None
    program = argv[i]
    return Loaded(program, (argv0 if argv0 is not None else program, *argv[i + 1:]))
