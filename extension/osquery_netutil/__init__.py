"""osquery-netutil: network utility exec detection for osquery (eBPF probe, tables, packs)."""

__version__ = "0.1.0"
