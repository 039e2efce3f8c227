"""The models stage as users run it, and purged-split generation against pandas.

Cases (same data, same run):

- purged splits: ``PurgedKFold(5, embargo 5)`` and ``CombinatorialPurgedCV(6, 2, embargo 5)`` over 40
  symbols x 5,000 daily events with 5-day labels, against two pandas implementations of the same splits:
  the book's (AFML snippet 7.1 ``getTrainTimes``: per test event, drop the training events that start,
  end or span inside it) on a slice, per event; and a vectorized one (one boolean mask per test block).
  Both give the same training sets as ours (checked). Target: 10x the straightforward (book) one.
- training-set assembly: ``models.runner.load_training_set`` (read ``ft_features`` and ``cdm_labels``
  from the lake, join point in time, drop rows with missing features) against a pandas script doing the
  same (read both tables, ``merge_asof`` per symbol on the known-at times, ``dropna``); wall and peak RSS.
- RandomForest walk-forward: ``models.runner.run`` of a RandomForest (100 trees, depth 6, n_jobs=-1) on 20
  features, 1,000-bar rolling training, refit every 250 bars; wall and peak RSS.
- DL: one epoch of an MLP and of an LSTM (window 10) over the training set on the CPU (and on a GPU when
  one is lent to the session: run ``--dl-only`` there).

Data: ``../shared/data/daily_us_equities`` (40 stocks, 5,402 days) when present, else a random walk.

    python benchmarks/bench_models.py [--symbols 40] [--bars 5000] [--afml-bars 400] [--dl-only]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_feature_engine import daily_bars  # noqa: E402
from bench_state_engine import best_of  # noqa: E402

from quantflow.compute.purged_cv import CombinatorialPurgedCV, PurgedKFold  # noqa: E402

FEATURES = """\
      - {name: ret, kind: returns, params: {horizons: [1, 5, 20, 60], log: true}}
      - {name: vol, kind: volatility, params: {window: 20}}
      - {name: vol60, kind: volatility, params: {window: 60}}
      - {name: rsi14, kind: talib, params: {function: RSI, timeperiod: 14}}
      - {name: macd, kind: talib, params: {function: MACD}, outputs: [macd, macd_signal, macd_hist]}
      - {name: bb, kind: talib, params: {function: BBANDS, timeperiod: 20}, outputs: [bb_upper, bb_middle, bb_lower]}
      - {name: atr14, kind: talib, params: {function: ATR, timeperiod: 14}}
      - {name: adx14, kind: talib, params: {function: ADX, timeperiod: 14}}
      - {name: rsi14_z, kind: zscore, params: {column: rsi14, window: 20}}
      - {name: cal, kind: calendar, params: {fields: [day_of_week, month]}}
      - {name: ret5_rank, kind: cs_rank, params: {column: ret_5}}
"""
MODELS = """\
  models:
    - name: rf
      kind: ml
      label_set: fwd5
      estimator: RandomForest
      params: {n_estimators: 100, max_depth: 6, n_jobs: -1, random_state: 0}
      walk_forward: {train: 1000, test: 250}
    - name: mlp
      kind: dl
      label_set: fwd5
      network: mlp
      params: {hidden: 64, layers: 2, epochs: 1, batch_size: 512, validation_share: 0.0}
    - name: lstm
      kind: dl
      label_set: fwd5
      network: lstm
      params: {hidden: 32, window: 10, epochs: 1, batch_size: 512, validation_share: 0.0}
