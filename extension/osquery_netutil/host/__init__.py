"""The embedded host: osquery's SQL without osquery (SQLite virtual tables, osquery's functions, std::regex)."""
