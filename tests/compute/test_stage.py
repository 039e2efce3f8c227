"""The stage contract's core: a run window validated once, result totals, and failures in one line."""

from __future__ import annotations

import datetime as dt

import pytest

from quantflow.compute.stage import RunWindow, StageError, StageResult, counted, failure_line
from quantflow.storage.writes import WriteResult

D = dt.date(2024, 3, 4)


def test_run_window_resolves_strings_defaults_and_subsets():
    w = RunWindow.resolve(["AAA", "BBB"], "2024-03-04", "2024-03-08", ["BBB"], "overwrite")
    assert (w.start_date, w.end_date, w.symbols, w.write_mode) == (D, dt.date(2024, 3, 8), ("BBB",), "overwrite")
    default = RunWindow.resolve(["AAA"], today=D)
    assert (default.start_date, default.end_date, default.symbols) == (D - dt.timedelta(days=1), D, ("AAA",))
    assert RunWindow.resolve(["AAA"], D, D).describe() == "2024-03-04, 1 symbol, skip_if_exists"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"start_date": "2024-03-05", "end_date": "2024-03-01"}, "start_date 2024-03-05 is after end_date 2024-03-01"),
    ({"start_date": "03/05/2024"}, "start_date: expected a date as YYYY-MM-DD, got '03/05/2024'"),
    ({"end_date": "tomorrow"}, "end_date: expected a date as YYYY-MM-DD, got 'tomorrow'"),
    ({"symbols": ["ZZZ"]}, "symbols: ['ZZZ'] are not in the project's symbols ['AAA']"),
    ({"write_mode": "merge"}, "write mode must be one of skip_if_exists, overwrite, append; got 'merge'"),
])
def test_run_window_names_the_bad_field(kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        RunWindow.resolve(["AAA"], **kwargs)
    assert str(excinfo.value) == message


def test_a_window_cannot_be_built_invalid_directly():
    with pytest.raises(ValueError, match="after end_date"):
        RunWindow(D, D - dt.timedelta(days=1), ("AAA",))
    with pytest.raises(ValueError, match="at least one symbol"):
        RunWindow(D, D, ())


def test_stage_result_adds_up_the_writes_of_a_table():
    result = StageResult("x", RunWindow(D, D, ("AAA",)))
    result.record_write("t", WriteResult("t", rows_written=3, days_written=1), "/lake/t")
    result.record_write("t", WriteResult("t", rows_written=2, days_skipped=1))
    assert result.rows_written == {"t": 5}
    assert (result.tables["t"].days_written, result.tables["t"].days_skipped) == (1, 1)
    assert result.table_urls == {"t": "/lake/t"}


def test_failure_line_is_the_stage_error_or_the_innermost_cause():
    try:
        try:
            raise OSError("Could not set lock on file\n  held by PID 42")
        except OSError as exc:
            raise RuntimeError("wrapper") from exc
    except RuntimeError as exc:
        assert failure_line(exc) == "OSError: Could not set lock on file held by PID 42"
    try:
        try:
            raise KeyError("raw")
        except KeyError as exc:
            raise StageError("feed 'x', symbol AAA: bad file") from exc
    except StageError as exc:
        assert failure_line(exc) == "feed 'x', symbol AAA: bad file"
    assert len(failure_line(ValueError("x" * 5000))) == 400


def test_counted_says_one_noun_and_many_nouns():
    assert [counted(n, "task") for n in (0, 1, 2, 315)] == ["0 tasks", "1 task", "2 tasks", "315 tasks"]
