"""State-engine Ray benchmark: the sharded stage on the serial in-process executor, one Ray worker and two.

    python benchmarks/bench_state_engine_ray.py [--trades-per-day 300_000] [--shards 20] [--repeat 2]
    python benchmarks/bench_state_engine_ray.py --warmup-only [--warmup-samples 9]

A throwaway project in a temp dir under /tmp gets a lake of simulated CDM trades and quotes (the
``SyntheticFeed``, ``--symbols`` x ``--shards / --symbols`` trading days: one shard per symbol and day),
then ``runner.run(md, window, ...)`` (write mode overwrite) is timed with:

- ``serial``: ``executor="local"``, every shard one after another in this process;
- ``ray-1``: ``executor="ray", max_concurrency=1`` (one task in flight: one worker busy);
- ``ray-2``: ``executor="ray", max_concurrency=2``.

Ray is started once per thread mode (``num_cpus=2``, before any timing), and one untimed ray-2 run
imports the state engine and loads the Numba kernels in both workers, so the timed runs are steady state.
The three contenders alternate within each of ``--repeat`` rounds (best of the rounds), so a neighbour's
load hits all of them alike. Each task (a pack of shards) carries Parquet paths and the lake root, never arrays.

Thread modes (``--thread-modes``): ``default`` leaves the workers as production starts them (polars sizes
its thread pool to the machine, so one worker can already use both cores); ``1`` sets
``POLARS_MAX_THREADS=1`` and ``NUMBA_NUM_THREADS=1`` (and the BLAS/OpenMP ones) in the workers' env, so a
worker uses one core and ray-2 / ray-1 measures the scaling across workers alone. ``serial`` always runs
in this process with the default threads.

Per-worker warm-up: in a fresh Ray (``ray.shutdown()`` then ``ray.init``), a ``max_calls=1`` task (a new
worker process each time, checked: neither the state engine nor numba nor polars imported yet) does what a
``RayExecutor`` task does, timed: ``executors._run_in_worker`` on the pickled ``(run_shard, tiny shard,
retries)`` (the executor's once-per-worker GC setup, unpickling, which imports the state engine, and the
shard), then the same call again; warm-up = first call - second call, with the Numba cache warm (the
default ``__pycache__`` next to the sources, shared by every local worker, or ``NUMBA_CACHE_DIR`` when set,
passed on to the workers). ``import_s`` is the part before ``run_shard`` starts; ``gc_s`` the time the
garbage collector ran during the first call. The cold figure repeats this with an empty
``NUMBA_CACHE_DIR`` (set in the Ray runtime_env): the compile time that ``cache=True`` saves.
``--warmup-only`` measures the warm-up alone (a tiny lake, no serial/Ray runs, no cold figure).

A JSON copy goes to ``benchmarks/results/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from quantflow.compute.stage import Progress, RunWindow  # noqa: E402
from quantflow.ingest.feeds.base import weekdays  # noqa: E402
from quantflow.ingest.feeds.synthetic import SyntheticFeed  # noqa: E402
from quantflow.metadata import get_metadata_manager  # noqa: E402
from quantflow.state_engine import runner  # noqa: E402
from quantflow.storage.project import project_lake  # noqa: E402
from quantflow.storage.schemas import spec_for_kind  # noqa: E402

START = dt.date(2024, 3, 4)  # a Monday
RAY_CPUS = 2
TARGET_SCALING = 1.6  # ray-2 / ray-1
TARGET_VS_SERIAL = 1.0  # ray-2 faster than serial
TARGET_WARMUP_S = 0.3
ONE_THREAD = {
    k: "1"
    for k in (
        "POLARS_MAX_THREADS",
        "NUMBA_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "RAYON_NUM_THREADS",
    )
}

PROJECT = """\
project:
  name: se_ray_bench
  symbols: [{symbols}]
  state_engine:
    executor: local
    lob: {{interval: 1s, depth: 1}}
    bars:
      - {{type: time, every: 1m}}
      - {{type: volume, expected_daily: {volume:.6g}, bars_per_day: 50}}
      - {{type: dollar, expected_daily: {dollar:.6g}, bars_per_day: 50}}
      - {{type: tick_run, expected_ticks: 100}}
