"""Cross-validation splits for labels that span time: purged k-fold, walk-forward and combinatorial purged CV.

A row is one labelled event: it starts at ``t0`` (when its features are known) and its label is decided at
``t1`` (the first barrier touch, the end of the horizon). Rows must be ordered by ``t0``. Blocks are cut on
distinct ``t0`` values, so all rows of one bar time (the symbols of one date) fall in the same block.

Purging (López de Prado, AFML ch. 7): a training row is dropped when its label window ``[t0, t1]`` overlaps
the span of *any* test block ``[first t0, last t1]``, not only the first one. Embargo: training rows that start
within ``embargo`` bars after a test block's span also go (their features overlap the test period). Walk-forward
training sets precede their test block, so they are purged but need no embargo.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np


@dataclass(frozen=True)
class Split:
    """One train/test split: row positions (sorted), and which blocks are the test set."""

    train: np.ndarray
    test: np.ndarray
    test_blocks: tuple[int, ...]


def event_times(t0, t1) -> tuple[np.ndarray, np.ndarray]:
    """``t0``/``t1`` as int64 (datetimes become nanoseconds), checked: same length, ordered by ``t0``, no label
    ending before it starts. A null ``t1`` (label not decided) is an error: such rows cannot be purged."""
    a, b = _as_int64(t0, "t0"), _as_int64(t1, "t1")
    if a.shape != b.shape:
        raise ValueError(f"t0 and t1 differ in length: {a.size} and {b.size}")
    if a.size and np.any(np.diff(a) < 0):
        row = int(np.argmax(np.diff(a) < 0)) + 1
        raise ValueError(f"rows must be ordered by t0 (event start); row {row} starts before row {row - 1}")
    bad = np.flatnonzero(b < a)
    if bad.size:
        raise ValueError(f"row {bad[0]}: its label ends (t1) before it starts (t0); {bad.size} such rows")
    return a, b


def _as_int64(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        if np.isnat(arr).any():
            raise ValueError(f"{name} has {int(np.isnat(arr).sum())} missing values (labels not decided yet?)")
        return arr.astype("datetime64[ns]").astype(np.int64)
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(f"{name} has {int(np.isnan(arr).sum())} missing values")
    return arr.astype(np.int64)


def distinct_times(t0: np.ndarray) -> np.ndarray:
    """The distinct values of an ordered ``t0`` (O(n), no sort)."""
    if t0.size == 0:
        return t0
    return t0[np.concatenate(([True], t0[1:] != t0[:-1]))]


def blocks_of_times(t0: np.ndarray, n_blocks: int, times: np.ndarray | None = None) -> list[np.ndarray]:
    """Row positions of ``n_blocks`` contiguous blocks of (nearly) equal numbers of distinct ``t0``."""
    times = distinct_times(t0) if times is None else times
    if n_blocks < 2 or n_blocks > times.size:
        raise ValueError(f"cannot cut {times.size} distinct event times into {n_blocks} blocks (need 2..{times.size})")
    edges = [part[0] for part in np.array_split(times, n_blocks)]
    starts = np.searchsorted(t0, edges, side="left")
    ends = [*starts[1:], t0.size]
    return [np.arange(s, e) for s, e in zip(starts, ends)]


def purged_train(t0: np.ndarray, t1: np.ndarray, test_blocks: Sequence[np.ndarray], embargo: int = 0,
                 candidates: np.ndarray | None = None, times: np.ndarray | None = None,
                 longest: int | None = None) -> np.ndarray:
    """Training rows: ``candidates`` (default: every row outside the test blocks) minus every row whose label
    window overlaps any test block's span, minus the rows starting within ``embargo`` bars after a block.

    Rows are ordered by ``t0``, so each block only touches the rows from ``longest`` (the longest label)
    before its start to its embargo's end: the cost is per block, not per row of the data."""
    if embargo < 0:
        raise ValueError(f"embargo must be >= 0 bars; got {embargo}")
    times = distinct_times(t0) if times is None else times
    longest = int((t1 - t0).max()) if longest is None and t0.size else (longest or 0)
    keep = np.ones(t0.size, dtype=bool)
    for block in test_blocks:
        if block.size == 0:
            continue
        start, end = t0[block[0]], t1[block].max()
        lo = np.searchsorted(t0, start - longest, side="left")  # the earliest row whose label can reach start
        hi = np.searchsorted(t0, end, side="right")  # rows starting after end do not overlap
        keep[lo:hi] &= t1[lo:hi] < start
        if embargo:
            after = np.searchsorted(times, end, side="right")
            if after < times.size:
                keep[hi:np.searchsorted(t0, times[min(after + embargo, times.size) - 1], side="right")] = False
    if candidates is not None:
        mask = np.zeros(t0.size, dtype=bool)
        mask[candidates] = True
        keep &= mask
    return np.flatnonzero(keep)


