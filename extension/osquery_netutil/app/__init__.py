"""The commands: osquery-netutil (watch, query, shell, record, replay, packs) and the osquery extension process."""
