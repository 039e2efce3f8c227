"""Daily bars from a folder of per-symbol CSV files (``params.path`` / ``params.filename_pattern``).

Columns are mapped by ``params.columns`` (source name per canonical field) and dates parsed with
``params.date_format`` (strftime-style codes). Files are read with the ``csv`` module so every row keeps
the line it was written on (header = line 1, quoted multi-line fields and blank lines counted), then parsed
and checked column-wise with polars.

Bad rows, each reported in ``bad_rows`` with the date as written, the file, the line and every reason:
wrong number of fields, blank or unparseable date or price/volume fields (and adjusted close / split
coefficient when adjusting), non-positive prices, high < max(open, close), low > min(open, close),
high < low, negative volume, a symbol column naming another symbol, and duplicate dates (the first valid
row of a date is kept, later ones are reported). Policy ``params.bad_rows``: ``drop`` drops and reports
them; ``fail`` raises ``FeedError`` listing them before any batch is yielded (all requested files are
checked first, so nothing is written from a partly bad request). Only bad rows whose date falls in the
requested range, or whose date cannot be read, are reported: a bad row in 2014 is no reason to fail an
ingest of 2017.

Adjustment (``params.adjust == "adjusted_close"``): ``adj_factor = adjusted_close / close``; open, high and
low are multiplied by it and the stored close is the adjusted close itself, so the adjusted series has no
jumps at splits or dividends and keeps low <= open, close <= high. Volume: when a ``split_coefficient``
column is mapped, volume is multiplied by the product of the split coefficients of all later rows of the
file (share counts before a 4:1 split are four times fewer shares than after); dividends do not change
share counts, so without split information the volume is left as written. Adjustment factors are computed
over the whole file before the date filter, so they do not depend on the requested range. With
``adjust: none`` prices and volume are stored as written and ``adj_factor`` is 1.

A requested symbol without a file, or with a file that holds no rows after its header, is a ``FeedError``
naming the path: a silent gap in a daily history would be found much later and far from its cause.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from quantflow.ingest.feeds.bar_checks import join_reasons, ohlc_checks
from quantflow.ingest.feeds.base import Feed, FeedBatch, FeedError, bad_rows_frame
from quantflow.metadata.schema import CsvFeedParams

_PRICES = ("open", "high", "low", "close")
_TIME_CODES = re.compile(r"%[HIMSfpTRcs]")
_MAX_LISTED = 20  # bad rows spelled out in a "fail" error message


class CsvDailyFeed(Feed):
    """``CsvDailyFeed(name, params, project_dir)``: one ``bars_daily`` batch per symbol."""

    kind = "csv"
    params_model = CsvFeedParams

    @property
    def folder(self) -> Path:
        return self.resolve_path(self.params.path)

    def file_for(self, symbol: str) -> Path:
        try:
            return self.folder / self.params.filename_pattern.format(symbol=symbol)
        except (KeyError, IndexError, ValueError) as exc:
            raise self.error(
                f"params.filename_pattern {self.params.filename_pattern!r} must name files with {{symbol}} "
                f"as its only field ({exc!r})"
            ) from exc

    def iter_batches(self, symbols: list[str], start: dt.date, end: dt.date) -> Iterator[FeedBatch]:
        symbols = self.check_range(symbols, start, end)
        if not self.folder.is_dir():
            raise self.error(f"data folder {self.folder} does not exist (params.path {self.params.path!r})")
        if self.params.bad_rows == "fail":
            bad = [self.load_symbol(s, start, end)[1] for s in symbols]
            bad_all = pl.concat(bad) if bad else bad_rows_frame([])
            if bad_all.height:
                raise self._fail(bad_all)
        for symbol in symbols:
            bars, bad = self.load_symbol(symbol, start, end)
            yield self.batch(bad_rows=bad, bars_daily=bars)

    def _fail(self, bad: pl.DataFrame) -> FeedError:
        listed = "\n".join(
            f"  {Path(r['file']).name} line {r['line']} ({r['symbol']}, date {r['date']!r}): {r['reason']}"
            for r in bad.head(_MAX_LISTED).iter_rows(named=True)
        )
        more = f"\n  ... and {bad.height - _MAX_LISTED} more" if bad.height > _MAX_LISTED else ""
        symbols = bad["symbol"].unique().to_list()
        files = bad["file"].unique().to_list()
        return self.error(
            f"{bad.height} bad rows and params.bad_rows is 'fail':\n{listed}{more}",
            symbol=symbols[0] if len(symbols) == 1 else None,
            file=files[0] if len(files) == 1 else None,
        )

    # ------------------------------------------------------------------ one file
    def load_symbol(self, symbol: str, start: dt.date, end: dt.date) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(bars in [start, end], bad rows) of one symbol's file."""
        path = self.file_for(symbol)
        if not path.is_file():
            raise self.error(f"no file for this symbol: expected {path}", symbol=symbol)
        raw, malformed = self._read(path, symbol)
        parsed = self._parse(raw, symbol)
        in_range = pl.col("date").is_between(start, end)

        # duplicate dates: keep the first valid row of each date, report the later ones
        good = parsed.filter(pl.col("reason").is_null()).with_columns(
            pl.col("line").min().over("date").alias("first_line")
        )
        dupes = good.filter(pl.col("line") != pl.col("first_line")).with_columns(
            pl.format("duplicate date, first seen on line {}", pl.col("first_line")).alias("reason")
        )
        good = good.filter(pl.col("line") == pl.col("first_line"))
        bars = (
            self._adjust(good, parsed)
            .filter(in_range)
            .sort("date")
            .with_columns(pl.lit(symbol).alias("symbol"))
        )

        # bad rows dated outside [start, end] are not this request's business; unreadable dates always are
        report = ["date_raw", "line", "reason"]
        bad = pl.concat(
            [
                malformed.filter(
                    pl.col("date_parsed").is_null() | pl.col("date_parsed").is_between(start, end)
                ).select(report),
                parsed.filter(pl.col("reason").is_not_null() & (pl.col("date").is_null() | in_range)).select(
                    report
                ),
                dupes.filter(in_range).select(report),
            ]
        ).sort("line")
        bad = bad.select(
            pl.lit(self.name).alias("feed"),
            pl.lit(symbol).alias("symbol"),
            pl.col("date_raw").alias("date"),
            pl.lit(str(path)).alias("file"),
            pl.col("line").cast(pl.Int64),
            pl.col("reason"),
        )
        return bars, bad

    def _columns(self) -> dict[str, str]:
        """Canonical field -> source column name, for the fields this feed reads."""
        c = self.params.columns
        cols = {
            "date": c.date,
            "open": c.open,
            "high": c.high,
            "low": c.low,
            "close": c.close,
            "volume": c.volume,
        }
        if self.params.adjust == "adjusted_close":
            cols["adjusted_close"] = c.adjusted_close
            if c.split_coefficient:
                cols["split_coefficient"] = c.split_coefficient
        if c.symbol:
            cols["symbol"] = c.symbol
        return cols

    def _read(self, path: Path, symbol: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Raw text of the mapped columns with each row's first line number, and rows of the wrong width."""
        wanted = self._columns()
        values: dict[str, list[str]] = {k: [] for k in wanted}
        lines: list[int] = []
        malformed: list[dict] = []
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                try:
                    header = [h.strip() for h in next(reader)]
                except StopIteration:
                    raise self.error(
                        "file is empty: expected a header row", symbol=symbol, file=path
                    ) from None
                missing = [f"{src!r} (for {canon})" for canon, src in wanted.items() if src not in header]
                if missing:
                    raise self.error(
                        f"missing columns {', '.join(missing)}; the header has {header}",
                        symbol=symbol,
                        file=path,
                        line=1,
                    )
                index = {canon: header.index(src) for canon, src in wanted.items()}
                width, date_at = len(header), index["date"]
                previous = reader.line_num
                for row in reader:
                    line, previous = previous + 1, reader.line_num
                    if not any(field.strip() for field in row):
                        continue  # blank line: not a row
                    if len(row) != width:
                        malformed.append(
                            {
                                "date_raw": row[date_at] if len(row) > date_at else None,
                                "line": line,
                                "reason": f"expected {width} fields, found {len(row)}",
                            }
                        )
                        continue
                    for canon, i in index.items():
                        values[canon].append(row[i])
                    lines.append(line)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise self.error(
                f"cannot read the file: {exc}", symbol=symbol, file=path, line=getattr(exc, "line_num", None)
            ) from exc
        if not lines and not malformed:
            # a file with nothing after its header is as much a gap as a missing file (see the module docstring)
            raise self.error("the file has a header but no data rows", symbol=symbol, file=path, line=1)
        raw = pl.DataFrame(
            {**values, "line": lines}, schema={**{k: pl.Utf8 for k in values}, "line": pl.Int64}
        )
        bad = pl.DataFrame(malformed, schema={"date_raw": pl.Utf8, "line": pl.Int64, "reason": pl.Utf8})
        bad = bad.with_columns(self._parse_date(pl.col("date_raw").str.strip_chars()).alias("date_parsed"))
        return raw, bad

    def _parse_date(self, text: pl.Expr) -> pl.Expr:
        fmt = self.params.date_format
        if _TIME_CODES.search(fmt):
            return text.str.strptime(pl.Datetime("us"), fmt, strict=False).dt.date()
        return text.str.strptime(pl.Date, fmt, strict=False)

    def _parse(self, raw: pl.DataFrame, symbol: str) -> pl.DataFrame:
        """Typed columns plus ``reason`` (null for a valid row); ``date_raw`` keeps the date as written."""
        numeric = [c for c in raw.columns if c not in ("date", "symbol", "line")]
        text = {c: pl.col(c).str.strip_chars() for c in raw.columns if c != "line"}
        typed = [text["date"].alias("date_raw"), self._parse_date(text["date"]).alias("date")]
        typed += [text[c].cast(pl.Float64, strict=False).alias(c) for c in numeric]
        if "symbol" in text:
            typed.append(text["symbol"].alias("symbol_raw"))
        df = raw.select(pl.col("line"), *typed, *[text[c].alias(f"{c}__text") for c in numeric])

        blank = pl.concat_str(
            [pl.when(pl.col("date_raw") == "").then(pl.lit("date"))]
            + [pl.when(pl.col(f"{c}__text") == "").then(pl.lit(c)) for c in numeric],
            separator=", ",
            ignore_nulls=True,
        )
        reasons = [
            pl.when(blank.str.len_chars() > 0).then(pl.format("blank {}", blank)),
            pl.when((pl.col("date_raw") != "") & pl.col("date").is_null()).then(
                pl.format(
                    "unparseable date {} (date_format {})",
                    pl.col("date_raw"),
                    pl.lit(self.params.date_format),
                )
            ),
        ]
        for c in numeric:
            unreadable = (pl.col(f"{c}__text") != "") & (pl.col(c).is_null() | ~pl.col(c).is_finite())
            reasons.append(pl.when(unreadable).then(pl.format(f"unparseable {c} {{}}", pl.col(f"{c}__text"))))
        reasons += ohlc_checks()
        if "adjusted_close" in numeric:
            reasons.append(
                pl.when(pl.col("adjusted_close") <= 0).then(
                    pl.format("non-positive adjusted_close {}", pl.col("adjusted_close"))
                )
            )
        if "split_coefficient" in numeric:
            reasons.append(
                pl.when(pl.col("split_coefficient") <= 0).then(
                    pl.format("non-positive split_coefficient {}", pl.col("split_coefficient"))
                )
            )
        if "symbol" in text:
            reasons.append(
                pl.when(pl.col("symbol_raw").str.to_uppercase() != symbol.upper()).then(
                    pl.format("symbol column says {}", pl.col("symbol_raw"))
                )
            )
        return df.with_columns(join_reasons(reasons).alias("reason")).drop([f"{c}__text" for c in numeric])

    def _adjust(self, good: pl.DataFrame, parsed: pl.DataFrame) -> pl.DataFrame:
        if self.params.adjust != "adjusted_close":
            return good.select("date", *_PRICES, "volume", pl.lit(1.0).alias("adj_factor"))
        factor = pl.col("adjusted_close") / pl.col("close")
        out = good.with_columns(
            (pl.col("open") * factor).alias("open"),
            (pl.col("high") * factor).alias("high"),
            (pl.col("low") * factor).alias("low"),
            pl.col("adjusted_close").alias("close"),
            factor.alias("adj_factor"),
        ).with_columns(
            # the stored close is the source's adjusted close, not close * factor: where high == close the
            # two can differ in the last bit, so keep the bar consistent explicitly
            pl.max_horizontal("high", "open", "close").alias("high"),
            pl.min_horizontal("low", "open", "close").alias("low"),
        )
        if "split_coefficient" in parsed.columns:
            # splits from every row whose date and coefficient are readable, even if the row is otherwise
            # bad: dropping a row must not drop the split it records
            splits = (
                parsed.filter(
                    pl.col("date").is_not_null()
                    & (pl.col("split_coefficient") > 0)
                    & pl.col("split_coefficient").is_finite()
                )
                .sort("date", "line")
                .unique("date", keep="first", maintain_order=True)
                .select("date", pl.col("split_coefficient").alias("split"))
                .with_columns(
                    (pl.col("split").reverse().cum_prod().reverse() / pl.col("split")).alias("later_splits")
                )
            )
            out = out.join(splits.select("date", "later_splits"), on="date", how="left").with_columns(
                (pl.col("volume") * pl.col("later_splits").fill_null(1.0)).alias("volume")
            )
        return out.select("date", *_PRICES, "volume", "adj_factor")
