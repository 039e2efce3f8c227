"""The yfinance feed against a local HTTP server speaking Yahoo's v8 chart API.

yfinance itself does the HTTP and the parsing (cookie, crumb, time-zone lookup, chart JSON -> DataFrame):
the session handed to it sends every request, whatever the Yahoo host, to a server on 127.0.0.1 that
answers with a recorded-format chart response (``fixtures/yahoo_chart_AAPL.json``, built in Yahoo's real
format from AAPL's 2020-08-24 .. 2020-09-04 prices around the 4:1 split).
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yfinance as yf

from quantflow.ingest.feeds.base import FeedError, build_feed
from quantflow.ingest.feeds.yfinance_feed import YFinanceFeed
from quantflow.metadata.schema import YFinanceFeedConfig

CHART = json.loads((Path(__file__).parent / "fixtures" / "yahoo_chart_AAPL.json").read_text())
DOWN_PAGE = "<html><body>Will be right back...</body></html>"


class LocalYahooSession(requests.Session):
    """A real requests session that sends Yahoo URLs to the local server (same path and query)."""

    def __init__(self, base: str):
        super().__init__()
        self.base = base

    def request(self, method, url, *args, **kwargs):
        parts = urlsplit(url)
        local = self.base + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return super().request(method, local, *args, **kwargs)


def chart_for(req, body=CHART):
    """Yahoo's chart answer: the fixture cut to [period1, period2) like Yahoo does."""
    body = copy.deepcopy(body)
    if "period1" in req.query:
        lo, hi = int(req.query["period1"]), int(req.query["period2"])
        result = body["chart"]["result"][0]
        keep = [i for i, t in enumerate(result["timestamp"]) if lo <= t < hi]
        result["timestamp"] = [result["timestamp"][i] for i in keep]
        quote = result["indicators"]["quote"][0]
        for k in quote:
            quote[k] = [quote[k][i] for i in keep]
        adj = result["indicators"]["adjclose"][0]
        adj["adjclose"] = [adj["adjclose"][i] for i in keep]
    return 200, {}, body


@pytest.fixture(scope="module", autouse=True)
def yfinance_cache_dir(tmp_path_factory):
    """Keep yfinance's persistent caches (time zones, cookies) out of the user's home."""
    yf.set_tz_cache_location(str(tmp_path_factory.mktemp("yfinance-cache")))


@pytest.fixture
def yahoo(local_server):
    from yfinance.data import YfData

    YfData.cache_get.cache_clear()
    local_server.route("/", [(200, {"Set-Cookie": "A3=d=test; Path=/"}, "ok")])
    local_server.route("/v1/test/getcrumb", [(200, {}, "testcrumb")])
    local_server.route("/v8/finance/chart/AAPL", chart_for)
    yield local_server
    YfData.cache_get.cache_clear()


def make_feed(server, sleeps=None, **params):
    params = {"backoff_seconds": 0.01, "max_retries": 3, "requests_per_minute": 1000, **params}
    sleep = sleeps.append if sleeps is not None else (lambda s: None)
    return YFinanceFeed("yahoo", params, ".", session=LocalYahooSession(server.url), sleep=sleep)


def test_history_parsed_by_yfinance_and_adjusted(yahoo):
    feed = make_feed(yahoo)
    [batch] = list(feed.iter_batches(["AAPL"], dt.date(2020, 8, 26), dt.date(2020, 9, 2)))
    bars = batch.tables["bars_daily"]
    assert batch.bad_rows.height == 0
    assert bars["date"].to_list() == [dt.date(2020, 8, d) for d in (26, 27, 28, 31)] + [
        dt.date(2020, 9, 1),
        dt.date(2020, 9, 2),
    ]
    chart_hits = [r for r in yahoo.hits("/v8/finance/chart/AAPL") if "period1" in r.query]
    assert chart_hits and chart_hits[-1].query["interval"] == "1d"
    assert chart_hits[-1].query.get("crumb") == "testcrumb"  # yfinance's crumb machinery ran too
    # close is Yahoo's adjclose; the ratio adjusts open/high/low; no jump at the 4:1 split
    result = CHART["chart"]["result"][0]
    adj = dict(zip(result["timestamp"], result["indicators"]["adjclose"][0]["adjclose"]))
    first = bars.row(0, named=True)
    assert first["close"] == pytest.approx(adj[1598448600])
    assert first["adj_factor"] == pytest.approx(
        adj[1598448600] / result["indicators"]["quote"][0]["close"][2]
    )
    assert (bars["low"] <= bars["open"]).all() and (bars["open"] <= bars["high"]).all()
    assert (bars["low"] <= bars["close"]).all() and (bars["close"] <= bars["high"]).all()
    closes = bars["close"].to_list()
    assert max(abs(b / a - 1) for a, b in itertools.pairwise(closes)) < 0.1