"""


# ---------------------------------------------------------------- splits
def afml_train_times(t1: pd.Series, test_times: pd.Series) -> pd.Series:
    """AFML snippet 7.1: given test events (start -> end), the training events that do not overlap them."""
    trn = t1.copy(deep=True)
    for i, j in test_times.items():
        df0 = trn[(i <= trn.index) & (trn.index <= j)].index  # train starts within test
        df1 = trn[(i <= trn) & (trn <= j)].index  # train ends within test
        df2 = trn[(trn.index <= i) & (j <= trn)].index  # train envelops test
        trn = trn.drop(df0.union(df1).union(df2))
    return trn


def events(symbols: int, bars: int, horizon: int = 5) -> tuple[np.ndarray, np.ndarray]:
    t = np.repeat(np.arange(bars, dtype=np.int64), symbols)
    return t, np.minimum(t + horizon, bars - 1)


def bench_splits(symbols: int, bars: int, afml_bars: int, repeat: int) -> list[dict]:
    rows = []
    t0, t1 = events(symbols, bars)
    for name, cv in (("purged k-fold 5", PurgedKFold(5, 5)), ("CPCV 6/2", CombinatorialPurgedCV(6, 2, 5))):
        ours = best_of(lambda cv=cv: [s.train for s in cv.split(t0, t1)], repeat)

        def vectorized(cv=cv):
            s0, s1 = pd.Series(t0), pd.Series(t1)
            times = np.unique(t0)
            n = cv.n_splits if isinstance(cv, PurgedKFold) else cv.n_groups
            groups = [pd.Index(g) for g in np.array_split(times, n)]
            sets = [(k,) for k in range(n)] if isinstance(cv, PurgedKFold) else cv.test_group_sets()
            out = []
            for chosen in sets:
                keep = pd.Series(True, index=s0.index)
                for g in chosen:
                    start, end = groups[g][0], s1[s0.isin(groups[g])].max()
                    later = times[times > end]
                    emb = later[min(5, later.size) - 1] if later.size else end
                    keep &= ~(s0.isin(groups[g]) | ((s0 <= end) & (s1 >= start)) | ((s0 > end) & (s0 <= emb)))
                out.append(np.flatnonzero(keep.to_numpy()))
            return out

        check = vectorized()
        assert all(np.array_equal(a, s.train) for a, s in zip(check, cv.split(t0, t1))), "pandas splits differ"
        pandas_s = best_of(vectorized, repeat)
        rows.append({"case": f"{name}: {t0.size:,} events (s)", "quantflow": ours, "peer": pandas_s,
                     "peer_name": "pandas, vectorized", "ratio": pandas_s / ours, "target": None})
    # the book's loop, per test event, on a slice (it is quadratic): both sides per event
    a0, a1 = events(symbols, afml_bars)
    key = a0 * 10_000 + np.tile(np.arange(symbols), afml_bars)  # unique event ids, ordered like the times
    t1s = pd.Series(a1 * 10_000 + symbols, index=pd.Index(key))  # ends after every symbol of that bar
    folds = [np.flatnonzero(np.isin(a0, g)) for g in np.array_split(np.unique(a0), 5)]

    def book():
        return [afml_train_times(t1s, t1s.iloc[f]) for f in folds]

    kept = [np.flatnonzero(t1s.index.isin(trn.index)) for trn in book()]
    assert all(np.array_equal(k, s.train) for k, s in zip(kept, PurgedKFold(5).split(a0, a1))), "book differs"
    ours_small = best_of(lambda: [s.train for s in PurgedKFold(5).split(a0, a1)], repeat)
    book_s = best_of(book, 1)
    rows.append({"case": f"purged k-fold 5: {a0.size:,} events (s)", "quantflow": ours_small,
                 "peer": book_s, "peer_name": "AFML 7.1 getTrainTimes per test event (pandas)",
                 "ratio": book_s / ours_small, "target": 10.0})
    return rows


# ---------------------------------------------------------------- stage (run in a child: peak RSS per case)
def make_project(root: Path, symbols: int, bars: int):
    import polars as pl

    from quantflow.metadata import get_metadata_manager
    from quantflow.storage.project import project_lake
    from quantflow.storage.schemas import spec_for_kind

    df = daily_bars(symbols, bars)
    names = df["symbol"].unique(maintain_order=True).to_list()
    text = (f"project:\n  name: bench\n  symbols: [{', '.join(names)}]\n  label_engine:\n    labels:\n"
            "      - {name: fwd5, method: fixed_horizon, horizon: 5}\n  feature_engine:\n    features:\n"
            + FEATURES + MODELS)
    (root / "project_metadata").mkdir(parents=True, exist_ok=True)
    (root / "project_metadata" / "project.yaml").write_text(text)
    md = get_metadata_manager(root).load_all()
    project_lake(md).write(spec_for_kind("cdm_bars_daily", "bars_daily"), df.with_columns(
        pl.lit(1.0).alias("adj_factor")), "overwrite")
    return md, df["date"].min(), df["date"].max()


def child(case: str, root: Path) -> dict:
    import datetime as dt

    from quantflow.compute.stage import RunWindow
    from quantflow.metadata import get_metadata_manager

    md = get_metadata_manager(root).load_all()
    dates = json.loads((root / "dates.json").read_text())
    window = RunWindow(dt.date.fromisoformat(dates[0]), dt.date.fromisoformat(dates[1]), tuple(md.symbols),
                       "overwrite")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    out: dict = {}
    if case == "assembly":
        from quantflow.models import runner

        data, _, _ = runner.load_training_set(md, runner.model_config(md, "rf"), window.end_date)
        out["rows"], out["features"] = data.n, len(data.features)
    elif case == "assembly_pandas":
        out["rows"] = pandas_assembly(md, window.end_date)
    elif case == "walk_forward":
        from quantflow.models import runner

        result = runner.run(md, window, model="rf")
        out["refits"], out["predictions"] = len(result.folds), result.predictions
    elif case in ("epoch_mlp", "epoch_lstm"):
        import numpy as np

        from quantflow.models import runner
        from quantflow.models.dl import TorchLearner

        cfg = runner.model_config(md, case.split("_")[1])
        data, _, _ = runner.load_training_set(md, cfg, window.end_date)
        learner = TorchLearner(cfg, np.unique(data.y.astype(int)))
        rows = np.arange(data.n)
        began = time.perf_counter()
        fitted = learner.fit(data, rows, np.ones(rows.size), {})
        out["rows"], out["device"] = data.n, str(next(fitted["net"].parameters()).device)
    out["seconds"] = time.perf_counter() - began
    out["peak_rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return out


def pandas_assembly(md, end) -> int:
    """The same training set as a pandas user builds it from the lake's Parquet files."""
    lake = Path(md.project_dir) / ".quantflow" / "lake"

    def read(table):  # file by file, the symbol from the folder name (symbol=<S>/date=<period>/...)
        frames = []
        for f in sorted((lake / table).rglob("*.parquet")):
            symbol = next(part.split("=", 1)[1] for part in f.parts if part.startswith("symbol="))
            frames.append(pd.read_parquet(f).assign(symbol=symbol))
        return pd.concat(frames, ignore_index=True)

    feats, labels = read("ft_features"), read("cdm_labels")
    labels = labels[(labels["label_set"] == "fwd5") & (pd.to_datetime(labels["date"]) <= pd.Timestamp(end))]
    feats["known"] = feats["ts"] + pd.Timedelta(days=1)
    labels["known"] = labels["ts"] + pd.Timedelta(days=1)
    cols = [c for c in feats.columns if c not in ("symbol", "date", "ts", "known")]
    joined = pd.merge_asof(labels.sort_values("known"), feats[["symbol", "known", *cols]].sort_values("known"),
                           on="known", by="symbol", direction="backward")
    return int(joined.dropna(subset=cols).shape[0])


