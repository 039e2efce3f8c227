"""Purged splits: combinatorics, no leakage and no needless purging, judged row by row."""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantflow.compute.purged_cv import CombinatorialPurgedCV, PurgedKFold, WalkForward
from tests.validation.reference import cpcv_first_block_only, purged_kfold_pandas, split_problems


def events(n: int, horizon: int = 5, seed: int = 0, per_time: int = 1):
    """``n`` bar times, ``per_time`` symbols each, labels ending 1..horizon bars later (clipped)."""
    rng = np.random.default_rng(seed)
    t = np.repeat(np.arange(n, dtype=np.int64), per_time)
    t1 = np.minimum(t + rng.integers(1, horizon + 1, t.size), n - 1)
    return t, np.maximum(t1, t)


@st.composite
def labelled_events(draw):
    n = draw(st.integers(8, 60))
    steps = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))  # 0: several rows share a time
    t0 = np.cumsum(np.asarray(steps, dtype=np.int64))
    horizons = np.asarray(draw(st.lists(st.integers(0, 12), min_size=n, max_size=n)), dtype=np.int64)
    return t0, t0 + horizons


@settings(max_examples=150, deadline=None)
@given(labelled_events(), st.integers(2, 6), st.integers(1, 3), st.integers(0, 4))
def test_no_training_row_falls_in_a_purged_or_embargoed_window(ev, n_groups, n_test, embargo):
    t0, t1 = ev
    if np.unique(t0).size < n_groups or n_test >= n_groups:
        return
    cv = CombinatorialPurgedCV(n_groups, n_test, embargo)
    splits = list(cv.split(t0, t1))
    assert len(splits) == comb(n_groups, n_test)
    for split in splits:
        blocks = _groups(t0, n_groups, split.test_blocks)
        np.testing.assert_array_equal(np.sort(np.concatenate(blocks)), split.test)
        assert split_problems(t0, t1, split.train, blocks, embargo) == []
    for split in PurgedKFold(min(n_groups, np.unique(t0).size), embargo).split(t0, t1):
        assert split_problems(t0, t1, split.train, [split.test], embargo) == []


def _groups(t0, n_groups, chosen):
    from quantflow.compute.purged_cv import blocks_of_times

    blocks = blocks_of_times(t0, n_groups)
    return [blocks[g] for g in chosen]


def test_cpcv_counts_splits_and_paths_by_the_combinatorics():
    for n, k in [(6, 2), (10, 2), (8, 3), (5, 1), (12, 4)]:
        cv = CombinatorialPurgedCV(n, k)
        assert cv.n_splits == comb(n, k) and cv.n_paths == k * comb(n, k) // n == comb(n - 1, k - 1)
        paths = cv.paths()
        assert paths.shape == (cv.n_paths, n) and (paths >= 0).all()
        sets = cv.test_group_sets()
        for row in paths:
            assert all(g in sets[s] for g, s in enumerate(row))  # each group from a split that tested it
        for g in range(n):  # every split that tests a group is used by exactly one path
            assert sorted(paths[:, g]) == [s for s, chosen in enumerate(sets) if g in chosen]


def test_cpcv_paths_assemble_every_row_once_per_path():
    t0, t1 = events(120)
    cv = CombinatorialPurgedCV(6, 2, embargo=2)
    splits = list(cv.split(t0, t1))
    preds = [t0[s.test] * 100.0 + i for i, s in enumerate(splits)]  # the value says its row and split
    paths = cv.assemble_paths(t0, preds)
    assert paths.shape == (cv.n_paths, 120) and np.isfinite(paths).all()
    np.testing.assert_array_equal(paths // 100, np.broadcast_to(t0, paths.shape))
    groups = np.repeat(np.arange(6), 20)
    np.testing.assert_array_equal(paths % 100, cv.paths()[:, groups])  # group g of path p from its split


def test_cpcv_trains_on_rows_after_the_test_groups_and_catches_the_first_block_bug():
    t0, t1 = events(300, horizon=5)
    cv = CombinatorialPurgedCV(6, 2, embargo=3)
    split = next(s for s in cv.split(t0, t1) if s.test_blocks == (1, 3))
    assert (split.train > split.test.max()).sum() > 80  # groups 4 and 5 train, minus purge and embargo
    assert ((split.train > 100) & (split.train < 150)).sum() > 30  # group 2, between the test groups
    # the buggy variant keeps only rows before the first test group: the row-by-row judge flags it
    groups = np.array_split(np.arange(300), 6)
    buggy = [split_problems(t0, t1, train, [groups[g] for g in chosen], 3)
             for train, _, chosen in cpcv_first_block_only(t0, t1, 6, 2)]
    # wrong in every split but (4, 5), the one whose test groups come last
    assert [bool(p) for p in buggy] == [True] * 14 + [False]
    assert all("needlessly dropped" in p[0] for p in buggy[:14])
    empty = [train for train, _, chosen in cpcv_first_block_only(t0, t1, 6, 2) if chosen[0] == 0]
    assert all(train.size == 0 for train in empty)  # the bug empties every split testing group 0


def test_purged_kfold_equals_a_pandas_loop():
    t0, t1 = events(200, horizon=7, per_time=3, seed=3)
    for embargo in (0, 4):
        ours = list(PurgedKFold(5, embargo).split(t0, t1))
        ref = purged_kfold_pandas(pd.Series(t0), pd.Series(t1), 5, embargo)
        assert len(ours) == len(ref) == 5
        for split, (train, test) in zip(ours, ref):
            np.testing.assert_array_equal(split.test, test)
            np.testing.assert_array_equal(split.train, train)


def test_purged_kfold_accepts_datetimes_and_names_bad_input():
    t0 = np.array(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"], dtype="datetime64[ns]")
    t1 = t0 + np.timedelta64(1, "D")
    assert len(list(PurgedKFold(2).split(t0, t1))) == 2
    with pytest.raises(ValueError, match="ordered by t0"):
        list(PurgedKFold(2).split(t0[::-1], t1[::-1]))
    with pytest.raises(ValueError, match="row 1: its label ends"):
        list(PurgedKFold(2).split(t0, np.array([t1[0], t0[0], t1[2], t1[3]])))
    with pytest.raises(ValueError, match="missing values"):
        list(PurgedKFold(2).split(t0, np.array([t1[0], "NaT", t1[2], t1[3]], dtype="datetime64[ns]")))
    with pytest.raises(ValueError, match="cannot cut 4 distinct event times into 5 blocks"):
        list(PurgedKFold(5).split(t0, t1))


@pytest.mark.parametrize("expanding", [False, True])
def test_walk_forward_trains_only_before_each_block_and_purges_overlaps(expanding):
    t0, t1 = events(100, horizon=5, per_time=2)
    splits = list(WalkForward(train_size=30, test_size=10, step=10, expanding=expanding).split(t0, t1))
    assert len(splits) == 7
    covered = np.concatenate([s.test for s in splits])
    np.testing.assert_array_equal(covered, np.arange(60, 200))  # every row after the first 30 bars, once
    for s in splits:
        first = t0[s.test].min()
        assert t1[s.train].max() < first  # no training label ends inside the test block
        start = t0[s.train].min()
        assert start == (0 if expanding else first - 30)
        # the rows dropped before the block are exactly those whose label reaches it
        before = np.flatnonzero((t0 >= start) & (t0 < first))
        np.testing.assert_array_equal(s.train, before[t1[before] < first])
    last = list(WalkForward(30, 40).split(t0, t1))[-1]
    assert np.unique(t0[last.test]).size == 30  # a shorter last block
