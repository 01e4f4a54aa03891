"""Live progress of a run's batches on stderr.

On a terminal: a Rich Live table, one line per batch (status, completed/failed/total, a bar).
Otherwise (a log file, CI): one plain line whenever a batch's status or counts change, so the log
records the run without control characters. ``finalizing`` is its own state, never shown as done.
"""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from portfolio_batch.cli._render import status_text

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BatchProgress", "progress_lines"]


def _num(value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return 0 if math.isnan(number) else int(number)


def _rows(jobs: pd.DataFrame) -> list[tuple[str, str, str, int, int, int]]:
    rows = []
    for row in jobs.sort_values("shard").itertuples(index=False):
        batch_id = row.batch_id if isinstance(row.batch_id, str) else "(waiting for capacity)"
        rows.append(
            (
                str(row.shard),
                batch_id,
                str(row.status),
                _num(row.completed),
                _num(row.failed),
                _num(row.n_requests),
            )
        )
    return rows


def progress_lines(jobs: pd.DataFrame) -> list[str]:
    """One plain status line per batch, e.g. ``shard 0 batch_abc: in_progress; 12/40 requests done, 0 failed``."""
    lines = []
    for shard, batch_id, status, done, failed, total in _rows(jobs):
        label = status
        if status == "finalizing":
            label = "finalizing (writing result files, not done yet)"
        lines.append(
            f"shard {shard} {batch_id}: {label}; {done}/{total} requests done, {failed} failed"
        )
    return lines


def progress_table(jobs: pd.DataFrame, *, elapsed: float, width: int = 120) -> Table:
    """The live table: one line per batch, ids kept whole, the bar shrinks on narrow terminals."""
    table = Table(
        title=f"Batches ({elapsed:.0f}s)", box=box.SIMPLE_HEAD, title_justify="left", expand=False
    )
    # Batch ids are 30 characters: on a narrow terminal the bar goes, never the id.
    bar_width = min(24, width - 80) if width >= 90 else 0
    for name in ("shard", "batch", "status", "done/failed/total"):
        table.add_column(name, no_wrap=True, justify="right" if name == "shard" else "left")
    if bar_width:
        table.add_column("progress", width=bar_width)
    for shard, batch_id, status, done, failed, total in _rows(jobs):
        cells: list[Any] = [shard, batch_id, status_text(status), f"{done}/{failed}/{total}"]
        if bar_width:
            # finalizing: every request ran but the result files are not written yet; a pulsing
            # bar says so, never a full one.
            pulse = status == "finalizing"
            completed = done + failed
            cells.append(
                ProgressBar(
                    total=None if pulse else max(total, 1),
                    completed=completed,
                    width=bar_width,
                    pulse=pulse,
                )
            )
        table.add_row(*cells)
    return table


class BatchProgress:
    """Context manager whose ``update(jobs)`` is ``poll``'s ``on_update`` callback.

    >>> with BatchProgress(console) as progress:  # doctest: +SKIP
    ...     pb.poll(jobs, progress=False, on_update=progress.update)
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()
        self.live: Live | None = None
        self._seen: dict[str, str] = {}
        self.last: pd.DataFrame | None = None

    def __enter__(self) -> BatchProgress:
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def update(self, jobs: pd.DataFrame) -> None:
        self.last = jobs
        if self.live is not None:
            elapsed = time.monotonic() - self.started
            self.live.update(progress_table(jobs, elapsed=elapsed, width=self.console.width))
            return
        for (shard, *_), line in zip(_rows(jobs), progress_lines(jobs), strict=True):
            if self._seen.get(shard) != line:
                self._seen[shard] = line
                self.console.print(Text(line), soft_wrap=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.__exit__(exc_type, exc, tb)
