"""LOBSTER message + order-book file pairs -> trades and top-of-book quotes, one batch per symbol-day.

Files: ``<SYMBOL>_<YYYY-MM-DD>_<start>_<end>_message_<L>.csv`` and the matching ``..._orderbook_<L>.csv``
in ``params.path``, with ``L == params.level``; the name gives the symbol and the trading date. Requested
weekdays without a file are skipped (LOBSTER only has files for active days); a message file without its
order-book twin, or with a different number of rows, is a ``FeedError``. ``params.has_header``: None
detects a header row (a first line that does not start with a number), as added by some redistributions.

Mapping (see ``LOBSTER_SampleFiles_ReadMe.txt``):

- Timestamps: ``Time`` is seconds after midnight in ``params.timezone`` on the file's date (up to
  nanosecond decimals) -> UTC nanoseconds, DST-aware.
- Trades: execution messages, type 4 (visible) and 5 (hidden). ``price = Price / 10000`` (rounded to the
  4 decimals LOBSTER has, so 2238200 is exactly the float 223.82). ``Direction`` is
  the side of the *resting* order that was hit, so the aggressor side is ``-Direction`` (executing a sell
  limit order, -1, is a buyer-initiated trade, +1).
- Quotes: the level-1 columns of the order-book file (best ask, ask volume, best bid, bid volume; prices
  / 10000), the book *after* each message, stamped with that message's time. Rows where the top of book
  did not change from the previous row are dropped (a deeper-level or hidden event, a halt), which keeps
  the table to real quote changes without losing any state. LOBSTER's dummy prices for an empty side
  (9999999999 ask, -9999999999 bid) become null price and size. Only level 1 is kept: the raw quotes
  schema has one level.
- Ids: ``trade_id`` and ``quote_id`` are both the 1-based message number in the file, so the two tables
  share one sequence: the book prevailing before the execution in message ``i`` is the last quote with
  ``quote_id < i`` (the state engine's ``tie_break="sequence"``).
- Type 7 (trading halt / quoting / resume) messages are skipped; their order-book rows duplicate the
  previous state and drop out with the unchanged rows.
- Order messages (``params.order_messages``, default on): every message, halts included, as
  ``raw_<feed>_messages`` (``seq``, ``message_id`` = message number, ``type``, ``order_id``, ``size``,
  ``price`` / 10000, ``direction``) for the state engine's book reconstruction (``lob.source:
  messages``). A level-N message file holds only the messages inside the top N levels, so the messages
  alone cannot say which level slides into view when one inside empties, nor what the book held before
  the first message. After each message the feed therefore compares the book the messages rebuild with
  the published one (all N levels of the order-book file) and writes the differences as level-set
  messages (type 9, after the message whose book they restore, no ``order_id``; see
  ``quantflow.compute.order_book.level_sets``): messages plus level sets rebuild the order-book file's
  levels exactly, at every message.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import polars as pl

from quantflow.compute.order_book import LEVEL_SET, level_sets
from quantflow.ingest.feeds.base import Feed, FeedBatch
from quantflow.metadata.schema import LobsterFeedParams
from quantflow.storage.schemas import UTC_NS

log = logging.getLogger(__name__)

MESSAGE_COLUMNS = ("time", "type", "order_id", "size", "price", "direction")
BOOK_COLUMNS = ("ask", "ask_size", "bid", "bid_size")
PRICE_SCALE = 10_000.0
EMPTY_ASK = 9_999_999_999
EMPTY_BID = -9_999_999_999
EXECUTION_TYPES = (4, 5)
HALT_TYPE = 7
_NAME = re.compile(
    r"^(?P<symbol>.+)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<start>\d+)_(?P<end>\d+)_message_(?P<level>\d+)\.csv$"
)


def book_columns(level: int) -> tuple[str, ...]:
    """Names of a level-N order-book file's columns: level 1 as ``BOOK_COLUMNS``, then ``ask_2`` ..."""
    return BOOK_COLUMNS + tuple(f"{c}_{k}" for k in range(2, level + 1) for c in BOOK_COLUMNS)


