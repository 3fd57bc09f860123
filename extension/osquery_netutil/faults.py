"""Environment faults as one line: what went wrong, where, and the fix.

Every command turns what a host can get wrong (not root, a directory it cannot read, a
read-only or full filesystem, a file that is not what it should be) into one such line
and a non-zero exit status, never a traceback: the user fixes the cause, nothing more.
"""

from __future__ import annotations

import errno
import sqlite3

_FIXES = {
    errno.EACCES: "run as root, or make it readable (and writable, for a store) by this user",
    errno.EPERM: "run as root",
    errno.EROFS: "the filesystem is read-only: give --store a writable place, or use --no-store",
    errno.ENOSPC: "the filesystem is full: free space, or give --store another place",
    errno.EDQUOT: "the disk quota is exhausted: free space, or give --store another place",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path: a part of it is a file",
    errno.EISDIR: "give a file, not a directory",
}


def explain(exc: BaseException) -> str:
    """One line for an environment fault: the path, the cause and the fix."""
    where = f"{exc.filename}: " if isinstance(exc, OSError) and exc.filename else ""
    return f"{where}{cause(exc)}: {fix(exc)}"


def cause(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def fix(exc: BaseException) -> str:
    """What the user does about exc."""
    if isinstance(exc, OSError):
        return _FIXES.get(exc.errno or 0, "check the path and its permissions")
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError):
        if "not a database" in text:
            return "this file is not an osquery-netutil store (SQLite): give --store the right file, or move it aside"
        if "disk is full" in text:
            return _FIXES[errno.ENOSPC]
        if "readonly" in text or "read-only" in text:
            return _FIXES[errno.EROFS]
    return "check the path and its permissions"
