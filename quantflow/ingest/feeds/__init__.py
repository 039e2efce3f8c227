"""Ingest feeds: sources of raw trades, quotes and daily bars (see ``base`` for the shared contract)."""

from quantflow.ingest.feeds.base import FEED_CLASSES, Feed, FeedBatch, FeedError, build_feed, feed_class

__all__ = ["FEED_CLASSES", "Feed", "FeedBatch", "FeedError", "build_feed", "feed_class"]
