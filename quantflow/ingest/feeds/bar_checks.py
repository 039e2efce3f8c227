"""Sanity checks of daily OHLCV rows (shared by the daily-bar feeds so they reject the same things alike) and
of ticks (applied by the ingest runner to every feed's trades and quotes).

A bar that breaks these rules cannot be right (a high below the close, a negative volume); storing it would
poison every range, return and label computed downstream, so the feeds drop such rows and report them.
"""

from __future__ import annotations

import polars as pl

from quantflow.storage.tables import MAX_PLAUSIBLE_PRICE, MAX_PLAUSIBLE_SIZE


def ohlc_checks(
    open_: str = "open", high: str = "high", low: str = "low", close: str = "close", volume: str = "volume"
) -> list[pl.Expr]:
    """One expression per rule: the reason where the rule is broken, null where it holds or is unknown."""
    o, h, lo, c, v = (pl.col(x) for x in (open_, high, low, close, volume))
    top, bottom = pl.max_horizontal(o, c), pl.min_horizontal(o, c)
    rules = [
        (
            pl.min_horizontal(o, h, lo, c) <= 0,
            pl.format("non-positive price (open {}, high {}, low {}, close {})", o, h, lo, c),
        ),
        (h < top, pl.format("high {} < max(open, close) {}", h, top)),
        (lo > bottom, pl.format("low {} > min(open, close) {}", lo, bottom)),
        (h < lo, pl.format("high {} < low {}", h, lo)),
        (v < 0, pl.format("negative volume {}", v)),
        # finite and positive, yet no market trades at 1e308: a corrupt value, not a price
        (pl.max_horizontal(o, h, lo, c) >= MAX_PLAUSIBLE_PRICE,
         pl.format(f"implausible price (open {{}}, high {{}}, low {{}}, close {{}}; {MAX_PLAUSIBLE_PRICE:g} or more)",
                   o, h, lo, c)),
        (v >= MAX_PLAUSIBLE_SIZE, pl.format(f"implausible volume {{}} ({MAX_PLAUSIBLE_SIZE:g} or more)", v)),
    ]
    return [pl.when(cond).then(msg) for cond, msg in rules]


def join_reasons(reasons: list[pl.Expr]) -> pl.Expr:
    """All non-null reasons joined with '; ', or null when there are none."""
    if not reasons:
        return pl.lit(None, pl.Utf8)
    joined = pl.concat_str(reasons, separator="; ", ignore_nulls=True)
    return pl.when(joined.str.len_chars() > 0).then(joined).otherwise(None)


def _finite_positive(col: str) -> pl.Expr:
    c = pl.col(col)
    return c.is_null() | ~c.is_finite() | (c <= 0)


TICK_PRICES = {"trades": ("price",), "quotes": ("bid", "ask")}
TICK_SIZES = {"trades": ("size",), "quotes": ("bid_size", "ask_size")}


def tick_checks(kind: str) -> list[pl.Expr]:
    """The reasons a trade or quote cannot be right (null where it holds): a missing, non-finite or
    non-positive price or size, an implausible one (1e308 is finite and positive), a crossed quote."""
    rules = []
    for col in TICK_PRICES.get(kind, ()):
        rules.append((_finite_positive(col), pl.format(f"{col} {{}} is missing, non-finite or not positive",
                                                       pl.col(col))))
        rules.append((pl.col(col) >= MAX_PLAUSIBLE_PRICE,
                      pl.format(f"implausible {col} {{}} ({MAX_PLAUSIBLE_PRICE:g} or more)", pl.col(col))))
    for col in TICK_SIZES.get(kind, ()):
        rules.append((_finite_positive(col), pl.format(f"{col} {{}} is missing, non-finite or not positive",
                                                       pl.col(col))))
        rules.append((pl.col(col) >= MAX_PLAUSIBLE_SIZE,
                      pl.format(f"implausible {col} {{}} ({MAX_PLAUSIBLE_SIZE:g} or more)", pl.col(col))))
    if kind == "quotes":
        rules.append((pl.col("bid") > pl.col("ask"), pl.format("crossed quote: bid {} > ask {}", pl.col("bid"),
                                                               pl.col("ask"))))
    return [pl.when(cond).then(msg) for cond, msg in rules]
