"""Label-engine kernels against the straightforward pandas implementations of the book's snippets.

- triple barrier: ``kernels.triple_barrier`` over every bar of a random walk as an event (volatility
  target, barriers at 1 and 1 targets, a vertical barrier 20 bars ahead), against the AFML
  ``applyPtSlOnT1``/``getBins`` loop in pandas (``tests/label_engine/reference.py``) on a slice of the
  events; the ratio is per event. Targets: at least 10M events/s and 5,000x pandas.
- trend scanning: ``kernels.trend_scanning`` (windows 5..20) against MLAM snippet 5.2 with numpy least
  squares per window, per event. Target 1,000x.

    python benchmarks/bench_label_engine.py [--bars 2_000_000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_state_engine import best_of  # noqa: E402

from quantflow.label_engine import kernels as k  # noqa: E402
from tests.label_engine import reference as ref  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bars", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args, _ = parser.parse_known_args()
    n = args.bars
    close = 100.0 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.01, n)))
    vol = pd.Series(np.log(close)).diff().ewm(span=100, min_periods=20).std().bfill().to_numpy()
    events = np.arange(n - 21, dtype=np.int64)
    vertical = events + 20
    side = np.ones(events.shape[0])

    def kernel_tb():
        return k.triple_barrier(close, close, close, events, vertical, vol[events], side, 1.0, 1.0, False)

    kernel_tb()  # compile or load
    tb_s = best_of(kernel_tb, args.repeat)
    sample = 2_000
    c = pd.Series(close[: sample + 21])
    pandas_s = best_of(lambda: ref.triple_barrier(c, list(range(sample)), pd.Series(vol[: sample + 21]),
                                                  pd.Series(1.0, index=c.index), (1.0, 1.0), 20, False), 1)
    tb_rate, pandas_rate = events.shape[0] / tb_s, sample / pandas_s
    print(f"  {'case':<40}{'QuantFlow':>16}{'pandas':>14}{'ratio':>12}{'target':>10}")
    print(f"  {'triple barrier (events/s)':<40}{tb_rate:>16,.0f}{pandas_rate:>14,.0f}{tb_rate / pandas_rate:>11,.0f}x"
          f"{'5000x':>10}  ({'met' if tb_rate >= 10e6 else 'MISSED'} 10M events/s)")

    m = min(n, 200_000)
    k.trend_scanning(close[:100], 5, 20, 1)
    ts_s = best_of(lambda: k.trend_scanning(close[:m], 5, 20, 1), args.repeat)
    sample = 300
    ref_s = best_of(lambda: ref.trend_scanning(pd.Series(close[: sample + 19]), range(5, 21)), 1)
    ts_rate, ref_rate = (m - 19) / ts_s, sample / ref_s
    print(f"  {'trend scanning 5..20 (events/s)':<40}{ts_rate:>16,.0f}{ref_rate:>14,.0f}"
          f"{ts_rate / ref_rate:>11,.0f}x{'1000x':>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
