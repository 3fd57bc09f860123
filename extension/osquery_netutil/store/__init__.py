"""The event store: SQLite, one writer, bounded, its status file for readers in other processes."""
