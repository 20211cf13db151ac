"""Turning run directories into what people read: tables (console, Markdown, CSV) and plots.

jobs (read runs) -> aggregate (seed groups, swept keys, references) -> tables / plots /
latency -> build (one report directory); sweep.py runs it at the end of a multirun,
command.py is `kdrun-report`; loggers.py holds the per-epoch loggers (`logger=`).
"""
