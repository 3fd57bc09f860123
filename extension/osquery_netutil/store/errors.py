"""Why a store cannot be used: each message names the file, the cause and the fix."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The store cannot be used. The message names the file, the cause and the fix."""


class StoreMissing(StoreError):
    """No store at the path yet (nothing was collected there): not a fault for a reader."""


class StoreBusy(StoreError):
    """Another process is the writer of this store."""
