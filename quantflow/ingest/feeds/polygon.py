"""Polygon.io REST feed: daily aggregates, or trades, or quotes (``params.data``), with ``requests``.

Endpoints (``params.base_url`` overridable, e.g. for a proxy or a test server):

- ``bars_daily``: ``/v2/aggs/ticker/{sym}/range/1/day/{from}/{to}?adjusted=..&sort=asc&limit=..``, one batch
  per symbol. Polygon stamps a daily bar with the start of its day in New York (``t``, ms), converted to
  the local date in ``params.timezone``. With ``adjusted=true`` Polygon does not say by how much a bar was
  adjusted, so ``adj_factor`` is null; with ``adjusted=false`` it is 1. Bars failing the OHLC sanity checks
  or missing a field are dropped and reported in ``bad_rows``.
- ``trades`` / ``quotes``: ``/v3/trades/{sym}`` and ``/v3/quotes/{sym}`` with ``timestamp.gte`` /
  ``timestamp.lt`` set to the local midnights (ns) around each weekday, ``sort=timestamp&order=asc``; one
  batch per symbol-day, weekends not requested (each request counts against the quota). ``ts`` is the SIP
  timestamp; ids count from 1 in feed order; trades carry no aggressor side (Polygon does not give one);
  a zero quote price means that side is empty and becomes null (price and size).

Every list response is paginated: ``next_url`` is followed until absent. The API key is read from the
environment variable named by ``params.api_key_env`` when fetching starts (never at import), sent as a
Bearer header rather than in the URL so it never shows up in logs or error messages. Requests are paced by
``params.requests_per_minute``; HTTP 429, 5xx, connection errors, timeouts and unreadable bodies are
retried ``params.max_retries`` times with exponential backoff from ``params.backoff_seconds`` (a server's
Retry-After wins); other 4xx answers (bad key, unknown ticker, plan limits) fail at once with Polygon's
message.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
import requests

from quantflow.ingest.feeds.bar_checks import join_reasons, ohlc_checks
from quantflow.ingest.feeds.base import Feed, FeedBatch, weekdays
from quantflow.ingest.feeds.throttle import RateLimiter, backoff_delay, parse_retry_after
from quantflow.metadata.schema import PolygonFeedParams
from quantflow.storage.schemas import UTC_NS

log = logging.getLogger(__name__)

OK_STATUSES = ("OK", "DELAYED")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class PolygonFeed(Feed):
    """``PolygonFeed(name, params, project_dir, *, session=None, sleep=time.sleep, clock=time.monotonic)``.

    ``session`` (a ``requests.Session``), ``sleep`` and ``clock`` are injectable for tests.
    """

    kind = "polygon"
    params_model = PolygonFeedParams

    def __init__(
        self,
        name: str,
        params: PolygonFeedParams | dict | None,
        project_dir,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(name, params, project_dir)
        try:
            self.tz = ZoneInfo(self.params.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise self.error(f"unknown timezone {self.params.timezone!r}") from exc
        self.session = session or requests.Session()
        self._sleep = sleep
        self.limiter = RateLimiter(self.params.requests_per_minute, clock=clock, sleep=sleep)
        self.requests_made = 0

    def api_key(self) -> str:
        var = self.params.api_key_env
        key = os.environ.get(var, "").strip()
        if not key:
            raise self.error(
                f"environment variable {var} is not set: it must hold the Polygon API key "
                f"(params.api_key_env names the variable)"
            )
        return key

    def expected_batches(self, symbols: list[str], start: dt.date, end: dt.date) -> int:
        per_symbol = 1 if self.params.data == "bars_daily" else len(weekdays(start, end))
        return len(symbols) * per_symbol

    def iter_batches(self, symbols: list[str], start: dt.date, end: dt.date) -> Iterator[FeedBatch]:
        symbols = self.check_range(symbols, start, end)
        key = self.api_key()
        base = self.params.base_url.rstrip("/")
        for symbol in symbols:
            if self.params.data == "bars_daily":
                url = f"{base}/v2/aggs/ticker/{symbol}/range/1/day/{start.isoformat()}/{end.isoformat()}"
                query = {
                    "adjusted": str(self.params.adjusted).lower(),
                    "sort": "asc",
                    "limit": self.params.page_limit,
                }
                results = [r for page in self.pages(url, query, key, symbol) for r in page]
                bars, bad = self.bars_from(symbol, results, start, end, url)
                yield self.batch(bad_rows=bad, bars_daily=bars)
                continue
            for day in weekdays(start, end):
                lo = self._local_midnight_ns(day)
                hi = self._local_midnight_ns(day + dt.timedelta(days=1))
                url = f"{base}/v3/{self.params.data}/{symbol}"
                query = {
                    "timestamp.gte": lo,
                    "timestamp.lt": hi,
                    "limit": self.params.page_limit,
                    "sort": "timestamp",
                    "order": "asc",
                }
                # each page becomes a compact frame at once: a liquid symbol has millions of quotes a day
                to_frame = self.trades_from if self.params.data == "trades" else self.quotes_from
                frames = [to_frame(page) for page in self.pages(url, query, key, symbol)]
                ticks = pl.concat(frames) if frames else to_frame([])
                seq = "trade_id" if self.params.data == "trades" else "quote_id"
                ticks = ticks.with_columns(
                    pl.lit(symbol).alias("symbol"),
                    pl.lit(day).alias("date"),
                    pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(seq),
                )
                yield self.batch(**{self.params.data: ticks})

    # ------------------------------------------------------------------ HTTP
    def pages(self, url: str, query: dict[str, Any] | None, key: str, symbol: str) -> Iterator[list[dict]]:
        """The ``results`` of each page, following ``next_url`` until the last page."""
        while url:
            body = self.get_json(url, query, key, symbol)
            yield body.get("results") or []
            url, query = body.get("next_url"), None  # next_url carries the cursor and all filters

    def get_json(self, url: str, query: dict[str, Any] | None, key: str, symbol: str) -> dict:
        """One GET with pacing and retries; the parsed JSON body, or a ``FeedError``."""
        where = urlsplit(url).path
        last = "no attempt made"
        for attempt in range(self.params.max_retries + 1):
            self.limiter.wait()
            self.requests_made += 1
            retry_after = None
            try:
                resp = self.session.get(
                    url,
                    params=query,
                    timeout=self.params.timeout_seconds,
                    headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code in RETRY_STATUS:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    last = f"HTTP {resp.status_code}: {_message(resp)}"
                elif resp.status_code >= 400:
                    hint = " (check the API key and plan)" if resp.status_code in (401, 403) else ""
                    raise self.error(
                        f"Polygon answered HTTP {resp.status_code} for {where}{hint}: {_message(resp)}",
                        symbol=symbol,
                    )
                else:
                    try:
                        body = resp.json()
                    except ValueError:
                        last = f"HTTP {resp.status_code} with a body that is not JSON: {resp.text[:200]!r}"
                    else:
                        status = body.get("status")
                        if status is not None and status not in OK_STATUSES:
                            raise self.error(
                                f"Polygon status {status} for {where}: "
                                f"{body.get('error') or body.get('message') or body}",
                                symbol=symbol,
                            )
                        return body
            if attempt < self.params.max_retries:
                delay = backoff_delay(self.params.backoff_seconds, attempt, retry_after)
                log.warning(
                    "feed %s: %s %s failed (%s); retry %d/%d in %.2fs",
                    self.name,
                    symbol,
                    where,
                    last,
                    attempt + 1,
                    self.params.max_retries,
                    delay,
                )
                self._sleep(delay)
        raise self.error(
            f"{where} failed after {self.params.max_retries + 1} attempts; last error: {last}", symbol=symbol
        )

    # ------------------------------------------------------------------ mapping
    def _local_midnight_ns(self, day: dt.date) -> int:
        moment = dt.datetime.combine(day, dt.time(), tzinfo=self.tz)
        return (moment - _EPOCH_UTC) // dt.timedelta(microseconds=1) * 1000

    def bars_from(
        self, symbol: str, results: list[dict], start: dt.date, end: dt.date, url: str
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        fields = {
            "t": pl.Int64,
            "o": pl.Float64,
            "h": pl.Float64,
            "l": pl.Float64,
            "c": pl.Float64,
            "v": pl.Float64,
        }
        raw = pl.DataFrame([{k: r.get(k) for k in fields} for r in results], schema=fields, strict=False)
        df = raw.select(
            pl.from_epoch("t", time_unit="ms")
            .dt.replace_time_zone("UTC")
            .dt.convert_time_zone(self.params.timezone)
            .dt.date()
            .alias("date"),
            pl.col("o").alias("open"),
            pl.col("h").alias("high"),
            pl.col("l").alias("low"),
            pl.col("c").alias("close"),
            pl.col("v").alias("volume"),
        ).filter(pl.col("date").is_null() | pl.col("date").is_between(start, end))
        missing = pl.concat_str(
            [
                pl.when(pl.col(c).is_null() | ~pl.col(c).is_finite()).then(pl.lit(c))
                for c in ("open", "high", "low", "close", "volume")
            ],
            separator=", ",
            ignore_nulls=True,
        )
        reasons = [
            pl.when(pl.col("date").is_null()).then(pl.lit("missing timestamp t")),
            pl.when(missing.str.len_chars() > 0).then(pl.format("missing {}", missing)),
            *ohlc_checks(),
        ]
        df = df.with_columns(join_reasons(reasons).alias("reason"))
        bad = df.filter(pl.col("reason").is_not_null()).select(
            pl.lit(self.name).alias("feed"),
            pl.lit(symbol).alias("symbol"),
            pl.col("date").cast(pl.Utf8),
            pl.lit(urlsplit(url).path).alias("file"),
            pl.lit(None, pl.Int64).alias("line"),
            "reason",
        )
        bars = (
            df.filter(pl.col("reason").is_null())
            .select(
                pl.lit(symbol).alias("symbol"),
                "date",
                "open",
                "high",
                "low",
                "close",
                "volume",
                pl.lit(None if self.params.adjusted else 1.0, pl.Float64).alias("adj_factor"),
            )
            .unique("date", keep="first", maintain_order=True)
            .sort("date")
        )
        return bars, bad

    @staticmethod
    def trades_from(results: list[dict]) -> pl.DataFrame:
        """ts, price, size, side of one page of v3 trades (symbol, date and ids are added per day)."""
        fields = {"sip_timestamp": pl.Int64, "price": pl.Float64, "size": pl.Float64}
        raw = pl.DataFrame([{k: r.get(k) for k in fields} for r in results], schema=fields, strict=False)
        return raw.select(
            pl.col("sip_timestamp").cast(UTC_NS).alias("ts"),
            "price",
            "size",
            pl.lit(None, pl.Int8).alias("side"),
        )

    @staticmethod
    def quotes_from(results: list[dict]) -> pl.DataFrame:
        """ts, bid, ask and sizes of one page of v3 quotes; a zero price means an empty side (null)."""
        fields = {
            "sip_timestamp": pl.Int64,
            "bid_price": pl.Float64,
            "ask_price": pl.Float64,
            "bid_size": pl.Float64,
            "ask_size": pl.Float64,
        }
        raw = pl.DataFrame([{k: r.get(k) for k in fields} for r in results], schema=fields, strict=False)
        no_bid, no_ask = pl.col("bid_price") <= 0, pl.col("ask_price") <= 0
        return raw.select(
            pl.col("sip_timestamp").cast(UTC_NS).alias("ts"),
            pl.when(no_bid).then(None).otherwise(pl.col("bid_price")).alias("bid"),
            pl.when(no_ask).then(None).otherwise(pl.col("ask_price")).alias("ask"),
            pl.when(no_bid).then(None).otherwise(pl.col("bid_size")).alias("bid_size"),
            pl.when(no_ask).then(None).otherwise(pl.col("ask_size")).alias("ask_size"),
        )


def _message(resp: requests.Response) -> str:
    """Polygon's error text from a response (its JSON ``error``/``message``, else the start of the body)."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200] or resp.reason or ""
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:300]
    return str(body)[:300]
