"""What a person sees while ``qf run`` or a notebook's ``BatchPipelineRunner`` works.

``ConsoleReporter`` is the stage reporter the batch runner binds: in a terminal (or notebook) each stage
draws a live progress bar (done / total, rows per second, time left) that stays as one line when the
stage ends; elsewhere (CI logs, a pipe) each stage prints one line when it ends. Details (every shard,
dbt's own output) appear only with ``verbose``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from quantflow.compute import stage
from quantflow.compute.stage import StageResult
from quantflow.pipeline.dagster.reporting import StageReporter


def _rate(rows: int, seconds: float) -> str:
    if not rows:
        return ""
    per_s = f", {rows / seconds:,.0f}/s" if seconds > 0 else ""
    return f"{rows:,} rows{per_s}"


class _StageBar(stage.Progress):
    def __init__(self, reporter: ConsoleReporter, label: str):
        self.reporter, self.label = reporter, label
        self.total: int | None = None
        self.unit = ""
        self.done = self.rows = 0
        self.began = time.monotonic()
        self.task = None

    def begin(self, total: int | None, unit: str, label: str | None = None) -> None:
        self.total, self.unit, self.done, self.rows = total, unit, 0, 0
        self.label = label or self.label
        self.began = time.monotonic()
        bars = self.reporter.bars
        if bars is not None:
            if self.task is not None:
                bars.remove_task(self.task)
            self.task = bars.add_task(self.label, total=total, unit=unit, rows="")

    def advance(self, n: int = 1, rows: int = 0) -> None:
        self.done += n
        self.rows += rows
        bars = self.reporter.bars
        if bars is not None and self.task is not None:
            bars.update(self.task, advance=n, rows=_rate(self.rows, time.monotonic() - self.began))

    def detail(self, message: str) -> None:
        if self.reporter.verbose:
            self.reporter.console.print(f"  {message}", markup=False, highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        self.reporter.console.print(f"{self.label}: {message}", markup=False, highlight=False, soft_wrap=True)

    def line(self) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        rows = _rate(self.rows, time.monotonic() - self.began)
        return f"{self.label}: {self.done}{of} {self.unit}" + (f", {rows}" if rows else "")


class ConsoleReporter(StageReporter):
    """Progress bars (or one line per stage) on ``console``, and the stage results for the run summary."""

    def __init__(self, console: Console | None = None, verbose: bool = False, quiet: bool = False):
        self.console = console or stdout_console()
        self.verbose = verbose
        self.quiet_progress = quiet
        self.live = (self.console.is_terminal or self.console.is_jupyter) and not quiet
        self.bars: Progress | None = None
        self.results: dict[str, StageResult] = {}
        self._current: _StageBar | None = None

    def progress(self, log: Any, label: str) -> stage.Progress:
        self.close()
        if self.live:
            self.bars = Progress(
                TextColumn("{task.description:<20}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"), TaskProgressColumn(), TextColumn("{task.fields[rows]}"),
                TimeRemainingColumn(elapsed_when_finished=True), console=self.console,
            )
            self.bars.start()
        self._current = _StageBar(self, label)
        return self._current

    def record(self, label: str, result: StageResult) -> None:
        self.results[label] = result
        current, self._current = self._current, None
        if not self.live and not self.quiet_progress and current is not None:
            self.console.print(f"{current.line()} in {result.seconds:.1f}s", markup=False, highlight=False,
                               soft_wrap=True)
        self.close()

    def close(self) -> None:
        """End the live display of the stage that is running, if any (also after a failure)."""
        if self.bars is not None:
            self.bars.stop()
            self.bars = None

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """dagster-dbt writes every dbt event to stdout: keep it for ``verbose``, else drop it."""
        if self.verbose:
            yield
            return
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink):
            yield


def stdout_console() -> Console:
    """A console on this process's stdout as it is now. Dagster captures each step's stdout at the file
    descriptor (for the UI's log view), which would make the progress bars see a pipe; a duplicate of the
    descriptor keeps them on the terminal."""
    try:
        stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # a notebook: no descriptor
        stream = sys.stdout
    return Console(file=stream, highlight=False)
