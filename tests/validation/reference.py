"""Plain, obviously-correct implementations to check ``quantflow.validation`` against (and the bench's peer)."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd


def purged_kfold_pandas(t0: pd.Series, t1: pd.Series, n_splits: int, embargo: int = 0):
    """Purged k-fold as a pandas user writes it: folds of distinct times, then row by row, drop the
    training rows whose label window meets any test block's span or starts in the embargo after it."""
    times = np.unique(t0.to_numpy())
    folds = np.array_split(times, n_splits)
    out = []
    for fold in folds:
        test_mask = t0.isin(fold)
        test = np.flatnonzero(test_mask.to_numpy())
        start, end = t0[test_mask].min(), t1[test_mask].max()
        later = times[times > end]
        embargo_end = later[min(embargo, later.size) - 1] if embargo and later.size else None
        train = []
        for i in range(len(t0)):
            if test_mask.iloc[i]:
                continue
            if t0.iloc[i] <= end and t1.iloc[i] >= start:
                continue
            if embargo_end is not None and end < t0.iloc[i] <= embargo_end:
                continue
            train.append(i)
        out.append((np.asarray(train, dtype=np.int64), test))
    return out


def cpcv_first_block_only(t0: np.ndarray, t1: np.ndarray, n_groups: int, n_test_groups: int):
    """The bug found in public CPCV code: training keeps only rows whose labels end before the first test
    group; rows between and after the test groups are lost (an anchored walk-forward in disguise)."""
    groups = np.array_split(np.arange(t0.size), n_groups)
    for chosen in combinations(range(n_groups), n_test_groups):
        test = np.concatenate([groups[g] for g in chosen])
        first = t0[groups[chosen[0]][0]]
        yield np.flatnonzero(t1 < first), test, chosen


def split_problems(t0: np.ndarray, t1: np.ndarray, train: np.ndarray, test_blocks: list[np.ndarray],
                   embargo: int = 0) -> list[str]:
    """What is wrong with a split, judged row by row: a training row that is a test row, overlaps a test
    block's label span or starts in its embargo (leakage); a row that is none of these yet left out of
    training (over-purging, e.g. keeping only rows before the first test block)."""
    times = np.unique(t0)
    test_rows = set(np.concatenate(test_blocks).tolist()) if test_blocks else set()
    spans = []
    for block in test_blocks:
        start, end = t0[block].min(), t1[block].max()
        later = times[times > end]
        spans.append((start, end, later[min(embargo, later.size) - 1] if embargo and later.size else end))
    problems, train_set = [], set(train.tolist())
    for i in range(t0.size):
        excluded = i in test_rows or any(
            (t0[i] <= end and t1[i] >= start) or (end < t0[i] <= emb) for start, end, emb in spans)
        if i in train_set and excluded:
            problems.append(f"row {i} leaks into training")
        if i not in train_set and not excluded:
            problems.append(f"row {i} needlessly dropped from training")
    return problems


def pbo_loops(m: np.ndarray, n_blocks: int) -> float:
    """PBO by CSCV with plain loops: Sharpe ratios, ranks by counting, logit of rank / (N + 1)."""
    t, n = m.shape
    m = m[t % n_blocks:]
    size = m.shape[0] // n_blocks
    below = 0
    combos = list(combinations(range(n_blocks), n_blocks // 2))
    for chosen in combos:
        ins = np.vstack([m[b * size:(b + 1) * size] for b in chosen])
        outs = np.vstack([m[b * size:(b + 1) * size] for b in range(n_blocks) if b not in chosen])
        sr_in = [ins[:, j].mean() / ins[:, j].std(ddof=1) for j in range(n)]
        sr_out = [outs[:, j].mean() / outs[:, j].std(ddof=1) for j in range(n)]
        best = max(range(n), key=lambda j: sr_in[j])
        rank = sum(1 for v in sr_out if v < sr_out[best]) + 0.5 * (sum(1 for v in sr_out if v == sr_out[best]) + 1)
        w = rank / (n + 1)
        if np.log(w / (1 - w)) <= 0:
            below += 1
    return below / len(combos)
