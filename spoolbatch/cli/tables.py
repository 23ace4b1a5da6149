"""Tables for people that never cut a job id, a status or a figure.

In a terminal too narrow for every column, a table first folds its long text columns (a
status's reason, metadata, a message) onto more lines, then leaves out
its least important columns, one at a time, until it fits, and says which it left out.
Whatever stays is shown whole. Printed to a pipe or a file, a table has every column at
its full width, however wide that is: ``list | less`` and ``status > report.txt`` read
like ``--json`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

_UNBOUNDED = 1_000_000  # a width no table reaches: measure at it to get a table's natural width


@dataclass(frozen=True, slots=True)
class Col:
    """A column: its header, its alignment, and how it gives way to a narrow screen.

    ``drop`` 0 keeps it always; otherwise the column with the highest ``drop`` is left out
    first. ``fold`` lets its text wrap onto more lines (at spaces where it can; never inside
    a cell's first word) before any column is left out.
    """

    name: str
    right: bool = False
    drop: int = 0
    fold: bool = False


def _cell(value: RenderableType) -> RenderableType:
    # Plain strings are data (a job id may hold brackets), never console markup.
    return Text(value) if isinstance(value, str) else value


def natural_width(console: Console, renderable: RenderableType) -> int:
    """The columns ``renderable`` takes when nothing limits its width."""
    return Measurement.get(console, console.options.update_width(_UNBOUNDED), renderable).maximum


def _span(console: Console, cell: RenderableType) -> tuple[int, int]:
    """(its first word, its longest line) in columns: text by its characters, anything else as rich measures it."""
    if isinstance(cell, Text):
        plain = cell.plain
        words = plain.split(maxsplit=1)
        return (cell_len(words[0]) if words else 0), max((cell_len(line) for line in plain.splitlines()), default=0)
    measured = Measurement.get(console, console.options.update_width(_UNBOUNDED), cell)
    return measured.minimum, measured.maximum


class FitTable:
    """A table that fits the width it is drawn at (a rich renderable: `status --watch` redraws it
    at the terminal's width each time), or, laid out with no width, keeps every column whole.

    Each cell is measured once; the layout then tries column widths on an empty table of the
    same style (borders and padding), so fitting a table of thousands of jobs costs one pass.
    """

    def __init__(self, cols: Sequence[Col], rows: Iterable[Sequence[RenderableType]], *,
                 title: str | Text | None = None, **table: Any) -> None:
        self.cols = list(cols)
        self.rows = [[_cell(v) for v in row] for row in rows]
        # The title is a line of its own above the table: as Table's title it is padded to the table's width.
        self.title = Text(title, style="table.title") if isinstance(title, str) else title
        self.table = table  # Table's own arguments: box, header_style...
        self._spans: list[tuple[int, int]] | None = None

    def spans(self, console: Console) -> list[tuple[int, int]]:
        """Per column, (narrowest, natural) content width: a fold column cannot go below its header
        or a cell's first word (a status stays whole, a long word of the reason after it may fold)."""
        if self._spans is None:
            spans = []
            for i, col in enumerate(self.cols):
                cells = [_span(console, row[i]) for row in self.rows]
                head = cell_len(col.name)
                spans.append((max([head] + [c[0] for c in cells]), max([head] + [c[1] for c in cells])))
            self._spans = spans
        return self._spans

    def _build(self, widths: dict[int, int], *, rows: bool = True) -> Table:
        table = Table(**self.table)
        for i, width in widths.items():
            col = self.cols[i]
            table.add_column(col.name, justify="right" if col.right else "left", no_wrap=not col.fold,
                             overflow="fold" if col.fold else "ellipsis", width=width)
        for row in self.rows if rows else ():
            table.add_row(*(row[i] for i in widths))
        return table

    def _total(self, console: Console, widths: dict[int, int]) -> int:
        """The width of the table with these columns at these widths, borders and padding included."""
        return natural_width(console, self._build(widths, rows=False))

    def layout(self, console: Console, width: int | None) -> tuple[Table, list[str], int]:
        """The table for ``width`` columns (None: every column at full width), the names of the
        columns left out, and its width. When even the columns that always stay are wider than
        ``width``, the table is wider than ``width``: it is never cut."""
        spans = self.spans(console)
        keep = list(range(len(self.cols)))
        while True:
            widths = {i: spans[i][1] for i in keep}
            total = self._total(console, widths)
            if width is None or total <= width:
                break
            excess = total - width
            for i in sorted((i for i in keep if self.cols[i].fold), key=lambda i: spans[i][1] - spans[i][0],
                            reverse=True):  # fold the widest text first
                cut = max(0, min(excess, spans[i][1] - spans[i][0]))
                widths[i] -= cut
                excess -= cut
            if excess < total - width:
                total = self._total(console, widths)
                if total <= width:
                    break
            optional = [i for i in keep if self.cols[i].drop]
            if not optional:
                break
            keep.remove(max(optional, key=lambda i: (self.cols[i].drop, i)))
        return self._build(widths), [c.name for i, c in enumerate(self.cols) if i not in keep], total

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table, left_out, _ = self.layout(console, options.max_width)
        if self.title is not None:
            yield self.title
        yield table
        if left_out:
            yield left_out_note(left_out, options.max_width)


def left_out_note(names: list[str], width: int) -> Text:
    """The line under a table that had to leave columns out."""
    return Text(f"left out to fit {width} columns: {', '.join(names)} (a wider window, a pipe or --json "
                "shows them)", style="dim")


def print_table(console: Console, table: FitTable) -> None:
    """Print ``table``: fitted to a terminal's width, or whole (every column) to a pipe or a file."""
    width = console.width if console.is_terminal else None
    laid, left_out, need = table.layout(console, width)
    if table.title is not None:
        console.print(table.title)
    if need <= console.width:
        console.print(laid)
    else:  # a pipe, or columns that always stay: wider than the console, never cut
        Console(file=console.file, width=need, force_terminal=console.is_terminal,
                color_system=console.color_system, no_color=console.no_color, highlight=False,  # type: ignore[arg-type]
                soft_wrap=False, emoji=False).print(laid)
    if left_out:
        console.print(left_out_note(left_out, console.width))
