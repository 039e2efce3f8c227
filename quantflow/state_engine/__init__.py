"""State engine: trades and quotes to enriched trades, order-book snapshots and bars (Numba kernels).

``process_shard`` is the pure entry point (see ``engine``); ``kernels`` and ``bars`` hold the kernels.
"""

from quantflow.state_engine.bars import BarSpec, resample_daily_bars
from quantflow.state_engine.engine import (
    ENRICHED_TABLE,
    LOB_TABLE,
    CarryState,
    StateEngineSpec,
    SymbolState,
    bars_from_trades,
    flush_state,
    process_shard,
)

__all__ = [
    "ENRICHED_TABLE",
    "LOB_TABLE",
    "BarSpec",
    "CarryState",
    "StateEngineSpec",
    "SymbolState",
    "bars_from_trades",
    "flush_state",
    "process_shard",
    "resample_daily_bars",
]
