"""A table's console view: fits 80 columns. Fewer columns and shorter headers than the files, which
keep everything (the Markdown and CSV beside it are named in the caption)."""

from __future__ import annotations

from rich import box
from rich.table import Table as RichTable

# Columns left to the files: sizes, throughput and seed lists matter less at a glance than accuracy.
FILES_ONLY = ("size MB", "images/s", "device", "best-epoch acc %", "seeds")
SHORT_HEADERS = {"test acc %": "acc %", "latency ms": "ms/img", "trained as": "trained as"}


def console_table(title: str, columns: list[str], rows: list[list[str]], numeric, caption: str | None = None
                  ) -> RichTable:
    """`numeric(column)` says which columns hold numbers: those never wrap, the others wrap at spaces."""
    keep = [i for i, column in enumerate(columns) if column not in FILES_ONLY]
    table = RichTable(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for i in keep:
        column = columns[i]
        table.add_column(SHORT_HEADERS.get(column, column), justify="right" if numeric(column) else "left",
                         no_wrap=numeric(column), overflow="fold")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table
