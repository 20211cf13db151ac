"""A table's console view: fits 80 columns. Fewer columns and shorter headers than the files, which
keep everything (the Markdown and CSV beside it are named in the caption)."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table as RichTable
from rich.text import Text

# Columns left to the files: sizes, throughput and seed lists matter less at a glance than accuracy.
FILES_ONLY = ("size MB", "images/s", "device", "best-epoch acc %", "seeds")
SHORT_HEADERS = {"test acc %": "acc %", "latency ms": "ms/img", "trained as": "trained as"}


def console_table(title: str, columns: list[str], rows: list[list[str]], numeric, caption: str | None = None
                  ) -> Group:
    """`numeric(column)` says which columns hold numbers: those never wrap, the others wrap at spaces.
    The title and caption are lines of their own, wrapped at the console's width: rich would wrap them at
    the table's, which a narrow table makes a column of words."""
    keep = [i for i, column in enumerate(columns) if column not in FILES_ONLY]
    table = RichTable(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for i in keep:
        column = columns[i]
        table.add_column(SHORT_HEADERS.get(column, column), justify="right" if numeric(column) else "left",
                         no_wrap=numeric(column), overflow="fold")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    lines = [Text(title, style="bold"), table]
    return Group(*lines, Text(caption, style="dim")) if caption else Group(*lines)