"""
# run bars, not imbalance bars: on the simulator's balanced order flow (|E[b]| near 0) AFML's imbalance
# threshold E[T] * |E[b]| falls below one trade, every trade closes a bar, and the bar table is as large
# as the trades (see the README's bar conventions); run bars keep about E[T] trades a bar


# ---------------------------------------------------------------------------------------------- data


def trading_days(n: int) -> list[dt.date]:
    return weekdays(START, START + dt.timedelta(days=2 * n + 7))[:n]


def make_project(
    root: Path,
    symbols: list[str],
    days: list[dt.date],
    trades_per_day: int,
    quotes_per_trade: float,
    seed: int,
) -> Path:
    """A project whose lake holds simulated CDM trades and quotes for ``symbols`` x ``days``."""
    meta = root / "project_metadata"
    meta.mkdir(parents=True, exist_ok=True)
    volume = trades_per_day * 300.0  # about 300 shares a trade, price about 100
    (meta / "project.yaml").write_text(
        textwrap.dedent(PROJECT.format(symbols=", ".join(symbols), volume=volume, dollar=volume * 100.0))
    )
    md = get_metadata_manager(root).load_all()
    lake = project_lake(md)
    params = {"seed": seed, "trades_per_day": trades_per_day, "quotes_per_trade": quotes_per_trade}
    feed = SyntheticFeed("sim", params, root)
    for batch in feed.iter_batches(symbols, days[0], days[-1]):
        for kind, df in batch.tables.items():
            lake.write(spec_for_kind(f"cdm_{kind}", kind), df)
    return root


# ---------------------------------------------------------------------------------------------- Ray


def start_ray(env: dict[str, str]) -> None:
    """A fresh local Ray with two CPUs; ``env`` goes to every worker (the job's runtime_env)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=256 * 1024**2,
        runtime_env={"env_vars": env} if env else None,
    )


def _probe_worker() -> dict:
    """What a worker sees: pid, niceness, thread pools, Numba cache directory (imports polars, numba, pyarrow)."""
    import numba
    import polars
    import pyarrow

    return {
        "pid": os.getpid(),
        "nice": os.nice(0),
        "polars_threads": polars.thread_pool_size(),
        "pyarrow_threads": pyarrow.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR", "(default: __pycache__ by the sources)"),
    }


def probe_workers() -> list[dict]:
    import ray

    probe = ray.remote(num_cpus=1)(_probe_worker)
    return ray.get([probe.remote() for _ in range(RAY_CPUS)])


def _warmup_in_fresh_worker(payload: bytes) -> dict:
    """Runs in a new worker process, the way a ``RayExecutor`` task does: ``_run_in_worker`` (its GC setup,
    then unpickling ``(run_shard, task, retries)``, which imports the state engine, then the shard), timed
    twice. Refers to no quantflow global, so nothing of quantflow is imported before the clock starts."""
    import gc as _gc
    import sys as _sys
    import time as _time

    fresh = not any(m.startswith(("quantflow.state_engine", "numba", "polars")) for m in _sys.modules)
    in_gc = {"s": 0.0, "began": 0.0}

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            in_gc["began"] = _time.perf_counter()
        else:
            in_gc["s"] += _time.perf_counter() - in_gc["began"]

    _gc.callbacks.append(on_gc)
    began = _time.perf_counter()
    from quantflow.compute.executors import _run_in_worker  # what Ray imports to load a shard task

    first = _run_in_worker(payload)
    first_done = _time.perf_counter()
    gc_s = in_gc["s"]
    second = _run_in_worker(payload)
    second_done = _time.perf_counter()
    _gc.callbacks.remove(on_gc)
    for outcome in (first, second):
        if not outcome.ok:
            raise RuntimeError(f"warm-up shard failed: {outcome.error}")
    hits = misses = 0
    for name in ("quantflow.state_engine.kernels", "quantflow.state_engine.bars", "quantflow.state_engine.book"):
        module = _sys.modules.get(name)
        for obj in vars(module).values() if module else ():
            stats = getattr(obj, "stats", None)
            if stats is not None and hasattr(stats, "cache_hits"):
                hits += sum(stats.cache_hits.values())
                misses += sum(stats.cache_misses.values())
    return {
        "pid": os.getpid(),
        "fresh": fresh,
        # everything before run_shard starts: GC setup, unpickling the task (imports), Ray's executor module
        "import_s": (first_done - began) - first.seconds,
        "first_call_s": first.seconds,
        "second_call_s": second_done - first_done,
        "warmup_s": (first_done - began) - (second_done - first_done),
        "gc_s": gc_s,
        "numba_cache_hits": hits,
        "numba_cache_misses": misses,
        "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR", ""),
    }


