"""Write modes and what a write did: shared by the lake, the stage contract and every stage's result
(kept apart from the lake so that naming them imports no data library)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

WriteMode = Literal["skip_if_exists", "overwrite", "append"]
WRITE_MODES: tuple[str, ...] = ("skip_if_exists", "overwrite", "append")

# the Parquet codecs a lake writes (``project.storage.compression``; ``storage/lake.py`` says why snappy first)
LakeCompression = Literal["snappy", "zstd", "lz4", "uncompressed"]
COMPRESSIONS: tuple[str, ...] = get_args(LakeCompression)


@dataclass
class WriteResult:
    table: str
    rows_written: int = 0
    days_written: int = 0
    days_skipped: int = 0
    days_deleted: int = 0
    partitions: list[str] = field(default_factory=list)

    def merge(self, other: WriteResult) -> None:
        self.rows_written += other.rows_written
        self.days_written += other.days_written
        self.days_skipped += other.days_skipped
        self.days_deleted += other.days_deleted
        self.partitions.extend(other.partitions)
