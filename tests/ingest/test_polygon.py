"""The Polygon feed against a real HTTP server on 127.0.0.1 serving recorded-format Polygon responses."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

from quantflow.ingest.feeds.base import FeedError, build_feed
from quantflow.ingest.feeds.polygon import PolygonFeed
from quantflow.metadata.schema import PolygonFeedConfig

FIXTURES = Path(__file__).parent / "fixtures"
KEY_ENV = "QF_TEST_POLYGON_KEY"
KEY = "test-key-123"


def recorded(name: str, base: str) -> dict:
    return json.loads((FIXTURES / name).read_text().replace("{base}", base))


def make_feed(server, sleeps=None, **params) -> PolygonFeed:
    params = {
        "base_url": server.url,
        "api_key_env": KEY_ENV,
        "backoff_seconds": 0.01,
        "requests_per_minute": 1000,
        "max_retries": 3,
        **params,
    }
    return PolygonFeed("poly", params, ".", sleep=sleeps.append if sleeps is not None else (lambda s: None))


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def serve_aggs(server) -> None:
    page1, page2 = (
        recorded("polygon_aggs_AAPL_page1.json", server.url),
        recorded("polygon_aggs_AAPL_page2.json", server.url),
    )
    server.route(
        "/v2/aggs/ticker/AAPL/range/1/day/", lambda req: (200, {}, page2 if "cursor" in req.query else page1)
    )


def test_daily_bars_follow_pagination_with_bearer_key(local_server, api_key):
    serve_aggs(local_server)
    feed = make_feed(local_server)
    [batch] = list(feed.iter_batches(["AAPL"], dt.date(2023, 1, 9), dt.date(2023, 1, 13)))
    bars = batch.tables["bars_daily"]
    assert bars["date"].to_list() == [dt.date(2023, 1, d) for d in range(9, 14)]
    assert bars.row(0, named=True) == {
        "symbol": "AAPL",
        "date": dt.date(2023, 1, 9),
        "open": 130.465,
        "high": 133.41,
        "low": 129.89,
        "close": 130.15,
        "volume": 70790813.0,
        "adj_factor": None,
    }
    first, second = local_server.hits("/v2/aggs")
    assert first.path == "/v2/aggs/ticker/AAPL/range/1/day/2023-01-09/2023-01-13"
    assert first.query == {"adjusted": "true", "sort": "asc", "limit": "50000"}
    assert second.query == {"cursor": "bGltaXQ9MiZzb3J0PWFzYw"}
    for req in (first, second):
        assert req.headers["Authorization"] == f"Bearer {KEY}"
        assert KEY not in json.dumps(req.query)


def test_unadjusted_bars_have_factor_one(local_server, api_key):
    serve_aggs(local_server)
    [batch] = list(
        make_feed(local_server, adjusted=False).iter_batches(
            ["AAPL"], dt.date(2023, 1, 9), dt.date(2023, 1, 13)
        )
    )
    assert local_server.hits("/v2/aggs")[0].query["adjusted"] == "false"
    assert batch.tables["bars_daily"]["adj_factor"].to_list() == [1.0] * 5


def test_429_then_success_respects_retry_after(local_server, api_key):
    page = recorded("polygon_aggs_AAPL_page2.json", local_server.url)
    local_server.route(
        "/v2/aggs/",
        [
            (
                429,
                {"Retry-After": "3"},
                {"status": "ERROR", "error": "You've exceeded the maximum requests per minute"},
            ),
            (200, {}, page),
        ],
    )
    sleeps: list[float] = []
    [batch] = list(
        make_feed(local_server, sleeps).iter_batches(["AAPL"], dt.date(2023, 1, 11), dt.date(2023, 1, 13))
    )
    assert batch.tables["bars_daily"].height == 3
    assert sleeps == [3.0]  # the server's Retry-After, not the 0.01 s backoff
    assert len(local_server.hits("/v2/aggs")) == 2


def test_5xx_retried_with_exponential_backoff(local_server, api_key):
    page = recorded("polygon_aggs_AAPL_page2.json", local_server.url)
    local_server.route(
        "/v2/aggs/", [(500, {}, "Internal Server Error"), (502, {}, "Bad Gateway"), (200, {}, page)]
    )
    sleeps: list[float] = []
    [batch] = list(
        make_feed(local_server, sleeps).iter_batches(["AAPL"], dt.date(2023, 1, 11), dt.date(2023, 1, 13))
    )
    assert batch.tables["bars_daily"].height == 3
    assert sleeps == [pytest.approx(0.01), pytest.approx(0.02)]


def test_gives_up_with_the_last_error(local_server, api_key):
    local_server.route("/v2/aggs/", [(503, {}, "Service Unavailable")])
    feed = make_feed(local_server, max_retries=2)
    with pytest.raises(FeedError, match=r"symbol AAPL.*3 attempts.*HTTP 503"):
        list(feed.iter_batches(["AAPL"], dt.date(2023, 1, 11), dt.date(2023, 1, 13)))


def test_connection_errors_are_retried(api_key):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    feed = PolygonFeed(
        "poly",
        {
            "base_url": f"http://127.0.0.1:{port}",
            "api_key_env": KEY_ENV,
            "backoff_seconds": 0.01,
            "max_retries": 1,
            "timeout_seconds": 2,
        },
        ".",
        sleep=sleeps.append,
    )
    with pytest.raises(FeedError, match="ConnectionError"):
        list(feed.iter_batches(["AAPL"], dt.date(2023, 1, 9), dt.date(2023, 1, 9)))
    assert sleeps == [pytest.approx(0.01)]


def test_missing_api_key_is_a_clear_error_before_any_request(local_server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    serve_aggs(local_server)
    feed = make_feed(local_server)  # constructing does not need the key
    with pytest.raises(FeedError, match=f"environment variable {KEY_ENV} is not set") as err:
        list(feed.iter_batches(["AAPL"], dt.date(2023, 1, 9), dt.date(2023, 1, 13)))
    assert "'poly'" in str(err.value)
    assert local_server.requests == []


def test_auth_error_fails_at_once_with_polygons_message(local_server, api_key):
    local_server.route(
        "/v2/aggs/",
        [
            (
                403,
                {},
                {
                    "status": "NOT_AUTHORIZED",
                    "request_id": "x",
                    "message": "You are not entitled to this data.",
                },
            )
        ],
    )
    sleeps: list[float] = []
    with pytest.raises(FeedError, match="HTTP 403.*not entitled"):
        list(make_feed(local_server, sleeps).iter_batches(["AAPL"], dt.date(2023, 1, 9), dt.date(2023, 1, 9)))
    assert sleeps == [] and len(local_server.requests) == 1


def test_error_status_in_body_fails(local_server, api_key):
    local_server.route("/v2/aggs/", [(200, {}, {"status": "ERROR", "error": "Unknown API Key"})])
    with pytest.raises(FeedError, match="status ERROR.*Unknown API Key"):
        list(make_feed(local_server).iter_batches(["AAPL"], dt.date(2023, 1, 9), dt.date(2023, 1, 9)))


def test_inconsistent_bar_is_reported(local_server, api_key):
    page = recorded("polygon_aggs_AAPL_page2.json", local_server.url)
    page["results"][1]["h"] = 120.0  # high below open and close
    del page["results"][2]["o"]
    local_server.route("/v2/aggs/", [(200, {}, page)])
    [batch] = list(make_feed(local_server).iter_batches(["AAPL"], dt.date(2023, 1, 11), dt.date(2023, 1, 13)))
    assert batch.tables["bars_daily"]["date"].to_list() == [dt.date(2023, 1, 11)]
    bad = batch.bad_rows.sort("date")
    assert bad["date"].to_list() == ["2023-01-12", "2023-01-13"]
    assert "high 120.0 < max(open, close)" in bad["reason"][0] and "missing open" in bad["reason"][1]
    assert bad["line"].null_count() == 2 and bad["feed"].to_list() == ["poly", "poly"]


def test_trades_per_day_window_and_pagination(local_server, api_key):
    page1 = recorded("polygon_trades_AAPL_page1.json", local_server.url)
    page2 = recorded("polygon_trades_AAPL_page2.json", local_server.url)
    empty = {"results": [], "status": "OK", "request_id": "e"}

    def trades(req):
        if "cursor" in req.query:
            return 200, {}, page2
        return 200, {}, page1 if req.query["timestamp.gte"] == "1673240400000000000" else empty

    local_server.route("/v3/trades/AAPL", trades)
    feed = make_feed(local_server, data="trades", page_limit=2)
    assert feed.kinds == ("trades",)
    batches = list(feed.iter_batches(["AAPL"], dt.date(2023, 1, 6), dt.date(2023, 1, 9)))  # Fri .. Mon
    assert len(batches) == 2  # the weekend is not requested
    first_day = [r for r in local_server.hits("/v3/trades") if "cursor" not in r.query]
    assert [r.query["timestamp.gte"] for r in first_day] == ["1672981200000000000", "1673240400000000000"]
    assert first_day[1].query == {
        "timestamp.gte": "1673240400000000000",
        "timestamp.lt": "1673326800000000000",
        "limit": "2",
        "sort": "timestamp",
        "order": "asc",
    }
    assert batches[0].tables["trades"].height == 0
    t = batches[1].tables["trades"]
    assert t["trade_id"].to_list() == [1, 2, 3]
    assert t["price"].to_list() == [130.47, 130.46, 130.5] and t["size"].to_list() == [100.0, 7.0, 300.0]
    assert t["side"].null_count() == 3 and t["date"].unique().to_list() == [dt.date(2023, 1, 9)]
    assert t["ts"][0] == dt.datetime(2023, 1, 9, 14, 30, 0, 1567, tzinfo=dt.UTC)
    assert t.select(pl.col("ts").dt.nanosecond())["ts"][0] == 1567890


def test_quotes_empty_side_is_null(local_server, api_key):
    local_server.route("/v3/quotes/AAPL", [(200, {}, recorded("polygon_quotes_AAPL.json", local_server.url))])
    [batch] = list(
        make_feed(local_server, data="quotes").iter_batches(
            ["AAPL"], dt.date(2023, 1, 9), dt.date(2023, 1, 9)
        )
    )
    q = batch.tables["quotes"]
    assert q["quote_id"].to_list() == [1, 2]
    assert q["bid"].to_list() == [130.45, 130.46] and q["ask"].to_list() == [130.5, None]
    assert q["ask_size"].to_list() == [4.0, None] and q["bid_size"].to_list() == [2.0, 3.0]


def test_rate_limit_spaces_requests(local_server, api_key):
    page = recorded("polygon_aggs_AAPL_page2.json", local_server.url)
    local_server.route("/v2/aggs/", [(200, {}, page)])
    clock = {"t": 0.0}
    sleeps: list[float] = []

    def sleep(s):
        sleeps.append(s)
        clock["t"] += s

    feed = PolygonFeed(
        "poly",
        {"base_url": local_server.url, "api_key_env": KEY_ENV, "requests_per_minute": 5},
        ".",
        sleep=sleep,
        clock=lambda: clock["t"],
    )
    list(feed.iter_batches(["AAPL"] * 6, dt.date(2023, 1, 11), dt.date(2023, 1, 13)))
    assert feed.requests_made == 6 and sleeps == [60.0]


def test_registry_builds_it():
    cfg = PolygonFeedConfig(name="poly", kind="polygon", params={"data": "quotes"})
    feed = build_feed(cfg, Path("."))
    assert isinstance(feed, PolygonFeed) and feed.kinds == ("quotes",)
