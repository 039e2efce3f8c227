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
import json
from collections.abc import Iterable
from typing import Any

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
        self.lake.store.write_bytes_atomic(self._path(scope), json.dumps(record, sort_keys=True).encode())

    def kept(self, scope: str, inputs: str, outputs: dict[str, str]) -> dict[str, Any] | None:
        """The figures of the last run when it read the same inputs (``inputs``) and the lake still holds
        exactly what it wrote (``outputs``, taken now); else None."""
        record = self.load(scope)
        if record is None or record.get("inputs") != inputs or record.get("outputs") != outputs or not outputs:
            return None
        return record.get("figures")
