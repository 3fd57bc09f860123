"""The catalog of network utilities: which executables are reported, and as what.

Built in: data/catalog.yaml (package data). A user file given with --catalog adds
entries in the same format. A bad user file raises CatalogError with file, line and fix;
callers then keep the built-in catalog (and say so in the probe status).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from osquery_netutil import safety

CATEGORIES = ("dns", "transfer", "remote_shell", "scanner", "sniffer", "tunnel", "recon", "discovery")
# Multi-call binaries run the applet that argv[1] names when called by their own name
# (`busybox nc -e /bin/sh ...`): the kernel forwards them, enrichment reads the applet.
MULTICALL = ("busybox", "toybox")
# The dynamic loaders, glibc's and musl's: `/lib64/ld-linux-x86-64.so.2 /usr/bin/ncat ...`
# runs ncat without ever exec'ing it (the kernel execs the loader). The kernel forwards
# them; enrichment reports the program they load.
LOADERS = (
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "ld-linux-armhf.so.3", "ld-linux.so.2",
    "ld-musl-x86_64.so.1", "ld-musl-aarch64.so.1", "ld-musl-armhf.so.1", "ld-musl-i386.so.1", "ld.so",
)
# Interpreters: started on a script (sh /tmp/x.sh, python3 ./p.py), the script's place is
# judged (the kernel marks an origin; enrichment names the script of each ancestor). Those
# in VERSIONED are also installed under versioned names (python3.12, php8.2).
SHELLS = ("sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh")
INTERPRETERS = (*SHELLS, "python", "python2", "python3", "perl", "ruby", "php", "node", "nodejs", "lua", "tclsh", "pwsh")
VERSIONED = {
    "python": ("2.7", *(f"3.{m}" for m in range(5, 16))),
    "php": ("5.6", *(f"7.{m}" for m in range(5)), *(f"8.{m}" for m in range(6))),
    "ruby": (*(f"2.{m}" for m in range(8)), *(f"3.{m}" for m in range(6))),
    "lua": tuple(f"5.{m}" for m in range(1, 5)),
}


def interpreter_names() -> list[str]:
    """Every file name an interpreter is exec'd by: INTERPRETERS and their versioned names."""
    return sorted({*INTERPRETERS, *(f"{n}{v}" for n, versions in VERSIONED.items() for v in versions)})


_FIELDS = {"name": str, "basenames": list, "category": str, "technique": str, "description": str}
# Optional: `args`, the arguments of which one must be present for an exec to count
# (openssl only as s_client/s_server, iptables only when it lists rules). The kernel
# still forwards by name; user space drops the other execs.
_OPTIONAL = {"args": list}
_BUILTIN = "catalog.yaml"


class CatalogError(ValueError):
    """A catalog file is wrong. The message names the file, the line and the fix."""


@dataclass(frozen=True)
class Utility:
    name: str
    basenames: tuple[str, ...]
    category: str
    technique: str
    description: str
    args: tuple[str, ...] = ()   # one of these among the arguments, or the exec does not count

    def counts(self, argv: Iterable[str]) -> bool:
        """Whether an exec with this argv (argv[0] first) is this utility's business: always,
        unless the entry lists args and none of them is among the arguments."""
        if not self.args:
            return True
        return any(a in self.args for a in list(argv)[1:])


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of each mapping, for error messages."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        mapping["__line__"] = node.start_mark.line + 1
        return mapping