def run_child(case: str, root: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", case, "--root", str(root)], capture_output=True,
                          text=True, cwd=HERE.parent)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--symbols", type=int, default=40)
    p.add_argument("--bars", type=int, default=5000)
    p.add_argument("--afml-bars", type=int, default=400)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dl-only", action="store_true")
    p.add_argument("--child")
    p.add_argument("--root", type=Path)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args, _ = p.parse_known_args()
    if args.child:
        print(json.dumps(child(args.child, args.root)))
        return 0
    results: dict = {"splits": [], "stage": {}}
    if not args.dl_only:
        results["splits"] = bench_splits(args.symbols, args.bars, args.afml_bars, args.repeat)
        print(f"  {'case':<52}{'QuantFlow':>12}{'peer':>12}{'ratio':>9}  peer")
        for r in results["splits"]:
            target = f"  target {r['target']:.0f}x: {'met' if r['ratio'] >= r['target'] else 'MISSED'}" if r["target"] else ""
            print(f"  {r['case']:<52}{r['quantflow']:>12.4f}{r['peer']:>12.4f}{r['ratio']:>8.1f}x  {r['peer_name']}{target}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from quantflow.compute.stage import RunWindow
        from quantflow.feature_engine import runner as feature_runner
        from quantflow.label_engine import runner as label_runner

        md, first, last = make_project(root, args.symbols, args.bars)
        (root / "dates.json").write_text(json.dumps([str(first), str(last)]))
        whole = RunWindow(first, last, tuple(md.symbols), "overwrite")
        label_runner.run(md, whole)
        feature_runner.run(md, whole)
        cases = ["epoch_mlp", "epoch_lstm"] if args.dl_only else ["assembly", "assembly_pandas", "walk_forward",
                                                                  "epoch_mlp", "epoch_lstm"]
        for case in cases:
            runs = [run_child(case, root) for _ in range(1 if case == "walk_forward" else args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            results["stage"][case] = best
            extra = ", ".join(f"{k} {v}" for k, v in best.items() if k not in ("seconds", "peak_rss_mb"))
            print(f"  {case:<20}{best['seconds']:>9.2f} s  peak RSS +{best['peak_rss_mb']:,.0f} MB  ({extra})")
    a, b = results["stage"].get("assembly"), results["stage"].get("assembly_pandas")
    if a and b:
        print(f"  training-set assembly: {b['seconds'] / a['seconds']:.1f}x the pandas script "
              f"({a['rows']:,} rows vs {b['rows']:,})")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_models_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
