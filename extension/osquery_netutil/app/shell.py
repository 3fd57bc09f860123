"""`osquery-netutil shell`: an interactive SQL prompt on the embedded host, in the
manner of osqueryi (statements end with ';', dot-commands, history kept across runs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from osquery_netutil.host.database import Host

from osquery_netutil.host.errors import QueryError
from osquery_netutil.app.output import MODES, render

HISTORY = Path(os.path.expanduser("~/.osquery_netutil_history"))
HELP = """.tables           list the tables
.schema [TABLE]   show the CREATE statements
.mode MODE        output mode: pretty, json, csv or line
.help             this text
.quit / .exit     leave (so does Ctrl-D)
Anything else is SQL, run when a line ends with ';'."""


class Shell:
    def __init__(self, host: Host, mode: str = "pretty") -> None:
        self.host = host
        self.mode = mode

    def loop(self) -> None:
        interactive = sys.stdin.isatty()
        if interactive:
            self._load_history()
            print("osquery-netutil shell: .help for help, Ctrl-D to leave")
        buffer = ""
        while True:
            try:
                line = input("netutil> " if not buffer else "    ...> ") if interactive else sys.stdin.readline()
            except EOFError:
                break
            except KeyboardInterrupt:
                print()
                buffer = ""
                continue
            if not interactive and line == "":
                break
            line = line.rstrip("\n")
            if not buffer and line.strip().startswith("."):
                if not self.command(line.strip()):
                    break
                continue
            buffer = f"{buffer}\n{line}" if buffer else line
            if buffer.strip().endswith(";"):
                self.run(buffer)
                buffer = ""
        if buffer.strip():
            self.run(buffer)
        if interactive:
            self._save_history()

    def run(self, sql: str) -> None:
        try:
            columns, rows = self.host.query(sql)
        except QueryError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return
        text = render(self.mode, columns, rows)
        if text:
            print(text)

    def command(self, line: str) -> bool:
        """Run a dot-command; False means leave."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in (".quit", ".exit"):
            return False
        if name == ".tables":
            print("\n".join(f"  => {t}" for t in sorted(self.host.tables)))
        elif name == ".schema":
            for table in self.host.tables.values():
                if not arg or arg == table.name:
                    cols = ", ".join(f"`{c.name}` {c.type}" for c in table.columns)
                    print(f"CREATE TABLE {table.name}({cols});")
        elif name == ".mode" and arg in MODES:
            self.mode = arg
        elif name == ".help":
            print(HELP)
        else:
            print(f"Error: unknown command or argument: {line} (.help lists them)", file=sys.stderr)
        return True

    def _load_history(self) -> None:
        try:
            import readline
            readline.read_history_file(HISTORY)
        except (ImportError, OSError):
            pass

    def _save_history(self) -> None:
        try:
            import readline
            readline.set_history_length(1000)
            readline.write_history_file(HISTORY)
        except (ImportError, OSError):
            pass
