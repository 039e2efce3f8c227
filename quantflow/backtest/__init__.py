"""Backtest stage: target weights -> a vectorbt backtest, benchmarks and metrics (see runner.py)."""
