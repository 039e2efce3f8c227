"""Deterministic market simulator: trades, quotes and daily bars for any (symbol, date, seed).

Why it exists: every stage downstream (state engine, bars, labels, features, models, backtests) needs tick
data with realistic structure to be developed and tested offline, and the tests need the same data every
time. So each trading day is a pure function of (symbol, date, seed, params): the same day comes out
identical whatever range was requested and in whatever order days are generated.

How a day is built (all vectorised numpy, one ``Generator`` per day seeded from a stable hash):

- Daily path. Trading days are Monday to Friday, numbered from ``CALENDAR_EPOCH`` (2000-01-03, day 0;
  earlier dates get negative numbers). Each day has two standard normal shocks, intraday and overnight,
  drawn in blocks of 1,024 days from a generator seeded by (symbol, seed, block) and cached, so a day's
  open is a sum of shocks reachable in O(days / 1024) without simulating the intervening days:
  ``log open(n) = log start_price + sigma_id * S_id(n) + sigma_on * S_on(n)`` where ``S`` are the shock
  sums over days before ``n`` (so ``start_price`` is the open of 2000-01-03), and the day's close target is
  ``open(n) * exp(sigma_id * z_id(n))``; the next open adds the overnight shock, so consecutive days connect
  through a realistic overnight gap. The log price has no drift: its median stays at ``start_price``.
  ``annual_volatility`` is split 80 % intraday, 20 % overnight (daily variance = annual**2 / 252).
- Activity. The day's trade count varies around ``trades_per_day`` (lognormal activity factor, then
  Poisson); quote updates number about ``quotes_per_trade`` per trade. Event times follow a U-shaped
  intensity ``1 + 3 (2u - 1)**2`` over the session fraction ``u`` (4x busier at the open and close than at
  midday), sampled by inverse CDF from sorted uniforms. The first quote is at the session open.
- Order flow. Aggressor sides are a persistent Markov chain (a side flips with probability 0.35: order
  splitting makes real trade signs autocorrelated); sizes are heavy tailed: 85 % round lots with a
  lognormal number of lots, 15 % odd lots.
- Mid price at quote updates: a diffusion with U-shaped intraday volatility ``1 + 2 (2u - 1)**2`` (70 % of
  the intraday variance) plus permanent price impact of the signed order flow (30 %), then bridged so the
  first quote's mid is the day's open and the path ends at the close target.
- Quotes: spread in ticks around the mid (``spread_bps`` of the mid, wider just after the open, lognormal
  noise, at least one tick), bid and ask on the tick grid, sizes in round lots.
- Trades: at the prevailing quote (the last quote at or before the trade; a quote and a trade in the same
  nanosecond count the quote first): 85 % at the touch (buy at the ask, sell at the bid) and, when the
  spread is two ticks or more, 15 % at a tick strictly inside the spread. ``side`` is the true aggressor
  side, the ground truth a trade-classification check (Lee-Ready) can be scored against.
- Daily bars (``params.daily_bars``) are computed from the day's trades: open is the first trade, close the
  last, volume the sum of sizes, ``adj_factor`` 1 (no corporate actions are simulated).

Timestamps are UTC nanoseconds inside ``[session_open, session_close)`` in ``params.timezone`` (DST via
zoneinfo), strictly increasing per table per day; ``trade_id`` and ``quote_id`` count from 1 per day.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
from collections.abc import Iterator
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import polars as pl

from quantflow.ingest.feeds.base import Feed, FeedBatch, weekdays
from quantflow.metadata.schema import SyntheticFeedParams
from quantflow.storage.schemas import UTC_NS

CALENDAR_EPOCH = dt.date(2000, 1, 3)  # a Monday: trading day 0 of the daily path
_BLOCK = 1024  # trading days per cached block of daily shocks
_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

_OVERNIGHT_SHARE = 0.2  # of the daily variance
_IMPACT_SHARE = 0.3  # of the intraday variance, from signed order flow
_ACTIVITY_U = 3.0  # intensity 1 + A (2u-1)^2: open/close 4x midday
_VOLATILITY_U = 2.0  # variance rate 1 + B (2u-1)^2
_ACTIVITY_SD = 0.2  # day-to-day activity factor (lognormal sd)
_SIDE_FLIP = 0.35  # probability the next trade's aggressor side differs
_AT_TOUCH = 0.85  # share of trades at the bid or ask (the rest inside when the spread allows)
_ODD_LOT = 0.15  # share of odd-lot trades
_LOT = 100.0
_OPEN_SPREAD_BOOST = 1.5  # spread multiplier 1 + 1.5 exp(-20 u): wide right after the open
_SPREAD_NOISE_SD = 0.25


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from the parts' text: stable across processes and Python versions (unlike hash())."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def trading_day_index(day: dt.date) -> int:
    """Weekdays from ``CALENDAR_EPOCH`` to ``day`` (negative before it); ``day`` must be a weekday."""
    weeks, rem = divmod((day - CALENDAR_EPOCH).days, 7)
    if rem >= 5:
        raise ValueError(f"{day} is a weekend day, not a trading day")
    return weeks * 5 + rem


@functools.lru_cache(maxsize=4096)
def _shock_block(symbol: str, seed: int, block: int) -> np.ndarray:
    """Prefix sums (2 x (BLOCK + 1)) of the intraday and overnight shocks of trading days in ``block``."""
    rng = np.random.default_rng(stable_seed("daily", symbol, seed, block))
    prefix = np.zeros((2, _BLOCK + 1))
    np.cumsum(rng.standard_normal((2, _BLOCK)), axis=1, out=prefix[:, 1:])
    prefix.flags.writeable = False
    return prefix


def daily_shocks(symbol: str, seed: int, n: int) -> tuple[float, float, float]:
    """(sum of intraday, sum of overnight shocks) over the days before ``n``, and day ``n``'s intraday shock.

    For negative ``n`` the sums run over ``[n, 0)`` with a minus sign, so ``S(0) = 0`` and
    ``S(n + 1) - S(n)`` is day ``n``'s shock for every ``n``.
    """
    block, k = divmod(n, _BLOCK)
    prefix = _shock_block(symbol, seed, block)
    total = prefix[:, k].copy()
    if block >= 0:
        for j in range(block):
            total += _shock_block(symbol, seed, j)[:, -1]
    else:
        for j in range(block, 0):
            total -= _shock_block(symbol, seed, j)[:, -1]
    return float(total[0]), float(total[1]), float(prefix[0, k + 1] - prefix[0, k])


def _u_shape_cdf(strength: float, size: int = 4097) -> tuple[np.ndarray, np.ndarray]:
    """Grid of u in [0, 1] and the normalised integral of ``1 + strength (2u - 1)**2``."""
    u = np.linspace(0.0, 1.0, size)
    cdf = (u + strength * ((2 * u - 1) ** 3 + 1) / 6) / (1 + strength / 3)
    return u, cdf


_U_GRID, _ACTIVITY_CDF = _u_shape_cdf(_ACTIVITY_U)


def _volatility_cdf(u: np.ndarray) -> np.ndarray:
    w = 2 * u - 1
    return (u + _VOLATILITY_U * (w * w * w + 1) / 6) / (1 + _VOLATILITY_U / 3)


def _event_fractions(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` sorted session fractions in (0, 1) from the U-shaped intensity (O(n): no sort needed)."""
    gaps = rng.standard_exponential(n + 1)
    sorted_uniform = np.cumsum(gaps)[:n] / gaps.sum()
    return np.interp(sorted_uniform, _ACTIVITY_CDF, _U_GRID)