def measure_warmup(task: runner.ShardTask, env: dict[str, str], samples: int) -> list[dict]:
    """``samples`` fresh workers, one after another, in a fresh Ray whose workers get ``env``."""
    import ray
    from ray import cloudpickle

    start_ray(env)
    fn = ray.remote(num_cpus=1, max_calls=1)(_warmup_in_fresh_worker)
    payload = cloudpickle.dumps((runner.run_shard, task, 0))  # what RayExecutor sends: (fn, shard, retries)
    out = [ray.get(fn.remote(payload)) for _ in range(samples)]
    ray.shutdown()
    stale = [o for o in out if not o["fresh"]]
    if stale:
        print(f"  warning: {len(stale)} sample(s) ran in a worker that had the state engine imported already")
    return out


# ---------------------------------------------------------------------------------------------- timing


def timed_run(md, days: list[dt.date], executor: str, workers: int) -> dict:
    tasks: list[tuple[int, float]] = []  # (trades, seconds) of each executor task (a pack of shards)

    class TaskTimes(Progress):
        def detail(self, message: str) -> None:  # "task 3/4 AAA 2024-03-04..BBB 2024-03-15 (10 shards): 3123 trades in 0.31s"
            m = re.fullmatch(r"task \d+/\d+ .*: (\d+) trades in ([\d.]+)s", message)
            if m:
                tasks.append((int(m[1]), float(m[2])))

    began = time.perf_counter()
    window = RunWindow.resolve(md.symbols, days[0], days[-1], write_mode="overwrite")
    res = runner.run(md, window, executor=executor, max_concurrency=workers, progress=TaskTimes())
    wall = time.perf_counter() - began
    if res.shards_failed or not tasks or sum(n for n, _ in tasks) != res.trades:
        raise RuntimeError(f"{executor}-{workers}: {res.shards_failed or 'progress lines not parsed'}")
    seconds = [s for _, s in tasks]
    return {
        "wall_s": wall,
        "trades": res.trades,
        "shards": res.shards,
        "tasks": len(tasks),
        "plan": res.plan,
        "task_s_sum": sum(seconds),
        "task_s_mean": sum(seconds) / len(seconds),
        "overlap": sum(seconds) / wall,
    }


