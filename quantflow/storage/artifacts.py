"""Blob artifacts (models, JSON outputs, reports) named ``<prefix><YYYYMMDD_HHMMSS>.<ext>``.

The name sorts by time, so the newest output of a stage is the last one listed under its prefix, and its
URL is what the next stage takes as ``input_url``. Artifacts of one model live in its own folder
(``models/<name>/``: ``project_artifacts(md, folder=...)``), so each model's newest card is easy to find.
"""

from __future__ import annotations

import datetime as dt
import re

from quantflow.storage.filesystem import Store

ARTIFACT_PREFIXES: tuple[str, ...] = (
    "data_extractor_",
    "feature_engine_",
    "ml_engine_",
    "ml_engine_leaderboard_",
    "ml_engine_trials_",
    "nn_engine_",
    "nn_engine_leaderboard_",
    "nn_engine_trials_",
    "validation_",
    "portfolio_optimization_",
    "trading_report_",
    "equity_curve_",
    "orders_",
    "backtest_leaderboard_",
    "plot_",
    "stress_test_",
    "risk_",
)
# a model's fitted artifact and JSON card, by model kind (in ``models/<name>/``)
MODEL_CARD_PREFIX = {"ml": "ml_engine_", "dl": "nn_engine_"}
# the stress-test report of one scenario family: ``stress_test_<family>_<ts>.html``
STRESS_FAMILIES = ("historical", "hypothetical")
# the risk report of one kind: ``risk_<kind>_<ts>.{html,png,csv}``
RISK_KINDS = ("var", "drawdown", "rolling", "contributions", "weights")
ARTIFACT_PREFIXES += tuple(f"stress_test_{f}_" for f in STRESS_FAMILIES) + tuple(f"risk_{k}_" for k in RISK_KINDS)
_EXT_RE = re.compile(r"^[a-z0-9]{1,10}$")
_STAMP = r"\d{8}_\d{6}\."
_NAME_RE = re.compile(r"^(?P<prefix>.+_)\d{8}_\d{6}\.(?P<ext>[a-z0-9]+)$")


class ArtifactStore:
    """Writes artifacts atomically and never overwrites one: a name taken in the same second moves on."""

    def __init__(self, store: Store):
        self.store = store

    def artifact_name(self, prefix: str, ext: str, when: dt.datetime) -> str:
        if prefix not in ARTIFACT_PREFIXES:
            raise ValueError(f"unknown artifact prefix {prefix!r}; expected one of {', '.join(ARTIFACT_PREFIXES)}")
        if not _EXT_RE.match(ext):
            raise ValueError(f"artifact extension must be 1-10 lower-case letters or digits; got {ext!r}")
        return f"{prefix}{when:%Y%m%d_%H%M%S}.{ext}"

    def put(self, prefix: str, ext: str, data: bytes, when: dt.datetime | None = None) -> str:
        """Store ``data``; returns the artifact's URL."""
        when = (when or dt.datetime.now(dt.UTC)).replace(microsecond=0)
        while True:  # create-only, so two runs storing at the same second both keep their artifact
            path = self.store.path(self.artifact_name(prefix, ext, when))
            if self.store.create(path, data):
                return self.store.url(path)
            when += dt.timedelta(seconds=1)

    def list(self, prefix: str = "", ext: str | None = None) -> list[str]:
        """URLs of the artifacts named ``<prefix><timestamp>.<ext>`` (exactly that prefix: ``ml_engine_``
        does not list ``ml_engine_leaderboard_...``), oldest first; no prefix: everything in the folder."""
        if prefix:
            pattern = re.compile(re.escape(prefix) + _STAMP + (re.escape(ext) if ext else "[a-z0-9]+") + "$")
        else:
            pattern = re.compile(r"^[^._].*")
        names = [p for p in self.store.ls(self.store.path()) if pattern.match(p.rsplit("/", 1)[-1])]
        return [self.store.url(p) for p in sorted(names)]

    def latest(self, prefix: str, ext: str | None = None) -> str | None:
        found = self.list(prefix, ext)
        return found[-1] if found else None

    def get(self, url: str) -> bytes:
        return self.store.read_bytes(self._path(url))

    def _path(self, url: str) -> str:
        return url.split("://", 1)[1] if self.store.remote else url

    def newest_signature(self, url: str) -> str | None:
        """The artifact's signature (``Store.signature``) while it is the newest of its kind (prefix and
        extension), else None (gone, or a later one stored)."""
        found = _NAME_RE.match(url.rsplit("/", 1)[-1])
        if found is None or self.latest(found["prefix"], found["ext"]) != url:
            return None
        return self.store.signature(self._path(url))
