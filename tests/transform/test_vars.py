"""The dbt ``--vars`` helper: the only channel through which the models learn their date window."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from quantflow.transform.vars import dbt_vars_args


def test_dbt_vars_args_is_the_exact_cli_form():
    args = dbt_vars_args(dt.date(2024, 1, 2), dt.date(2024, 1, 31))
    assert args == ["--vars", '{"start_date": "2024-01-02", "end_date": "2024-01-31"}']


def test_dbt_vars_args_single_day_and_symbols_are_canonical():
    flag, payload = dbt_vars_args(dt.date(2024, 2, 29), dt.date(2024, 2, 29), symbols=["bbb ", "AAA", "BBB"])
    assert flag == "--vars"
    assert json.loads(payload) == {"start_date": "2024-02-29", "end_date": "2024-02-29", "symbols": ["AAA", "BBB"]}


def test_dbt_vars_args_rejects_a_reversed_window():
    with pytest.raises(ValueError, match="after end"):
        dbt_vars_args(dt.date(2024, 1, 3), dt.date(2024, 1, 2))
