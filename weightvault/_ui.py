"""Terminal output shared by the commands: consoles, sizes, tables, progress bars."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from contextlib import contextmanager

_err = None
_out = None

# A markup tag as rich reads it, with the backslashes before it: "[bold red]", "[/]", "\\[x]" (escaped).
_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?\])")
# Environment variables that make rich style output that is not a terminal.
_FORCE_STYLE = ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE")


def escape(text: str) -> str:
    """Quote ``text`` for a console's ``print``: brackets that look like markup stay literal."""
    return _TAG.sub(lambda m: f"{m.group(1)}{m.group(1)}\\{m.group(2)}", text)


def strip_markup(text: str) -> str:
    """The plain text a console prints for ``text`` (tags dropped, escaped brackets kept)."""

    def plain(m):
        backslashes, escaped = divmod(len(m.group(1)), 2)
        return "\\" * backslashes + (m.group(2) if escaped else "")

    return _TAG.sub(plain, text)


_UNWRAPPED = 100_000  # columns: wide enough that a table keeps its natural width


class PlainConsole:
    """The console of a stream that is not a terminal: plain lines, no rich.

    Importing rich.console costs ~40 ms of every command (2-core build
    machine), and scripts, pipes and CI never see its styling: rich drops it
    off a terminal anyway. Strings are written unwrapped with their markup
    stripped; anything else (a table, a tree) goes through rich as before.
    """

    is_terminal = False

    def __init__(self, stderr: bool):
        self.stderr = stderr

    @property
    def file(self):
        return sys.stderr if self.stderr else sys.stdout

    def print(self, *objects, markup: bool = True, end: str = "\n", **kw) -> None:
        if not all(isinstance(o, str) for o in objects):
            # Off a terminal nothing wraps a table (a tensor name folded over two lines defeats grep),
            # unless $COLUMNS asks for a width, as rich reads it.
            width = None if os.environ.get("COLUMNS") else _UNWRAPPED
            rich_console(file=self.file, highlight=False, emoji=False, width=width).print(*objects, markup=markup,
                                                                                        end=end, **kw)
            return
        text = " ".join(objects)
        self.file.write((strip_markup(text) if markup else text) + end)


def _is_terminal(stream) -> bool:
    if any(os.environ.get(k) for k in _FORCE_STYLE):
        return True  # rich decides
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def rich_console(**kw):
    """A rich Console whose closed pipe (``| head``) raises BrokenPipeError, which the CLI treats as a
    normal end. rich's own handling exits with status 1, which fails a ``set -o pipefail`` script."""
    global _RichConsole
    if _RichConsole is None:
        from rich.console import Console

        class _RichConsole(Console):
            def on_broken_pipe(self) -> None:
                self.quiet = True
                raise BrokenPipeError

    return _RichConsole(**kw)


_RichConsole = None


def _console(stderr: bool):
    if not _is_terminal(sys.stderr if stderr else sys.stdout):
        return PlainConsole(stderr=stderr)
    return rich_console(stderr=stderr, highlight=False, emoji=False)


def err_console():
    global _err
    if _err is None:
        _err = _console(stderr=True)
    return _err


def out_console():
    global _out
    if _out is None:
        _out = _console(stderr=False)
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


def shape(dims) -> str:
    """A tensor shape as ``3x4``; a 0-d tensor (a scalar) as ``scalar``, not an empty cell."""
    return "x".join(map(str, dims)) if len(dims) else "scalar"


def ratio(raw: float, stored: float) -> str:
    return f"{raw / stored:.2f}x" if stored else "-"


def print_json(obj) -> None:
    """Strict JSON on stdout: a NaN or infinite float (a query's 1/0, a diff statistic) is null;
    times are ISO 8601 in UTC (``2026-11-24T00:42:15.735254Z``), as manifests write them."""
    sys.stdout.write(json.dumps(_finite(obj), indent=2, default=_json_value, allow_nan=False) + "\n")


def _json_value(o):
    """JSON for what the catalog's rows hold besides str, numbers, lists and dicts."""
    import datetime as dt
    import decimal

    if isinstance(o, dt.datetime):  # the catalog's TIMESTAMPs are UTC; a TIMESTAMPTZ is converted
        if o.tzinfo is not None:
            o = o.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return o.isoformat() + "Z"
    if isinstance(o, (dt.date, dt.time)):
        return o.isoformat()
    if isinstance(o, dt.timedelta):
        return o.total_seconds()
    if isinstance(o, decimal.Decimal):
        return float(o)
    if isinstance(o, (bytes, bytearray, memoryview)):
        return bytes(o).hex()
    return str(o)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def table(columns, rows, title: str | None = None, total=None, fold: tuple[int, ...] = ()):
    """A rich table; cells are data, never markup. ``total``: a last row, set apart and in bold.
    ``fold``: columns whose cells wrap onto more lines rather than end in "…" when the terminal is
    narrow (a tensor name cut short is no use)."""
    from rich.table import Table

    t = Table(title=title, show_edge=False, header_style="bold")
    for i, c in enumerate(columns):
        t.add_column(str(c), overflow="fold" if i in fold else "ellipsis")
    for r in rows:
        t.add_row(*_cells(r))
    if total is not None:
        t.add_section()
        t.add_row(*_cells(total), style="bold")
    return t


def _cells(row) -> list[str]:
    return ["" if v is None else escape(str(v)) for v in row]


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
