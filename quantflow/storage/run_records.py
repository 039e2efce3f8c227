"""What a stage's last run of a window read and wrote, so that a ``skip_if_exists`` rerun whose inputs,
configuration and code are as they were, and whose outputs nobody has changed since, keeps them instead of
computing them again (as the transform keeps a window built from the same raw partitions).

A record is one small JSON object per (stage, scope) in the lake's ``_records`` folder, written atomically:
``inputs`` (a key the stage computes from its configuration, its code and the signatures of the partitions it
reads, taken before it reads them), ``outputs`` (the signatures of the partitions it wrote, taken after) and
the stage's figures. Concurrent runs: the last to finish writes the record; a record that no longer matches
the lake only makes the next run compute, it never keeps rows that other inputs made.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from quantflow.storage.artifacts import ArtifactStore
from quantflow.storage.filesystem import RECORDS_DIR
from quantflow.storage.lake import Lake


def partition_signatures(lake: Lake, tables: Iterable[str], symbols: Iterable[str], start=None,
                         end=None) -> dict[str, str]:
    """``table/symbol=/period=`` -> signature (size and mtime, or ETag) of every partition of ``tables`` for
    ``symbols`` overlapping ``start`` .. ``end`` (None: unbounded): any rewrite or removal changes it."""
    symbols = list(symbols)
    out: dict[str, str] = {}
    for table in tables:
        for part in lake.partitions(table, symbols, start, end):
            out[f"{table}/{part.symbol}/{part.period_start.isoformat()}"] = lake.store.signature(part.path)
    return out


def artifact_signatures(artifacts: ArtifactStore, urls: Iterable[str]) -> dict[str, str | None]:
    """url -> signature of each artifact while it is the newest of its kind, else None: the next stage and
    the user read the newest, so an artifact that a later run superseded is not kept as this run's."""
    return {url: artifacts.newest_signature(url) for url in urls}


def code_version(*packages: str, libraries: Iterable[str] = ()) -> str:
    """The source of the packages that compute a stage's values (its own and the core it calls) and the
    versions of the libraries it computes with: a fix or an upgrade must not keep what the old code made."""
    from importlib.metadata import version

    files = [p for pkg in packages for p in sorted(Path(importlib.util.find_spec(pkg).origin).parent.glob("*.py"))]
    return digest([p.read_text() for p in files], {n: version(n) for n in libraries})


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class RunRecords:
    """The records of one stage in ``lake``; ``scope`` names what a record covers (window and symbols)."""

    def __init__(self, lake: Lake, stage: str):
        self.lake, self.stage = lake, stage

    def _path(self, scope: str) -> str:
        return self.lake.store.path(RECORDS_DIR, self.stage, f"{digest(scope)[:32]}.json")

    def load(self, scope: str) -> dict[str, Any] | None:
        path = self._path(scope)
        try:
            record = json.loads(self.lake.store.read_bytes(path))
        except (FileNotFoundError, ValueError):  # none yet, or unreadable: compute
            return None
        return record if isinstance(record, dict) and record.get("scope") == scope else None

    def save(self, scope: str, inputs: str, outputs: dict[str, str], figures: dict[str, Any]) -> None:
        record = {"scope": scope, "inputs": inputs, "outputs": outputs, "figures": figures}
        # not sorted: figures read back in the order the stage made them (dicts compare regardless)
        self.lake.store.write_bytes_atomic(self._path(scope), json.dumps(record).encode())

    def kept(self, scope: str, inputs: str, outputs) -> dict[str, Any] | None:
        """The figures of the last run when it read the same inputs (``inputs``) and the store still holds
        exactly what it wrote: ``outputs`` are their signatures taken now, or a function of the last run's
        figures that takes them (an artifact's URL is among its figures); else None."""
        record = self.load(scope)
        if record is None or record.get("inputs") != inputs:
            return None
        figures = record.get("figures") or {}
        now = outputs(figures) if callable(outputs) else outputs
        if not now or None in now.values() or record.get("outputs") != now:  # None: an artifact superseded
            return None
        return figures

    def restore(self, scope: str, inputs: str, outputs, result: Any, fields: Iterable[str]) -> bool:
        """``kept``, and when so, ``fields`` of ``result`` set to what the last run saved; True when kept."""
        figures = self.kept(scope, inputs, outputs)
        if figures is None:
            return False
        for name in fields:
            setattr(result, name, figures[name])
        return True
