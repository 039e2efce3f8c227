"""Yahoo Finance daily bars through the ``yfinance`` library, one batch per symbol.

Each symbol is one ``yf.Ticker(symbol, session=...).history(start, end + 1 day, interval="1d",
auto_adjust=False, actions=True)`` call (Yahoo's ``end`` is exclusive, ours inclusive). The bars are always
fetched unadjusted-for-dividends, with Yahoo's ``Adj Close``, and adjusted here exactly as yfinance's own
``auto_adjust`` does (``ratio = Adj Close / Close``; open, high, low times the ratio; close = Adj Close), so
that ``adj_factor`` can record the ratio; with ``params.auto_adjust`` false the prices are stored as Yahoo
gives them (split-adjusted, not dividend-adjusted: Yahoo's convention) with ``adj_factor`` 1. Yahoo's
index is midnight in the exchange time zone, so its date is the local trading date.

Errors. yfinance normally logs errors and returns an empty frame, which would make a failed download look
like a day without trading; the calls here run with ``yf.config.debug.hide_exceptions = False`` (set and
restored around each call, under a lock) so failures raise. Connection errors, rate limiting, Yahoo being
down and unreadable responses are retried ``params.max_retries`` times with exponential backoff from
``params.backoff_seconds`` (yfinance's in-memory response cache is cleared before a retry, or the retry
would get the same bad response back). Yahoo saying it has no prices for the range (a holiday, a
pre-listing range) yields an empty batch with a warning; a symbol without a time zone (Yahoo does not
know it) is a ``FeedError``. Calls are paced by ``params.requests_per_minute`` (one history call makes one
or two HTTP requests). Rows with missing or inconsistent OHLC are dropped and reported in ``bad_rows``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl
import yfinance as yf
from yfinance import exceptions as yf_errors

from quantflow.ingest.feeds.bar_checks import join_reasons, ohlc_checks
from quantflow.ingest.feeds.base import Feed, FeedBatch, weekdays
from quantflow.ingest.feeds.throttle import RateLimiter, backoff_delay
from quantflow.metadata.schema import YFinanceFeedParams

log = logging.getLogger(__name__)

_CONFIG_LOCK = threading.Lock()
YAHOO_COLUMNS = {
    "Open": "open",
    "High": "high",
    "Low": "low",
    "Close": "close",
    "Adj Close": "adj_close",
    "Volume": "volume",
}


@contextlib.contextmanager
def _yfinance_raises() -> Iterator[None]:
    """Make yfinance raise its errors instead of logging them and returning an empty frame."""
    with _CONFIG_LOCK:
        previous = yf.config.debug.hide_exceptions
        yf.config.debug.hide_exceptions = False
        try:
            yield
        finally:
            yf.config.debug.hide_exceptions = previous


def _clear_response_cache() -> None:
    """yfinance memoises responses of past date ranges in memory; a retry must really ask again."""
    try:
        from yfinance.data import YfData

        YfData.cache_get.cache_clear()
    except (ImportError, AttributeError):  # a yfinance without that cache: nothing to clear
        pass


class YFinanceFeed(Feed):
    """``YFinanceFeed(name, params, project_dir, *, session=None, sleep=time.sleep, clock=time.monotonic)``.

    ``session``: a ``requests`` or ``curl_cffi`` session handed to yfinance (None: yfinance's default).
    """

    kind = "yfinance"
    params_model = YFinanceFeedParams

    def __init__(
        self,
        name: str,
        params: YFinanceFeedParams | dict | None,
        project_dir,
        *,
        session: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(name, params, project_dir)
        self.session = session
        self._sleep = sleep
        self.limiter = RateLimiter(self.params.requests_per_minute, clock=clock, sleep=sleep)
        self.calls_made = 0

    def iter_batches(self, symbols: list[str], start: dt.date, end: dt.date) -> Iterator[FeedBatch]:
        symbols = self.check_range(symbols, start, end)
        for symbol in symbols:
            if not weekdays(start, end):
                yield self.batch()
                continue
            history = self.fetch_history(symbol, start, end)
            bars, bad = self.to_bars(symbol, history, start, end)
            yield self.batch(bad_rows=bad, bars_daily=bars)

    def fetch_history(self, symbol: str, start: dt.date, end: dt.date):
        """yfinance's daily history frame (pandas) for [start, end], retried; empty when Yahoo has none."""
        last = "no attempt made"
        for attempt in range(self.params.max_retries + 1):
            self.limiter.wait()
            self.calls_made += 1
            try:
                with _yfinance_raises():
                    ticker = yf.Ticker(symbol, session=self.session)
                    return ticker.history(
                        start=start.isoformat(),
                        end=(end + dt.timedelta(days=1)).isoformat(),
                        interval=self.params.interval,
                        auto_adjust=False,
                        actions=True,
                        timeout=self.params.timeout_seconds,
                    )
            except yf_errors.YFTzMissingError as exc:
                raise self.error(
                    f"Yahoo does not know this symbol (no exchange time zone): {exc}", symbol=symbol
                ) from exc
            except yf_errors.YFPricesMissingError as exc:
                log.warning(
                    "feed %s: %s: Yahoo has no prices for %s..%s: %s", self.name, symbol, start, end, exc
                )
                return None
            except Exception as exc:  # noqa: BLE001 - any other failure of the download is worth a retry
                last = f"{type(exc).__name__}: {exc}"
            _clear_response_cache()
            if attempt < self.params.max_retries:
                delay = backoff_delay(self.params.backoff_seconds, attempt)
                log.warning(
                    "feed %s: %s history failed (%s); retry %d/%d in %.2fs",
                    self.name,
                    symbol,
                    last,
                    attempt + 1,
                    self.params.max_retries,
                    delay,
                )
                self._sleep(delay)
        raise self.error(
            f"Yahoo history {start}..{end} failed after {self.params.max_retries + 1} attempts; "
            f"last error: {last}",
            symbol=symbol,
        )

    def to_bars(
        self, symbol: str, history, start: dt.date, end: dt.date
    ) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
        """yfinance's frame (index: midnight in the exchange zone; Open..Volume, Adj Close) -> bars_daily."""
        if history is None or len(history) == 0:
            return None, None
        present = {src: dst for src, dst in YAHOO_COLUMNS.items() if src in history.columns}
        if "Adj Close" not in present:
            present["Close"] = "close"
        data: dict[str, Any] = {
            dst: history[src].to_numpy(dtype="float64", na_value=float("nan")) for src, dst in present.items()
        }
        data["date"] = [ts.date() for ts in history.index]
        df = pl.DataFrame(data).with_columns(pl.col(pl.Float64).fill_nan(None))
        if "adj_close" not in df.columns:
            df = df.with_columns(pl.col("close").alias("adj_close"))
        df = df.filter(pl.col("date").is_between(start, end))

        missing = pl.concat_str(
            [
                pl.when(pl.col(c).is_null()).then(pl.lit(c))
                for c in ("open", "high", "low", "close", "volume")
            ],
            separator=", ",
            ignore_nulls=True,
        )
        reasons = [
            pl.when(missing.str.len_chars() > 0).then(pl.format("Yahoo returned no {}", missing)),
            *ohlc_checks(),
        ]
        if self.params.auto_adjust:
            reasons.append(
                pl.when(pl.col("adj_close").is_null() | (pl.col("adj_close") <= 0)).then(
                    pl.format("unusable Adj Close {}", pl.col("adj_close"))
                )
            )
        df = df.with_columns(join_reasons(reasons).alias("reason"))
        bad = df.filter(pl.col("reason").is_not_null()).select(
            pl.lit(self.name).alias("feed"),
            pl.lit(symbol).alias("symbol"),
            pl.col("date").cast(pl.Utf8),
            pl.lit(f"yahoo chart {symbol}").alias("file"),
            pl.lit(None, pl.Int64).alias("line"),
            "reason",
        )
        good = df.filter(pl.col("reason").is_null())
        if self.params.auto_adjust:
            ratio = pl.col("adj_close") / pl.col("close")
            good = good.with_columns(
                (pl.col("open") * ratio).alias("open"),
                (pl.col("high") * ratio).alias("high"),
                (pl.col("low") * ratio).alias("low"),
                pl.col("adj_close").alias("close"),
                ratio.alias("adj_factor"),
            )
        else:
            good = good.with_columns(pl.lit(1.0).alias("adj_factor"))
        bars = (
            good.select(
                pl.lit(symbol).alias("symbol"), "date", "open", "high", "low", "close", "volume", "adj_factor"
            )
            .unique("date", keep="first", maintain_order=True)
            .sort("date")
        )
        return bars, bad