class PurgedKFold:
    """K contiguous test folds over time; each training set is every other row, purged and embargoed."""

    def __init__(self, n_splits: int = 5, embargo: int = 0):
        if n_splits < 2:
            raise ValueError(f"n_splits must be >= 2; got {n_splits}")
        self.n_splits, self.embargo = n_splits, embargo

    def split(self, t0, t1) -> Iterator[Split]:
        a, b = event_times(t0, t1)
        times, longest = distinct_times(a), int((b - a).max()) if a.size else 0
        for k, block in enumerate(blocks_of_times(a, self.n_splits, times)):
            yield Split(purged_train(a, b, [block], self.embargo, times=times, longest=longest), block, (k,))

    def get_n_splits(self) -> int:
        return self.n_splits


class WalkForward:
    """Test blocks of ``test_size`` bars every ``step`` bars (default ``test_size``) after the first
    ``train_size`` bars; training is the ``train_size`` bars before each block (rolling) or everything before
    it (expanding), purged of labels that end inside the block. The last block may be shorter. Sizes count
    distinct event times (bars), not rows."""

    def __init__(self, train_size: int, test_size: int, step: int | None = None, expanding: bool = False):
        step = test_size if step is None else step
        if min(train_size, test_size, step) < 1:
            raise ValueError(f"train_size, test_size and step must be >= 1; got {train_size}, {test_size}, {step}")
        self.train_size, self.test_size, self.step, self.expanding = train_size, test_size, step, expanding

    def split(self, t0, t1) -> Iterator[Split]:
        a, b = event_times(t0, t1)
        times = distinct_times(a)
        if times.size <= self.train_size:
            raise ValueError(f"walk-forward needs more than train_size={self.train_size} bars; "
                             f"the data has {times.size}")
        for k, first in enumerate(range(self.train_size, times.size, self.step)):
            last = min(first + self.test_size, times.size) - 1
            lo, hi = np.searchsorted(a, [times[first], times[last]], side="left")[0], np.searchsorted(
                a, times[last], side="right")
            test = np.arange(lo, hi)
            train_from = 0 if self.expanding else np.searchsorted(a, times[first - self.train_size], side="left")
            candidates = np.arange(train_from, lo)
            yield Split(purged_train(a, b, [test], 0, candidates, times), test, (k,))


class CombinatorialPurgedCV:
    """López de Prado's CPCV (AFML ch. 12): ``n_groups`` contiguous groups, every choice of ``n_test_groups``
    of them as the test set (C(N, k) splits), training on all the rest (before, between and after the test
    groups), purged and embargoed around each test group. The splits' test predictions assemble into
    k/N * C(N, k) = C(N-1, k-1) complete backtest paths (``paths``)."""

    def __init__(self, n_groups: int = 6, n_test_groups: int = 2, embargo: int = 0):
        if not 1 <= n_test_groups < n_groups:
            raise ValueError(f"need 1 <= n_test_groups < n_groups; got {n_test_groups} of {n_groups}")
        self.n_groups, self.n_test_groups, self.embargo = n_groups, n_test_groups, embargo

    @property
    def n_splits(self) -> int:
        return comb(self.n_groups, self.n_test_groups)

    @property
    def n_paths(self) -> int:
        return self.n_test_groups * self.n_splits // self.n_groups

    def get_n_splits(self) -> int:
        return self.n_splits

    def test_group_sets(self) -> list[tuple[int, ...]]:
        return list(combinations(range(self.n_groups), self.n_test_groups))

    def split(self, t0, t1) -> Iterator[Split]:
        a, b = event_times(t0, t1)
        times, longest = distinct_times(a), int((b - a).max()) if a.size else 0
        groups = blocks_of_times(a, self.n_groups, times)
        for chosen in self.test_group_sets():
            blocks = [groups[g] for g in chosen]
            yield Split(purged_train(a, b, blocks, self.embargo, times=times, longest=longest),
                        np.concatenate(blocks), chosen)

    def paths(self) -> np.ndarray:
        """``paths[p, g]``: the split whose test predictions path ``p`` uses for group ``g``. Each group is
        tested in C(N-1, k-1) splits; path ``p`` takes the ``p``-th of them, in split order."""
        out = np.full((self.n_paths, self.n_groups), -1, dtype=np.int64)
        seen = np.zeros(self.n_groups, dtype=np.int64)
        for s, chosen in enumerate(self.test_group_sets()):
            for g in chosen:
                out[seen[g], g] = s
                seen[g] += 1
        return out

    def assemble_paths(self, t0, split_predictions: Sequence[np.ndarray]) -> np.ndarray:
        """Backtest paths from per-split test predictions (``split_predictions[s]``: one value per row of
        split ``s``'s test set, in row order): an array (n_paths, n_rows), every row predicted once per path."""
        a = _as_int64(t0, "t0")
        groups = blocks_of_times(a, self.n_groups)
        sets = self.test_group_sets()
        if len(split_predictions) != len(sets):
            raise ValueError(f"expected predictions for {len(sets)} splits; got {len(split_predictions)}")
        out = np.full((self.n_paths, a.size), np.nan)
        for p, row in enumerate(self.paths()):
            for g, s in enumerate(row):
                test = np.concatenate([groups[x] for x in sets[s]])
                preds = np.asarray(split_predictions[s])
                if preds.size != test.size:
                    raise ValueError(f"split {s}: {preds.size} predictions for {test.size} test rows")
                out[p, groups[g]] = preds[np.isin(test, groups[g])]
        return out
