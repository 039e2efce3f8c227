"""The stage contract: what every ``quantflow.<stage>.runner.run`` takes, returns, reports and raises.

    run(metadata, window: RunWindow, *, progress: Progress | None = None, **stage options) -> <Stage>Result

- ``RunWindow``: the dates, symbols and write mode of a run, validated once, where it is built.
- ``StageResult``: what a stage wrote (rows and days per lake table, locations), its artifacts, checks,
  warnings and seconds; each stage's result extends it with its own figures (``headline``,
  ``key_figures``). Every interface (Dagster metadata, the batch runner's summary, the CLI) reads these
  objects; nothing parses metadata strings back.
- ``Progress``: how a stage reports long work. The stage calls it; the interface decides what it looks
  like (a terminal bar, a few Dagster log lines, nothing).
- ``StageError``: an expected failure, with a message that already says where (symbol, date, file) and why;
  ``result`` holds what was done before it, when anything was.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from quantflow.storage.writes import WRITE_MODES, WriteMode, WriteResult

if TYPE_CHECKING:
    import polars as pl


def _date(value: str | dt.date | None, name: str) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{name}: expected a date as YYYY-MM-DD, got {str(value)!r}") from None


@dataclass(frozen=True)
class RunWindow:
    """Dates (inclusive), symbols and write mode of one run: checked here, trusted everywhere after."""

    start_date: dt.date
    end_date: dt.date
    symbols: tuple[str, ...]
    write_mode: WriteMode = "skip_if_exists"

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbols", tuple(self.symbols))
        if self.start_date > self.end_date:
            raise ValueError(f"start_date {self.start_date} is after end_date {self.end_date}")
        if self.write_mode not in WRITE_MODES:
            raise ValueError(f"write mode must be one of {', '.join(WRITE_MODES)}; got {self.write_mode!r}")
        if not self.symbols:
            raise ValueError("symbols: a run needs at least one symbol")

    @classmethod
    def resolve(
        cls,
        project_symbols: Iterable[str],
        start_date: str | dt.date | None = None,
        end_date: str | dt.date | None = None,
        symbols: Iterable[str] | None = None,
        write_mode: str = "skip_if_exists",
        today: dt.date | None = None,
    ) -> RunWindow:
        """The window of a request as users give it: ISO strings or dates (default yesterday .. today),
        a subset of the project's symbols (default all of them)."""
        known = list(project_symbols)
        today = today or dt.date.today()
        start = _date(start_date, "start_date") or today - dt.timedelta(days=1)
        end = _date(end_date, "end_date") or today
        chosen = list(symbols) if symbols else known
        unknown = [s for s in chosen if s not in known]
        if unknown:
            raise ValueError(f"symbols: {unknown} are not in the project's symbols {known}")
        return cls(start, end, tuple(chosen), write_mode)  # type: ignore[arg-type]

    def describe(self) -> str:
        span = str(self.start_date) if self.start_date == self.end_date else f"{self.start_date} .. {self.end_date}"
        return f"{span}, {counted(len(self.symbols), 'symbol')}, {self.write_mode}"


class Progress:
    """Where a stage reports long work. This base ignores everything, so a stage can always call it.

    ``begin(total, unit)`` starts (or restarts) a phase of ``total`` units (None: unknown) such as
    ``"shards"``; ``advance(n, rows)`` marks ``n`` units done that handled ``rows`` rows; ``detail`` is a
    line worth reading when asked for details (``-v``, the Dagster run log); ``note`` one that everyone
    should see as it happens (a run waiting for another).
    """

    def begin(self, total: int | None, unit: str, label: str | None = None) -> None:
        pass

    def advance(self, n: int = 1, rows: int = 0) -> None:
        pass

    def detail(self, message: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass


@dataclass(frozen=True)
class CheckOutcome:
    """A data check a stage ran: it shows as a Dagster asset check and in the run summary."""

    name: str
    passed: bool
    description: str = ""
    severity: str = "warn"  # "warn": reported; "error": the data is wrong
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageResult:
    """What one stage run did. ``stage`` is the stage's package name."""

    stage: str
    window: RunWindow
    tables: dict[str, WriteResult] = field(default_factory=dict)
    table_urls: dict[str, str] = field(default_factory=dict)
    preview: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False)
    artifacts: dict[str, str] = field(default_factory=dict)  # what -> URL, e.g. "summary_url"
    checks: dict[str, CheckOutcome] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # the artifacts a one-screen run summary lists (None: all; the Dagster metadata always has all)
    summary_artifacts: ClassVar[tuple[str, ...] | None] = None

    def record_write(self, table: str, written: WriteResult, url: str | None = None) -> None:
        """Add one write to ``table``'s totals (a stage writes a table in many pieces)."""
        self.tables.setdefault(table, WriteResult(table)).merge(written)
        if url is not None:
            self.table_urls[table] = url

    @property
    def rows_written(self) -> dict[str, int]:
        return {t: r.rows_written for t, r in self.tables.items()}

    def headline(self) -> str:
        """The stage's key figures in one line, for run summaries (e.g. shards and trades per second)."""
        return ""

    def key_figures(self) -> dict[str, Any]:
        """Stage-specific figures for the materialization metadata (plain ints, floats and strings)."""
        return {}

    def table_figures(self, table: str) -> dict[str, Any]:
        """Stage-specific figures of one table (e.g. its rows in the warehouse), keyed ``<what>/<table>``."""
        return {}


class StageError(Exception):
    """A stage failed for a reason it can name; the message says where (symbol, date, file) and why, in one
    line. ``result``: what the stage did before it stopped, when it did anything."""

    def __init__(self, message: str, *, result: StageResult | None = None):
        super().__init__(message)
        self.result = result


def failure_line(exc: BaseException, redact: Callable[[str], str] | None = None) -> str:
    """The root cause of ``exc`` in one line: the first ``StageError`` in its chain (its message already
    says where and why), else the innermost exception as ``Type: message``. ``redact`` (secrets -> their
    references) applies before the line is shortened, so a secret is never cut in half and shown."""
    redact = redact or (lambda text: text)
    chain: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    for err in chain:
        if isinstance(err, StageError):
            return one_line(redact(str(err)))
    root = chain[-1]
    name, text = type(root).__name__, redact(str(root))
    return one_line(f"{name}: {text}" if text.strip() else name)


def counted(n: int, noun: str) -> str:
    """``1 task``, ``3 tasks``: a count and its noun, plural unless one (nouns with a plain ``s`` plural)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