def bench_mode(md, days: list[dt.date], mode: str, base_env: dict[str, str], repeat: int) -> dict:
    """serial, ray-1 and ray-2, alternating, best of ``repeat``; Ray restarted with this mode's worker env."""
    env = dict(base_env) | (ONE_THREAD if mode == "1" else {})
    start_ray(env)
    began = time.perf_counter()
    first = timed_run(md, days, "ray", 2)  # untimed: the workers import the engine and load the kernels
    first["ray_started_s"] = time.perf_counter() - began
    probes = probe_workers()
    print(
        f"  [{mode} threads] first ray-2 run on new workers {first['wall_s']:.2f} s; workers: "
        + "; ".join(
            f"pid {p['pid']} nice {p['nice']}: polars {p['polars_threads']}, pyarrow "
            f"{p['pyarrow_threads']}, numba {p['numba_threads']} threads"
            for p in probes
        ),
        flush=True,
    )
    runs: dict[str, list[dict]] = {"serial": [], "ray-1": [], "ray-2": []}
    timed_run(md, days, "local", 1)  # untimed: this process's kernels and caches
    for r in range(repeat):
        for name, executor, workers in (("serial", "local", 1), ("ray-1", "ray", 1), ("ray-2", "ray", 2)):
            out = timed_run(md, days, executor, workers)
            runs[name].append(out)
            print(
                f"  [{mode} threads] round {r + 1}: {name:<6} {out['wall_s']:6.2f} s  "
                f"({out['tasks']} tasks, mean {out['task_s_mean']:.3f} s, overlap {out['overlap']:.2f})",
                flush=True,
            )
    import ray

    ray.shutdown()
    best = {k: min(v, key=lambda o: o["wall_s"]) for k, v in runs.items()}
    return {
        "mode": mode,
        "worker_env": env,
        "workers": probes,
        "first_run_on_new_workers": first,
        "runs": runs,
        "best": best,
        "scaling": best["ray-1"]["wall_s"] / best["ray-2"]["wall_s"],
        "vs_serial": best["serial"]["wall_s"] / best["ray-2"]["wall_s"],
    }


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_table(modes: list[dict], warm: dict, cold: dict | None) -> list[dict]:
    targets = []
    if modes:
        print(
            f"\n{'worker threads':<16} {'serial s':>9} {'ray-1 s':>8} {'ray-2 s':>8} "
            f"{'ray-2/ray-1':>12} {'ray-2/serial':>13} {'ray-2 overlap':>14}"
        )
    for m in modes:
        b = m["best"]
        print(
            f"{m['mode']:<16} {b['serial']['wall_s']:9.2f} {b['ray-1']['wall_s']:8.2f} {b['ray-2']['wall_s']:8.2f} "
            f"{m['scaling']:11.2f}x {m['vs_serial']:12.2f}x {b['ray-2']['overlap']:14.2f}"
        )
    samples = ", ".join(f"{s['warmup_s']:.3f}" for s in warm["all"])
    print(
        f"\nper-worker warm-up (fresh worker, warm Numba cache, median of {warm['samples']}): "
        f"{warm['warmup_s']:.3f} s  (import {warm['import_s']:.3f} s + first call {warm['first_call_s']:.3f} s "
        f"- second call {warm['second_call_s']:.3f} s; garbage collector during import + first call "
        f"{warm['gc_s']:.3f} s; kernels from cache {warm['numba_cache_hits']}, compiled "
        f"{warm['numba_cache_misses']}; samples {samples})"
    )
    if cold is not None:
        print(
            f"cold compile (empty NUMBA_CACHE_DIR): warm-up {cold['warmup_s']:.3f} s  (import {cold['import_s']:.3f} s "
            f"+ first call {cold['first_call_s']:.3f} s; compiled {cold['numba_cache_misses']}): "
            f"cache=True saves {cold['warmup_s'] - warm['warmup_s']:.2f} s per worker"
        )
    print()
    print(f"{'target':<44} {'measured':>10}  status")
    for m in modes:
        for name, value, ok, text in (
            ("ray-2 vs ray-1", m["scaling"], m["scaling"] >= TARGET_SCALING, f">= {TARGET_SCALING}x"),
            (
                "ray-2 vs serial",
                m["vs_serial"],
                m["vs_serial"] > TARGET_VS_SERIAL,
                f"> {TARGET_VS_SERIAL:g}x",
            ),
        ):
            label = f"{name} {text} ({m['mode']} threads)"
            print(f"{label:<44} {value:9.2f}x  {mark(ok)}")
            targets.append({"target": label, "value": value, "met": ok})
    ok = warm["warmup_s"] <= TARGET_WARMUP_S
    label = f"warm-up per worker <= {TARGET_WARMUP_S} s"
    print(f"{label:<44} {warm['warmup_s']:9.3f}s  {mark(ok)}")
    targets.append({"target": label, "value": warm["warmup_s"], "met": ok})
    return targets


def summarise(samples: list[dict]) -> dict:
    keys = ("import_s", "first_call_s", "second_call_s", "warmup_s", "gc_s", "numba_cache_hits", "numba_cache_misses")
    return {
        "samples": len(samples),
        **{k: statistics.median(s[k] for s in samples) for k in keys},
        "all": samples,
    }