class Catalog:
    """Utilities by canonical name and by basename."""

    def __init__(self, utilities: Iterable[Utility]) -> None:
        self.utilities: tuple[Utility, ...] = tuple(utilities)
        self._by_basename = {b: u for u in self.utilities for b in u.basenames}
        self._by_name = {u.name: u for u in self.utilities}

    def __len__(self) -> int:
        return len(self.utilities)

    def by_name(self, name: str) -> Utility | None:
        return self._by_name.get(name)

    def by_basename(self, basename: str) -> Utility | None:
        """The utility installed under this file name, if any."""
        return self._by_basename.get(basename)

    def by_comm(self, comm: str) -> Utility | None:
        """The utility whose basename the kernel truncated to this comm (15 bytes)."""
        hit = self._by_basename.get(comm)
        if hit is not None or len(comm.encode()) < 15:
            return hit
        return next((u for b, u in self._by_basename.items() if b.encode()[:15] == comm.encode()), None)

    def basenames(self) -> list[str]:
        return sorted(self._by_basename)

    def kernel_names(self) -> list[str]:
        """What the kernel filter forwards by comm: every basename, the multi-call binaries
        and the dynamic loaders."""
        return sorted({*self._by_basename, *MULTICALL, *LOADERS})

    @classmethod
    def load(cls, user_file: Path | None = None) -> "Catalog":
        """The built-in catalog, plus the entries of user_file. Raises CatalogError."""
        text = resources.files(__package__).joinpath("data", _BUILTIN).read_text()
        builtin = _parse(text, f"<built-in {_BUILTIN}>", [])
        if user_file is None:
            return cls(builtin)
        try:
            safety.check(Path(user_file), "catalog file")
        except safety.UnsafeFile as exc:
            raise CatalogError(str(exc)) from None
        try:
            user_text = Path(user_file).read_text()
        except OSError as exc:
            raise CatalogError(f"{user_file}: cannot read ({exc.strerror}): give a readable YAML file") from exc
        return cls(builtin + _parse(user_text, str(user_file), builtin))


def load_in_force(user_file: Path | None) -> tuple[Catalog, list[str]]:
    """The catalog in force and the problems met loading it: a bad user file is reported
    and the built-in catalog kept, so that detection never stops over a typo."""
    if user_file is None:
        return Catalog.load(), []
    try:
        return Catalog.load(user_file), []
    except CatalogError as exc:
        return Catalog.load(), [f"{exc}; keeping the built-in catalog"]


def _parse(text: str, source: str, existing: list[Utility]) -> list[Utility]:
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise CatalogError(f"{where}: YAML error ({getattr(exc, 'problem', exc)}): fix the YAML syntax") from exc
    if not isinstance(doc, dict) or set(doc) - {"__line__"} != {"utilities"} or not isinstance(doc["utilities"], list):
        raise CatalogError(f"{source}:1: expected a mapping with one key, 'utilities:', holding a list of entries")
    names = {u.name: "built in" for u in existing}
    basenames = {b: u.name for u in existing for b in u.basenames}
    result = []
    for entry in doc["utilities"]:
        if not isinstance(entry, dict):
            raise CatalogError(f"{source}: each item of 'utilities' must be a mapping with keys {', '.join(_FIELDS)}")
        line = entry.pop("__line__")
        where = f"{source}:{line}"
        unknown = sorted(set(entry) - set(_FIELDS) - set(_OPTIONAL))
        if unknown:
            raise CatalogError(f"{where}: unknown key {unknown[0]!r}: allowed keys are {', '.join([*_FIELDS, *_OPTIONAL])}")
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) and a for a in args):
            raise CatalogError(f"{where}: 'args' must list arguments (non-empty strings), one of which an exec must carry")
        for key, kind in _FIELDS.items():
            if key not in entry:
                raise CatalogError(f"{where}: missing key {key!r}: every entry needs {', '.join(_FIELDS)}")
            if not isinstance(entry[key], kind) or (kind is str and not entry[key].strip()):
                raise CatalogError(f"{where}: {key!r} must be a non-empty {'list of strings' if kind is list else 'string'}")
        if not entry["basenames"] or not all(isinstance(b, str) and b and "/" not in b for b in entry["basenames"]):
            raise CatalogError(f"{where}: 'basenames' must list file names (no '/'), at least one")
        if entry["category"] not in CATEGORIES:
            raise CatalogError(f"{where}: category {entry['category']!r} unknown: use one of {', '.join(CATEGORIES)}")
        if entry["name"] in names:
            raise CatalogError(f"{where}: duplicate name {entry['name']!r} ({names[entry['name']]}): names must be unique")
        names[entry["name"]] = f"line {line}"
        for b in entry["basenames"]:
            if b in basenames:
                raise CatalogError(f"{where}: basename {b!r} already belongs to {basenames[b]!r}: list each basename once")
            basenames[b] = entry["name"]
        result.append(Utility(entry["name"], tuple(entry["basenames"]), entry["category"], entry["technique"],
                              entry["description"], tuple(args)))
    return result