def _strictly_increasing(offsets: np.ndarray) -> np.ndarray:
    """Bump ties forward by whole nanoseconds so the sequence strictly increases (keeps order)."""
    steps = np.arange(offsets.size, dtype=np.int64)
    return np.maximum.accumulate(offsets - steps) + steps


def _to_ns(moment: dt.datetime) -> int:
    return (moment - _EPOCH_UTC) // dt.timedelta(microseconds=1) * 1000


def _decimals(tick: float) -> int:
    return max(0, -Decimal(repr(tick)).normalize().as_tuple().exponent)


class SyntheticDay:
    """One simulated (symbol, day): numpy arrays of trades and quotes, and frames built from them."""

    def __init__(self, symbol: str, day: dt.date, params: SyntheticFeedParams, tz: ZoneInfo):
        self.symbol, self.day = symbol, day
        p = params
        open_ns = _to_ns(dt.datetime.combine(day, p.session_open, tzinfo=tz))
        close_ns = _to_ns(dt.datetime.combine(day, p.session_close, tzinfo=tz))
        session = close_ns - open_ns

        sigma_day = p.annual_volatility / math.sqrt(252.0)
        sigma_id = sigma_day * math.sqrt(1 - _OVERNIGHT_SHARE)
        sigma_on = sigma_day * math.sqrt(_OVERNIGHT_SHARE)
        s_id, s_on, z_today = daily_shocks(symbol, p.seed, trading_day_index(day))
        self.open_price = p.start_price * math.exp(sigma_id * s_id + sigma_on * s_on)
        target = sigma_id * z_today  # log(close target / open)

        rng = np.random.default_rng(stable_seed("day", symbol, day.isoformat(), p.seed))
        activity = math.exp(_ACTIVITY_SD * rng.standard_normal() - _ACTIVITY_SD**2 / 2)
        n_trades = max(1, int(rng.poisson(p.trades_per_day * activity)))
        n_quotes = max(2, int(rng.poisson(n_trades * p.quotes_per_trade)))
        if session < 4 * (n_trades + n_quotes):
            raise ValueError(
                f"session {p.session_open}-{p.session_close} is too short for {n_trades + n_quotes} events"
            )

        # event times: quotes (the first at the open) and trades, strictly increasing nanosecond offsets
        u_quotes = np.concatenate(([0.0], _event_fractions(rng, n_quotes - 1)))
        q_off = _strictly_increasing(np.floor(u_quotes * session).astype(np.int64))
        u_trades = _event_fractions(rng, n_trades)
        t_off = _strictly_increasing(np.clip(np.floor(u_trades * session).astype(np.int64), 1, session - 1))
        if q_off[-1] >= session or t_off[-1] >= session:
            raise ValueError("too many events for the session length")

        # order flow: persistent aggressor signs, heavy-tailed sizes
        flips = rng.random(n_trades) < _SIDE_FLIP
        flips[0] = False
        side = (1 if rng.random() < 0.5 else -1) * np.cumprod(np.where(flips, -1, 1))
        lots = np.maximum(1.0, np.rint(np.exp(0.4 + 1.0 * rng.standard_normal(n_trades))))
        odd = rng.random(n_trades) < _ODD_LOT
        size = np.where(odd, rng.integers(1, 100, n_trades).astype(np.float64), lots * _LOT)

        # mid path at quote times: seasonal diffusion + impact of signed flow, bridged open -> close target
        var_id = sigma_id**2
        flow = side * np.sqrt(size / _LOT)
        cum_flow = np.concatenate(([0.0], np.cumsum(flow)))
        flow_at_quote = cum_flow[np.searchsorted(t_off, q_off, side="left")]
        rho = 1 - 2 * _SIDE_FLIP
        flow_var = n_trades * float(np.mean(flow**2)) * (1 + rho) / (1 - rho)
        impact = math.sqrt(_IMPACT_SHARE * var_id / flow_var)
        vol_cdf = _volatility_cdf(u_quotes)
        cum_var = (1 - _IMPACT_SHARE) * var_id * vol_cdf
        steps = np.sqrt(np.diff(cum_var)) * rng.standard_normal(n_quotes - 1)
        diffusion = np.concatenate(([0.0], np.cumsum(steps)))
        tail = math.sqrt(max(0.0, (1 - _IMPACT_SHARE) * var_id - cum_var[-1])) * rng.standard_normal()
        path = diffusion + impact * flow_at_quote
        path_end = diffusion[-1] + tail + impact * cum_flow[-1]
        path -= vol_cdf * (path_end - target)
        mid = self.open_price * np.exp(path)

        # quotes on the tick grid
        tick = p.tick_size
        spread_ticks = np.maximum(
            1.0,
            np.rint(
                p.spread_bps
                * 1e-4
                * mid
                / tick
                * (1 + _OPEN_SPREAD_BOOST * np.exp(-20 * u_quotes))
                * np.exp(_SPREAD_NOISE_SD * rng.standard_normal(n_quotes) - _SPREAD_NOISE_SD**2 / 2)
            ),
        )
        bid_ticks = np.maximum(1.0, np.floor(mid / tick - spread_ticks / 2 + 0.5))
        ask_ticks = bid_ticks + spread_ticks
        quote_lots = np.maximum(1.0, np.rint(np.exp(1.2 + 0.7 * rng.standard_normal((2, n_quotes)))))

        # trades at the prevailing quote: mostly at the touch, some strictly inside wide spreads
        prevailing = np.searchsorted(q_off, t_off, side="right") - 1
        bid_t, spread_t = bid_ticks[prevailing], spread_ticks[prevailing]
        inside = (rng.random(n_trades) >= _AT_TOUCH) & (spread_t >= 2)
        inside_ticks = bid_t + 1 + np.floor(rng.random(n_trades) * (spread_t - 1))
        touch_ticks = np.where(side > 0, bid_t + spread_t, bid_t)
        price_ticks = np.where(inside, inside_ticks, touch_ticks)

        decimals = _decimals(tick)
        self.quote_ts = open_ns + q_off
        self.bid = np.round(bid_ticks * tick, decimals)
        self.ask = np.round(ask_ticks * tick, decimals)
        self.bid_size = quote_lots[0] * _LOT
        self.ask_size = quote_lots[1] * _LOT
        self.trade_ts = open_ns + t_off
        self.price = np.round(price_ticks * tick, decimals)
        self.size = size
        self.side = side.astype(np.int8)

    def trades(self) -> pl.DataFrame:
        n = self.price.size
        return pl.DataFrame(
            {
                "symbol": pl.repeat(self.symbol, n, dtype=pl.Utf8, eager=True),
                "date": pl.repeat(self.day, n, dtype=pl.Date, eager=True),
                "ts": pl.Series(self.trade_ts, dtype=pl.Int64).cast(UTC_NS),
                "trade_id": np.arange(1, n + 1, dtype=np.int64),
                "price": self.price,
                "size": self.size,
                "side": self.side,
            }
        )

    def quotes(self) -> pl.DataFrame:
        n = self.bid.size
        return pl.DataFrame(
            {
                "symbol": pl.repeat(self.symbol, n, dtype=pl.Utf8, eager=True),
                "date": pl.repeat(self.day, n, dtype=pl.Date, eager=True),
                "ts": pl.Series(self.quote_ts, dtype=pl.Int64).cast(UTC_NS),
                "quote_id": np.arange(1, n + 1, dtype=np.int64),
                "bid": self.bid,
                "ask": self.ask,
                "bid_size": self.bid_size,
                "ask_size": self.ask_size,
            }
        )

    def daily_bar(self) -> dict:
        return {
            "symbol": self.symbol,
            "date": self.day,
            "open": float(self.price[0]),
            "high": float(self.price.max()),
            "low": float(self.price.min()),
            "close": float(self.price[-1]),
            "volume": float(self.size.sum()),
            "adj_factor": 1.0,
        }