def test_unadjusted_keeps_yahoo_prices(yahoo):
    feed = make_feed(yahoo, auto_adjust=False)
    [batch] = list(feed.iter_batches(["AAPL"], dt.date(2020, 8, 31), dt.date(2020, 8, 31)))
    bar = batch.tables["bars_daily"].row(0, named=True)
    quote = CHART["chart"]["result"][0]["indicators"]["quote"][0]
    assert bar["close"] == pytest.approx(quote["close"][5]) and bar["adj_factor"] == 1.0
    assert bar["volume"] == quote["volume"][5]


def test_server_errors_are_retried_with_backoff(yahoo):
    # Yahoo "down" twice (yfinance itself retries a failed request once), then the chart
    calls = {"n": 0}

    def flaky(req):
        if "period1" in req.query:
            calls["n"] += 1
            if calls["n"] <= 2:
                return 500, {"Content-Type": "text/html"}, DOWN_PAGE
        return chart_for(req)

    yahoo.route("/v8/finance/chart/AAPL", flaky)
    sleeps: list[float] = []
    feed = make_feed(yahoo, sleeps)
    [batch] = list(feed.iter_batches(["AAPL"], dt.date(2020, 8, 24), dt.date(2020, 8, 28)))
    assert batch.tables["bars_daily"].height == 5
    assert feed.calls_made == 2 and sleeps == [pytest.approx(0.01)]


def test_rate_limited_then_ok(yahoo):
    responses = [(429, {}, "Too Many Requests")] * 2
    calls = {"n": 0}

    def limited(req):
        if "period1" in req.query:
            calls["n"] += 1
            if calls["n"] <= len(responses):
                return responses[calls["n"] - 1]
        return chart_for(req)

    yahoo.route("/v8/finance/chart/AAPL", limited)
    sleeps: list[float] = []
    feed = make_feed(yahoo, sleeps)
    [batch] = list(feed.iter_batches(["AAPL"], dt.date(2020, 8, 24), dt.date(2020, 8, 25)))
    assert batch.tables["bars_daily"].height == 2
    assert sleeps and sleeps[0] == pytest.approx(0.01)


def test_gives_up_after_max_retries(yahoo):
    yahoo.route(
        "/v8/finance/chart/AAPL",
        lambda req: (500, {}, DOWN_PAGE) if "period1" in req.query else chart_for(req),
    )
    sleeps: list[float] = []
    feed = make_feed(yahoo, sleeps, max_retries=2)
    with pytest.raises(FeedError) as err:
        list(feed.iter_batches(["AAPL"], dt.date(2020, 8, 24), dt.date(2020, 8, 25)))
    assert "AAPL" in str(err.value) and "3 attempts" in str(err.value) and "'yahoo'" in str(err.value)
    assert sleeps == [pytest.approx(0.01), pytest.approx(0.02)]


def test_null_row_from_yahoo_is_reported_not_stored(yahoo):
    body = copy.deepcopy(CHART)
    body["chart"]["result"][0]["indicators"]["quote"][0]["open"][1] = None  # 2020-08-25
    yahoo.route("/v8/finance/chart/AAPL", lambda req: chart_for(req, body))
    feed = make_feed(yahoo)
    [batch] = list(feed.iter_batches(["AAPL"], dt.date(2020, 8, 24), dt.date(2020, 8, 26)))
    assert batch.tables["bars_daily"]["date"].to_list() == [dt.date(2020, 8, 24), dt.date(2020, 8, 26)]
    [bad] = batch.bad_rows.to_dicts()
    assert bad["symbol"] == "AAPL" and bad["date"] == "2020-08-25" and "open" in bad["reason"]


def test_weekend_only_range_makes_no_request(yahoo):
    feed = make_feed(yahoo)
    [batch] = list(feed.iter_batches(["AAPL"], dt.date(2020, 8, 29), dt.date(2020, 8, 30)))
    assert batch.tables["bars_daily"].height == 0 and feed.calls_made == 0


def test_rate_limiter_paces_calls(yahoo):
    clock = {"t": 0.0}
    sleeps: list[float] = []

    def sleep(s):
        sleeps.append(s)
        clock["t"] += s

    feed = YFinanceFeed(
        "yahoo",
        {"requests_per_minute": 2},
        ".",
        session=LocalYahooSession(yahoo.url),
        sleep=sleep,
        clock=lambda: clock["t"],
    )
    list(feed.iter_batches(["AAPL", "AAPL", "AAPL"], dt.date(2020, 8, 24), dt.date(2020, 8, 24)))
    assert sleeps == [pytest.approx(60.0)]


def test_registry_builds_it():
    cfg = YFinanceFeedConfig(name="yahoo", kind="yfinance")
    feed = build_feed(cfg, Path("."))
    assert isinstance(feed, YFinanceFeed) and feed.kinds == ("bars_daily",)
