"""Member offsets of kernel structs, read from the running kernel's BTF.

btf mode reads a few struct fields (task->mm, mm->arg_start, bprm->filename, ...). bcc 0.26
has no CO-RE, and the headers it compiles against belong to another kernel (Debian's 6.1
headers put task_struct.mm at 2272, a 6.18 kernel at 1136), so the offsets come from
/sys/kernel/btf/vmlinux, the running kernel's own description of its types, and reach the C
program as -D flags. This is a small reader of the BTF format (include/uapi/linux/btf.h):
enough to find a struct by name and a member in it, anonymous structs and unions included.
"""

from __future__ import annotations

import struct
from array import array
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")   # magic, version, flags, hdr_len, type_off/len, str_off/len
_TYPE = struct.Struct("<III")          # name_off, info, size_or_type
_MEMBER = struct.Struct("<III")        # name_off, type, offset

KIND_INT, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_FUNC = 1, 3, 4, 5, 12
_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG = 8, 9, 10, 11, 18
_QUALIFIERS = {_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG}

# Bytes that follow a btf_type, per kind: (fixed, per vlen item).
_TRAILER = {
    1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0),
    8: (0, 0), 9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0),
    15: (0, 12), 16: (0, 0), 17: (4, 0), 18: (0, 0), 19: (0, 12),
}


class BtfError(Exception):
    """The BTF is missing, malformed, or lacks the struct or member asked for."""


class Btf:
    """One parsed BTF blob: types by id; structs, unions and functions by name."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            raise BtfError("BTF shorter than its header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x})")
        self._data = data
        self._strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self._types = array("I", [0])   # type id -> byte offset of its btf_type; id 0 is void
        self._by_name: dict[tuple[bool, bytes], int] = {}   # (is a function, name) -> type id
        self._typedefs: set[bytes] = set()
        at, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack = _TYPE.unpack_from
        while at < end:
            name_off, info, _size = unpack(data, at)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            trailer = _TRAILER.get(kind)
            if trailer is None:
                raise BtfError(f"unknown BTF kind {kind} at byte {at}")
            self._types.append(at)
            if kind in (KIND_STRUCT, KIND_UNION, KIND_FUNC) and name_off:
                self._by_name.setdefault((kind == KIND_FUNC, self._name(name_off)), len(self._types) - 1)
            elif kind == _KIND_TYPEDEF and name_off:
                self._typedefs.add(self._name(name_off))
            at += _TYPE.size + trailer[0] + trailer[1] * vlen

    @classmethod
    def load(cls, path: Path = VMLINUX) -> "Btf":
        try:
            return cls(path.read_bytes())
        except OSError as exc:
            raise BtfError(f"cannot read {path}: {exc.strerror}") from exc

    def _name(self, off: int) -> bytes:
        return self._strings[off : self._strings.index(b"\0", off)]

    def _type(self, type_id: int) -> tuple[int, int, int, int]:
        """(kind, vlen, kind_flag, byte offset of the btf_type) of a type id."""
        at = self._types[type_id]
        _name, info, _size = _TYPE.unpack_from(self._data, at)
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, at

    def _resolve(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the type they name."""
        for _ in range(32):
            kind, _vlen, _kflag, at = self._type(type_id)
            if kind not in _QUALIFIERS:
                return type_id
            type_id = _TYPE.unpack_from(self._data, at)[2]
        raise BtfError(f"type {type_id}: qualifier chain too long")

    def size(self, struct_name: str) -> int:
        """sizeof(struct struct_name)."""
        return _TYPE.unpack_from(self._data, self._type(self._struct_id(struct_name))[3])[2]

    def _struct_id(self, name: str) -> int:
        type_id = self._by_name.get((False, name.encode()))
        if type_id is None:
            raise BtfError(f"struct {name} is not in the kernel's BTF")
        return type_id

    def function_id(self, name: str) -> int:
        """Type id of a kernel function (what an fentry program attaches to)."""
        type_id = self._by_name.get((True, name.encode()))
        if type_id is None:
            raise BtfError(f"function {name} is not in the kernel's BTF (inlined or absent)")
        return type_id

    def has_raw_tracepoint(self, name: str) -> bool:
        """Whether the kernel has the tracepoint name: each one's raw form is declared as
        the typedef btf_trace_<name>."""
        return f"btf_trace_{name}".encode() in self._typedefs

    def offset(self, struct_name: str, member: str) -> int:
        """Byte offset of member in struct struct_name, looking into anonymous structs and
        unions; 'a.b' names a member b of the named struct member a."""
        type_id, total = self._struct_id(struct_name), 0
        for part in member.split("."):
            found = self._find(type_id, part.encode())
            if found is None:
                raise BtfError(f"struct {struct_name} has no member {member}")
            bits, type_id = found
            if bits % 8:
                raise BtfError(f"{struct_name}.{member} is a bit field")
            total += bits // 8
            type_id = self._resolve(type_id)
        return total

    def _find(self, type_id: int, name: bytes, depth: int = 0) -> tuple[int, int] | None:
        """(bit offset, member type id) of name in a struct/union type, searching its
        anonymous members depth first, the way C resolves the name."""
        kind, vlen, kind_flag, at = self._type(type_id)
        if kind not in (KIND_STRUCT, KIND_UNION) or depth > 8:
            return None
        for i in range(vlen):
            name_off, member_type, offset = _MEMBER.unpack_from(self._data, at + _TYPE.size + i * _MEMBER.size)
            bits = offset & 0xFFFFFF if kind_flag else offset
            if name_off and self._name(name_off) == name:
                return bits, member_type
            if not name_off:
                inner = self._find(self._resolve(member_type), name, depth + 1)
                if inner is not None:
                    return bits + inner[0], inner[1]
        return None