class SyntheticFeed(Feed):
    """``SyntheticFeed(name, params, project_dir)``: one batch per (symbol, trading day).

    Each batch holds that day's trades and quotes; the symbol's daily bars (when ``params.daily_bars``)
    come in its last batch, so the bars table is written once per symbol rather than once per day.
    """

    kind = "synthetic"
    params_model = SyntheticFeedParams

    def __init__(self, name: str, params: SyntheticFeedParams | dict | None, project_dir):
        super().__init__(name, params, project_dir)
        p = self.params
        try:
            self.tz = ZoneInfo(p.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise self.error(f"unknown timezone {p.timezone!r}") from exc
        if p.session_close <= p.session_open:
            raise self.error(f"session_close {p.session_close} must be after session_open {p.session_open}")

    def simulate_day(self, symbol: str, day: dt.date) -> SyntheticDay:
        """The deterministic simulation of one (symbol, weekday)."""
        try:
            return SyntheticDay(symbol, day, self.params, self.tz)
        except ValueError as exc:
            raise self.error(f"{day}: {exc}", symbol=symbol) from exc

    def expected_batches(self, symbols: list[str], start: dt.date, end: dt.date) -> int:
        return len(symbols) * len(weekdays(start, end))

    def iter_batches(self, symbols: list[str], start: dt.date, end: dt.date) -> Iterator[FeedBatch]:
        symbols = self.check_range(symbols, start, end)
        days = weekdays(start, end)
        for symbol in symbols:
            bars = []
            for i, day in enumerate(days):
                sim = self.simulate_day(symbol, day)
                frames = {"trades": sim.trades(), "quotes": sim.quotes()}
                if self.params.daily_bars:
                    bars.append(sim.daily_bar())
                    if i == len(days) - 1:
                        frames["bars_daily"] = pl.DataFrame(bars)
                yield self.batch(**frames)
