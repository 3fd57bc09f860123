"""What the embedded host says when it cannot run a query."""


class QueryError(Exception):
    """SQL the host cannot run; the message is SQLite's (or the function's, or the table's)."""
