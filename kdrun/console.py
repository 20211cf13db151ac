"""kdrun's two rich consoles: results (tables, the files a command wrote) on stdout; everything else
(progress, notes, warnings, errors) on stderr. So `kdrun ... > results.txt` keeps the results, and
`2>/dev/null` silences the rest without hiding a result.

In a sweep the console keeps one line per job: a job's notes (`note`) and per-epoch lines go to its
log file instead (`log_notes_to`).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

console = Console(stderr=True)  # what goes on: progress, notes, warnings, errors
results = Console()  # what a command produced

_job_log: Path | None = None  # set while a sweep's job runs


def log_notes_to(path: Path | None) -> None:
    """Send notes (and the trainer's per-epoch lines) to `path` rather than the console; None: the console."""
    global _job_log
    _job_log = path


def job_log() -> Path | None:
    """The log file a sweep's job writes its notes to, or None outside a sweep."""
    return _job_log


def note(markup: str) -> None:
    """What a run is doing (a teacher from its cache, a recipe applied): on the console, or in a sweep job's
    log file."""
    if _job_log is None:
        console.print(markup, soft_wrap=True)
    else:
        append_line(_job_log, Text.from_markup(markup).plain)


def append_line(path: Path, line: str) -> None:
    """One time-stamped line at the end of a log file; a log that cannot be written must not stop a run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    except OSError:
        pass
