"""Tables that fit the terminal without cutting numbers (no ``14…`` for 1436).

rich shrinks a table that is too wide by cutting cells with an ellipsis, numbers included.
:class:`FitTable` decides the column widths itself when it is rendered, for the console's
width: numeric columns are never narrower than their widest value (their headers wrap at
spaces, then take their short form, and fold only as a last resort), text columns (names,
paths) wrap, and when even that does not fit the columns are split over several tables that
repeat the key column(s).

Usage: ``t = FitTable(title=...); t.add_column("MiB", numeric=True); t.add_row("1436"); console.print(t)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

__all__ = ["FitTable"]

# Text columns wrap down to this many cells (or their natural width when narrower).
_TEXT_MIN = 10


@dataclass
class _Column:
    header: str
    numeric: bool
    justify: str
    short: str | None


def _width(cell: str) -> int:
    return Text.from_markup(cell).cell_len


def _longest_word(text: str) -> int:
    return max((len(w) for w in text.split()), default=0)


def _reduce(widths: list[int], floors: list[int], excess: int, columns: list[int]) -> int:
    """Narrow ``columns`` widest first down to ``floors`` by up to ``excess`` cells; returns what is left."""
    while excess > 0:
        candidates = [i for i in columns if widths[i] > floors[i]]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return excess


class FitTable:
    """A table whose numbers always print whole; a rich renderable built at the console's width.

    ``key_columns`` leading columns (names) are repeated when the table must be split.
    """

    def __init__(self, *, title: str | None = None, caption: str | None = None, key_columns: int = 1,
                 **table_options: object) -> None:
        self.title, self.caption, self.key_columns = title, caption, key_columns
        self.table_options = table_options  # passed on to rich.table.Table (title_style, box, ...)
        self.columns: list[_Column] = []
        self.rows: list[list[str]] = []
        self.styles: list[str | None] = []

    def add_column(self, header: str, *, numeric: bool = False, justify: str | None = None,
                   short: str | None = None) -> None:
        """Add a column; ``numeric`` ones (numbers, shapes, codes) are never wrapped or cut.

        ``short`` is an abbreviated header used when the column is narrower than ``header``'s words.
        """
        self.columns.append(_Column(header, numeric, justify or ("right" if numeric else "left"), short))

    def add_row(self, *cells: object, style: str | None = None) -> None:
        """Add a row of cells (strings with rich markup, or values turned into strings)."""
        if len(cells) != len(self.columns):
            raise ValueError(f"row of {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(["" if c is None else str(c) for c in cells])
        self.styles.append(style)

    # ----------------------------------------------------------------------------- layout
    def _natural(self, i: int) -> int:
        return max([_width(self.columns[i].header)] + [_width(r[i]) for r in self.rows])

    def _values(self, i: int) -> int:
        return max([1] + [_width(r[i]) for r in self.rows])

    def _floors(self, i: int) -> tuple[int, int, int]:
        """Floors of column ``i``'s width: header words whole, short header whole, values only."""
        col = self.columns[i]
        if col.numeric:
            values = self._values(i)
            soft = max(values, _longest_word(col.header))
            return soft, max(values, _longest_word(col.short)) if col.short else soft, values
        narrow = min(self._natural(i), _TEXT_MIN)
        return narrow, narrow, narrow

    def _overhead(self, n: int) -> int:
        """Cells a table of ``n`` columns spends on padding (rich's default 1+1), separators and edges."""
        boxed = self.table_options.get("box", True) is not None
        edges = 2 if boxed and self.table_options.get("show_edge", True) else 0
        return 2 * n + (n - 1 if boxed else 0) + edges

    def _fit(self, cols: list[int], width: int, *, fold: bool = False) -> list[int] | None:
        """Widths of ``cols`` that fit ``width`` (None when they do not); headers fold only with ``fold``."""
        avail = width - self._overhead(len(cols))
        widths = [self._natural(i) for i in cols]
        soft, short, hard = zip(*(self._floors(i) for i in cols))
        excess = sum(widths) - avail
        idx = list(range(len(cols)))
        numeric = [k for k in idx if self.columns[cols[k]].numeric]
        text = [k for k in idx if not self.columns[cols[k]].numeric]
        excess = _reduce(widths, list(soft), excess, numeric)
        excess = _reduce(widths, list(soft), excess, text)
        excess = _reduce(widths, list(short), excess, numeric)
        if fold:
            excess = _reduce(widths, list(hard), excess, numeric)
        return widths if excess <= 0 else None

    def _groups(self, width: int) -> list[list[int]]:
        """Column groups (each with the key columns) that fit ``width``."""
        keys = list(range(min(self.key_columns, len(self.columns))))
        rest = list(range(len(keys), len(self.columns)))
        groups: list[list[int]] = []
        current: list[int] = []
        for i in rest:
            if current and self._fit(keys + current + [i], width) is None:
                groups.append(current)
                current = []
            current.append(i)
        groups.append(current)
        # As many tables as the greedy packing needs, but with the columns spread evenly over them.
        size = -(-len(rest) // len(groups))
        even = [rest[k:k + size] for k in range(0, len(rest), size)] or [[]]
        if len(even) == len(groups) and all(self._fit(keys + g, width) is not None for g in even):
            groups = even
        return [keys + g for g in groups]

    def _table(self, cols: list[int], widths: list[int] | None, title: str | None, caption: str | None) -> Table:
        table = Table(title=title, caption=caption, **self.table_options)
        for k, i in enumerate(cols):
            col = self.columns[i]
            # Headers wrap at spaces (then fold); values of numeric columns never wrap.
            w = None if widths is None else widths[k]
            header = col.short if col.short and w is not None and w < _longest_word(col.header) else col.header
            table.add_column(Text(header, no_wrap=False, overflow="fold"), justify=col.justify,
                             no_wrap=col.numeric, overflow="fold", width=None if widths is None else widths[k],
                             min_width=self._values(i) if col.numeric else None)
        for row, style in zip(self.rows, self.styles):
            table.add_row(*[Text.from_markup(row[i], overflow="fold") for i in cols], style=style)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        everything = list(range(len(self.columns)))
        if not self.columns:
            yield Table(title=self.title, caption=self.caption, **self.table_options)
            return
        if sum(self._natural(i) for i in everything) + self._overhead(len(everything)) <= width:
            yield self._table(everything, None, self.title, self.caption)
            return
        groups = self._groups(width)
        for n, cols in enumerate(groups):
            title = self.title if n == 0 else (f"{self.title} (continued)" if self.title else None)
            caption = self.caption if n == len(groups) - 1 else None
            yield self._table(cols, self._fit(cols, width) or self._fit(cols, width, fold=True), title, caption)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        natural = sum(self._natural(i) for i in range(len(self.columns))) + self._overhead(len(self.columns))
        return Measurement(min(natural, options.max_width), min(natural, options.max_width))
