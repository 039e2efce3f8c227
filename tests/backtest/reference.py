"""An independent rebalanced-portfolio simulation in plain numpy, to check the vectorbt backtest against."""

from __future__ import annotations

import numpy as np


def rebalanced_equity(close: np.ndarray, price: np.ndarray, targets: np.ndarray, fees: float, slippage: float,
                      init_cash: float) -> np.ndarray:
    """Equity at each close. ``targets``: dates x assets, NaN rows = no orders; at an order row every asset
    is traded to ``target * value`` (value at the order prices before trading), sells first, buys limited by
    the cash left; a buy pays ``price * (1 + slippage)``, a sale gets ``price * (1 - slippage)``, fees are
    proportional to the traded amount."""
    cash, shares = init_cash, np.zeros(close.shape[1])
    equity = np.empty(close.shape[0])
    for t in range(close.shape[0]):
        row = targets[t]
        if not np.isnan(row).all():
            value = cash + shares @ price[t]
            change = np.nan_to_num(row) * value / price[t] - shares
            for j in np.argsort(change * price[t], kind="stable"):  # sells (negative values) first
                size = change[j]
                if size == 0:
                    continue
                fill = price[t, j] * (1 + slippage * np.sign(size))
                if size > 0:
                    size = min(size, cash / (fill * (1 + fees)))
                    cash -= size * fill * (1 + fees)
                else:
                    cash += -size * fill * (1 - fees)
                shares[j] += size
        equity[t] = cash + shares @ close[t]
    return equity
