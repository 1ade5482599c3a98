"""Terminal output shared by the commands: consoles, sizes, tables, progress bars."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

_err = None
_out = None


def err_console():
    global _err
    if _err is None:
        from rich.console import Console

        _err = Console(stderr=True, highlight=False)
    return _err


def out_console():
    global _out
    if _out is None:
        from rich.console import Console

        _out = Console(highlight=False)
    return _out


def human(n: float | None) -> str:
    """Bytes as a short human string (binary units)."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def ratio(raw: float, stored: float) -> str:
    return f"{raw / stored:.2f}x" if stored else "-"


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def table(columns, rows, title: str | None = None):
    from rich.table import Table

    t = Table(title=title, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(str(c))
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t


class _Bar:
    def __init__(self, progress, description):
        self.progress = progress
        self.task = progress.add_task(description, total=None)

    def start(self, total: int) -> None:
        self.progress.update(self.task, total=total)

    def __call__(self, n: int) -> None:
        self.progress.advance(self.task, n)


class _NullBar:
    def start(self, total: int) -> None:
        pass

    def __call__(self, n: int) -> None:
        pass


@contextmanager
def progress_bar(description: str, *, enabled: bool = True):
    """A byte progress bar on stderr (only on a terminal); yields a callable(n) with start(total).

    A disabled bar (``--json``) never imports rich (33 ms of a snapshot's start-up).
    """
    console = err_console() if enabled else None
    if console is None or not console.is_terminal:
        yield _NullBar()
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True) as p:
        yield _Bar(p, description)
