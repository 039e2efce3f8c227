"""State engine: trades and quotes to enriched trades, order-book snapshots and bars (Numba kernels).

``runner.run`` is the stage's entry point; ``engine.process_shard`` the pure pass; ``kernels``, ``bars``
and ``book`` hold the kernels, ``frames`` the polars <-> numpy boundary. Importing the package loads
nothing heavy (the Dagster definitions import ``runner`` to name the tables): the names below come from
``engine`` and ``bars``, and so load Numba, only when they are first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BarSpec": "bars",
    "resample_daily_bars": "bars",
    "CarryState": "engine",
    "StateEngineSpec": "engine",
    "SymbolState": "engine",
    "bars_from_trades": "engine",
    "flush_state": "engine",
    "process_shard": "engine",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"quantflow.state_engine.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'quantflow.state_engine' has no attribute {name!r}")