class LobsterFeed(Feed):
    """``LobsterFeed(name, params, project_dir)``: trades and quotes per (symbol, file date)."""

    kind = "lobster"
    params_model = LobsterFeedParams

    def __init__(self, name: str, params: LobsterFeedParams | dict | None, project_dir):
        super().__init__(name, params, project_dir)
        try:
            ZoneInfo(self.params.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise self.error(f"unknown timezone {self.params.timezone!r}") from exc

    @property
    def folder(self) -> Path:
        return self.resolve_path(self.params.path)

    def message_files(self, symbol: str, start: dt.date, end: dt.date) -> list[tuple[dt.date, Path]]:
        """(date, message file) of ``symbol`` at ``params.level`` within [start, end], by date."""
        found: dict[dt.date, list[Path]] = {}
        for path in self.folder.glob(f"{symbol}_*_message_{self.params.level}.csv"):
            m = _NAME.match(path.name)
            if not m or m["symbol"] != symbol:
                continue
            try:
                day = dt.date.fromisoformat(m["date"])
            except ValueError:
                raise self.error(
                    f"file name has an invalid date {m['date']!r}", symbol=symbol, file=path
                ) from None
            if start <= day <= end:
                found.setdefault(day, []).append(path)
        for day, paths in found.items():
            if len(paths) > 1:
                names = ", ".join(sorted(p.name for p in paths))
                raise self.error(f"several message files for {day}: {names}; keep one per day", symbol=symbol)
        return sorted((day, paths[0]) for day, paths in found.items())

    def expected_batches(self, symbols: list[str], start: dt.date, end: dt.date) -> int | None:
        if not self.folder.is_dir():
            return None
        return sum(len(self.message_files(s, start, end)) for s in symbols)

    def iter_batches(self, symbols: list[str], start: dt.date, end: dt.date) -> Iterator[FeedBatch]:
        symbols = self.check_range(symbols, start, end)
        if not self.folder.is_dir():
            raise self.error(f"data folder {self.folder} does not exist (params.path {self.params.path!r})")
        for symbol in symbols:
            files = self.message_files(symbol, start, end)
            if not files:
                log.warning(
                    "feed %s: no LOBSTER level-%d files for %s between %s and %s in %s",
                    self.name,
                    self.params.level,
                    symbol,
                    start,
                    end,
                    self.folder,
                )
            for day, message_path in files:
                tables = self.read_day(symbol, day, message_path)
                yield self.batch(**{k: v for k, v in tables.items() if k in self.kinds})

    # ------------------------------------------------------------------ one day
    def read_day(self, symbol: str, day: dt.date, message_path: Path) -> dict[str, pl.DataFrame]:
        """``{"trades", "quotes", "messages"}`` frames of one message file and its order-book twin."""
        book_path = message_path.with_name(message_path.name.replace("_message_", "_orderbook_"))
        if not book_path.is_file():
            raise self.error(
                f"order-book file {book_path.name} is missing for this message file",
                symbol=symbol,
                file=message_path,
            )
        messages = self._read_numeric(message_path, symbol, MESSAGE_COLUMNS, {"time": pl.Float64})
        book = self._read_numeric(book_path, symbol, book_columns(self.params.level), {})
        if messages.height != book.height:
            raise self.error(
                f"{messages.height} messages but {book.height} order-book rows in {book_path.name}; "
                "the files must have one row per message",
                symbol=symbol,
                file=message_path,
            )

        local_midnight = pl.lit(dt.datetime.combine(day, dt.time()), pl.Datetime("ns"))
        ts = (
            (local_midnight + pl.duration(nanoseconds=(pl.col("time") * 1e9).round(0).cast(pl.Int64)))
            .dt.replace_time_zone(self.params.timezone, ambiguous="earliest", non_existent="null")
            .dt.convert_time_zone("UTC")
            .cast(UTC_NS)
        )
        frame = pl.concat([messages, book], how="horizontal").with_columns(
            ts.alias("ts"),
            pl.int_range(1, messages.height + 1, dtype=pl.Int64).alias("seq"),
            pl.lit(symbol).alias("symbol"),
            pl.lit(day).alias("date"),
        )
        bad_time = frame.filter(pl.col("ts").is_null())
        if bad_time.height:
            raise self.error(
                f"message {bad_time['seq'][0]}: time {bad_time['time'][0]} s after midnight does "
                f"not exist in {self.params.timezone} on {day}",
                symbol=symbol,
                file=message_path,
            )
        halts = frame.filter(pl.col("type") == HALT_TYPE).height
        if halts:
            log.info("feed %s: %s %s: %d trading-halt messages skipped", self.name, symbol, day, halts)

        trades = frame.filter(pl.col("type").is_in(EXECUTION_TYPES)).select(
            "symbol",
            "date",
            "ts",
            pl.col("seq").alias("trade_id"),
            (pl.col("price") / PRICE_SCALE).round(4).alias("price"),
            pl.col("size").cast(pl.Float64),
            (-pl.col("direction")).cast(pl.Int8).alias("side"),
        )
        empty_ask, empty_bid = pl.col("ask") >= EMPTY_ASK, pl.col("bid") <= EMPTY_BID
        quotes = frame.select(
            "symbol",
            "date",
            "ts",
            pl.col("seq").alias("quote_id"),
            pl.when(empty_bid).then(None).otherwise((pl.col("bid") / PRICE_SCALE).round(4)).alias("bid"),
            pl.when(empty_ask).then(None).otherwise((pl.col("ask") / PRICE_SCALE).round(4)).alias("ask"),
            pl.when(empty_bid).then(None).otherwise(pl.col("bid_size")).cast(pl.Float64).alias("bid_size"),
            pl.when(empty_ask).then(None).otherwise(pl.col("ask_size")).cast(pl.Float64).alias("ask_size"),
        )
        top = ["bid", "ask", "bid_size", "ask_size"]
        changed = pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in top])
        quotes = quotes.filter(changed | (pl.col("quote_id") == 1))
        out = {"trades": trades, "quotes": quotes}
        if self.params.order_messages:
            out["messages"] = self._messages(frame)
        return out

    def _messages(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Every message, then the level sets that make them rebuild the published book (module docstring)."""
        level = self.params.level

        def published(name: str, empty: Callable[[str], pl.Expr]) -> np.ndarray:
            """Level 1..N of one book column, NaN where LOBSTER writes its empty-side dummy price."""
            cols = [name if k == 1 else f"{name}_{k}" for k in range(1, level + 1)]
            return np.stack([frame.select(pl.when(empty(c)).then(None).otherwise(pl.col(c)).cast(pl.Float64)
                                          .fill_null(np.nan)).to_series().to_numpy() for c in cols], axis=1)

        def empty_bid(c: str) -> pl.Expr:
            return pl.col(c.replace("_size", "")) <= EMPTY_BID

        def empty_ask(c: str) -> pl.Expr:
            return pl.col(c.replace("_size", "")) >= EMPTY_ASK

        idx, side, px, sz = level_sets(
            np.ascontiguousarray(frame["type"].to_numpy(), np.int8),
            np.ascontiguousarray(frame["size"].to_numpy(), np.float64),
            np.ascontiguousarray(frame["price"].to_numpy(), np.float64),  # raw integer prices: exact
            np.ascontiguousarray(frame["direction"].to_numpy(), np.int8),
            np.array([0, frame.height], np.int64),
            published("bid", empty_bid),
            published("bid_size", empty_bid),
            published("ask", empty_ask),
            published("ask_size", empty_ask),
        )
        messages = frame.select(
            "symbol", "date", "ts",
            pl.col("seq").alias("message_id"),
            pl.col("type").cast(pl.Int8),
            pl.col("order_id"),
            pl.col("size").cast(pl.Float64),
            pl.col("price").cast(pl.Float64),
            pl.col("direction").cast(pl.Int8),
            pl.lit(0, pl.Int32).alias("_set"),
        )
        sets = pl.DataFrame({
            "_row": idx,
            "type": np.full(idx.shape[0], LEVEL_SET, np.int8),
            "size": sz,
            "price": px,
            "direction": side,
            "_set": np.arange(1, idx.shape[0] + 1, dtype=np.int32),
        }).join(frame.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"), "symbol", "date", "ts",
                             pl.col("seq").alias("message_id")), on="_row", how="left")
        sets = sets.select(*(pl.col(c) if c != "order_id" else pl.lit(None, pl.Int64).alias(c)
                             for c in messages.columns))
        # a message, then the level sets after it, in the order they were found
        stream = pl.concat([messages, sets], how="vertical_relaxed").sort("message_id", "_set")
        return stream.with_columns(
            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("seq"),
            pl.when(pl.col("type") == HALT_TYPE).then(pl.col("price")).otherwise(
                (pl.col("price") / PRICE_SCALE).round(4)).alias("price"),
        ).drop("_set")

    def _has_header(self, path: Path) -> bool:
        if self.params.has_header is not None:
            return self.params.has_header
        with open(path, encoding="utf-8-sig") as fh:
            first = fh.readline().split(",")[0].strip()
        try:
            float(first)
        except ValueError:
            return True
        return False

    def _read_numeric(
        self, path: Path, symbol: str, names: tuple[str, ...], floats: dict[str, pl.DataType]
    ) -> pl.DataFrame:
        """The first ``len(names)`` columns of a header-less-or-not numeric CSV, typed, with clear errors."""
        header = self._has_header(path)
        try:
            raw = pl.read_csv(path, has_header=header, infer_schema=False, truncate_ragged_lines=False)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise self.error(f"cannot read the file: {exc}", symbol=symbol, file=path) from exc
        if raw.width < len(names):
            raise self.error(
                f"expected at least {len(names)} columns ({', '.join(names)}), found {raw.width}",
                symbol=symbol,
                file=path,
            )
        raw = raw.select(raw.columns[: len(names)]).rename(dict(zip(raw.columns, names)))
        typed = raw.with_columns(
            pl.col(c).str.strip_chars().cast(floats.get(c, pl.Int64), strict=False) for c in names
        )
        broken = typed.with_row_index("row").filter(pl.any_horizontal(pl.col(c).is_null() for c in names))
        if broken.height:
            row = int(broken["row"][0])
            line = row + 1 + int(header)
            text = ",".join(str(v) for v in raw.row(row))
            raise self.error(
                f"{broken.height} rows with missing or non-numeric fields, first: {text!r}",
                symbol=symbol,
                file=path,
                line=line,
            )
        return typed
