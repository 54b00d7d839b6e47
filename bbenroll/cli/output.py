"""The one object that writes to the terminal, and the results commands hand it.

Data the user asked for goes to stdout; messages and warnings go to stderr.
Whether stdout gets JSON is decided here, once for every command: a command
returns a :class:`Result` and :meth:`Output.emit` writes either its JSON value
or its human text. With ``--json`` stdout holds exactly one JSON document, on
an error too (``{"error": ..., "exit": N}``); human data is never written then.
Rich is imported only for tables and colour, and always with markup off:
worker names and notes are user input and must be printed as they are.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bbenroll.errors import BBEnrollError

RICH_TABLE_MAX_ROWS = 200


@dataclass(frozen=True)
class Result:
    """What a command produced.

    ``value`` is its JSON document; ``show`` writes it for a human (None: the
    command has nothing more to say on a terminal). ``failure``, when set, is
    raised once the result is out, so a failed check still reports its problems.
    """

    value: Any
    show: Callable[[Output], None] | None = None
    failure: BBEnrollError | None = None


def _one_line(text: str) -> str:
    """Notes may hold newlines or control characters: never let them break a row."""
    return "".join(c if c.isprintable() else " " for c in text)


class Output:
    def __init__(self, *, color: bool | None = None, json_mode: bool = False) -> None:
        # None: decide from the terminal and NO_COLOR
        if os.environ.get("NO_COLOR"):
            color = False
        self.color = color
        self.json_mode = json_mode
        self.documents = 0  # JSON documents written: --json promises exactly one
        self._consoles: dict[str, Any] = {}

    def _console(self, stream: str) -> Any:
        console = self._consoles.get(stream)
        if console is None:
            from rich.console import Console

            console = Console(
                file=getattr(sys, stream),
                markup=False,
                highlight=False,
                emoji=False,
                no_color=self.color is False,
                force_terminal=True if self.color else None,
                soft_wrap=True,
                # a pipe gets whole lines, not a table folded to 80 columns
                width=None if getattr(sys, stream).isatty() else 10_000,
            )
            self._consoles[stream] = console
        return console

    def uses_color(self, stream: str) -> bool:
        """Colour on ``stream`` ("stdout" or "stderr"): as asked, else when it is a terminal."""
        if self.color is not None:
            return self.color
        return getattr(sys, stream).isatty()

    # -- stdout: data ---------------------------------------------------------

    def emit(self, result: Result) -> None:
        """Write a command's result: its one JSON document, or its human text."""
        if self.json_mode:
            self.json(result.value)
        elif result.show is not None:
            result.show(self)

    def fail(self, message: str, exit_code: int) -> int:
        """Report an error: one line on stderr, and with --json the error document."""
        self.error(message)
        if self.json_mode and not self.documents:
            self.json({"error": message, "exit": exit_code})
        return exit_code

    def data(self, text: str) -> None:
        """A line of human data on stdout; nothing with --json (stdout holds the document)."""
        if not self.json_mode:
            sys.stdout.write(text + "\n")

    def json(self, value: Any) -> None:
        if self.documents:
            raise RuntimeError("a second JSON document: --json promises exactly one")
        self.documents += 1
        sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]], wrap: Sequence[str] = ()) -> None:
        """A table on stdout: rich on a terminal, plain aligned columns otherwise.

        Rich needs over a second for thousands of rows, and pipes want plain text.
        """
        if self.json_mode:
            return
        if not sys.stdout.isatty() or len(rows) > RICH_TABLE_MAX_ROWS:
            self._plain_table(columns, rows)
            return
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for column in columns:
            table.add_column(column, overflow="fold", no_wrap=column not in wrap)
        for row in rows:
            table.add_row(*(_one_line(c) for c in row))
        self._console("stdout").print(table)

    def _plain_table(self, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        cells = [[_one_line(c) for c in row] for row in rows]
        widths = [max([len(col)] + [len(row[i]) for row in cells]) for i, col in enumerate(columns)]

        def line(values: Sequence[str]) -> str:
            return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

        out = [line(columns), line(["-" * w for w in widths])]
        out.extend(line(row) for row in cells)
        sys.stdout.write("\n".join(out) + "\n")

    # -- stderr: messages -----------------------------------------------------

    def _message(self, prefix: str, text: str, style: str) -> None:
        if self.uses_color("stderr"):
            console = self._console("stderr")
            console.print(prefix, style=style, end="")
            console.print(text)
        else:
            sys.stderr.write(f"{prefix}{text}\n")

    def info(self, text: str) -> None:
        sys.stderr.write(text + "\n")

    def progress(self, text: str) -> None:
        """A step of a slow operation, for a person watching: only when stderr is a terminal."""
        if sys.stderr.isatty():
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def warn(self, text: str) -> None:
        self._message("warning: ", text, "bold yellow")

    def error(self, text: str) -> None:
        self._message("error: ", text, "bold red")