def run(args) -> dict:
    if args.shards % args.symbols:
        raise SystemExit(f"--shards {args.shards} must be a multiple of --symbols {args.symbols}")
    symbols = [f"S{i:02d}" for i in range(args.symbols)]
    days = trading_days(args.shards // args.symbols)
    base_env = {"NUMBA_CACHE_DIR": os.environ["NUMBA_CACHE_DIR"]} if os.environ.get("NUMBA_CACHE_DIR") else {}
    tmp = Path(tempfile.mkdtemp(prefix="qf_bench_ray_", dir="/tmp"))
    print(
        f"state engine on Ray: {args.shards} shards ({args.symbols} symbols x {len(days)} days), "
        f"~{args.trades_per_day:,} trades/shard, best of {args.repeat}, {os.cpu_count()} cores, Ray num_cpus "
        f"{RAY_CPUS}; project in {tmp}",
        flush=True,
    )
    modes: list[dict] = []
    cold: dict | None = None
    try:
        began = time.perf_counter()
        if not args.warmup_only:
            md = get_metadata_manager(
                make_project(
                    tmp / "project", symbols, days, args.trades_per_day, args.quotes_per_trade, args.seed
                )
            ).load_all()
        tiny_md = get_metadata_manager(
            make_project(tmp / "tiny", symbols[:1], days[:1], 500, 2.0, args.seed)
        ).load_all()
        print(f"  lake written in {time.perf_counter() - began:.1f} s", flush=True)
        if not args.warmup_only:
            modes = [bench_mode(md, days, mode, base_env, args.repeat) for mode in args.thread_modes.split(",")]
        tiny = runner.plan_shards(
            tiny_md, tiny_md.project.state_engine, days[0], days[0], symbols[:1], "overwrite"
        )[0]
        if args.warmup_only:
            runner.run_shard(tiny)  # the kernels in the Numba cache (the full runs do this otherwise)
        warm = summarise(measure_warmup(tiny, base_env, args.warmup_samples))
        if not args.warmup_only:
            cold_dir = tmp / "numba_cold_cache"
            cold_dir.mkdir()
            cold = summarise(measure_warmup(tiny, base_env | {"NUMBA_CACHE_DIR": str(cold_dir)}, 1))
    finally:
        if args.keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    targets = print_table(modes, warm, cold)
    import numba
    import ray

    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "shards": args.shards,
        "symbols": args.symbols,
        "days": len(days),
        "trades_per_day": args.trades_per_day,
        "quotes_per_trade": args.quotes_per_trade,
        "trades": modes[0]["best"]["serial"]["trades"] if modes else None,
        "repeat": args.repeat,
        "ray_num_cpus": RAY_CPUS,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg": os.getloadavg(),
        },
        "versions": {"ray": ray.__version__, "polars": pl.__version__, "numba": numba.__version__},
        "modes": modes,
        "warmup": warm,
        "cold_compile": cold,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--trades-per-day",
        type=lambda s: int(s.replace("_", "")),
        default=300_000,
        help="trades per shard (one symbol, one day); ~0.3 s of work a shard at 300_000",
    )
    p.add_argument("--quotes-per-trade", type=float, default=2.0)
    p.add_argument("--shards", type=int, default=20, help="symbols x trading days")
    p.add_argument("--symbols", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument(
        "--thread-modes",
        default="default,1",
        help="comma list: 'default' (production workers), '1' (POLARS_MAX_THREADS=1 etc. in workers)",
    )
    p.add_argument("--warmup-samples", type=int, default=3, help="fresh workers timed for the warm-up")
    p.add_argument(
        "--warmup-only",
        action="store_true",
        help="only the per-worker warm-up (tiny lake, no serial/ray runs, no cold compile)",
    )
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--keep", action="store_true", help="keep the temp project")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"state_engine_ray_{dt.datetime.now():%Y%m%d_%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    missed = [t for t in result["targets"] if not t["met"]]
    print(f"\n{len(missed)} target(s) missed; results in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
