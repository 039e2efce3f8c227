"""Run one shard function over many shards: in process (debugging, small runs) or on Ray.

Shards are independent and idempotent, so a failed shard is retried alone. A shard carries locations
(Parquet paths, the lake root), never large arrays: moving arrays through Ray's object store made Ray
slower than serial on these machines, so each task reads and writes its own data.

A Ray task unpickles its shard function and shard itself (``_run_in_worker``), so that a fresh worker
first freezes the garbage collector's view of what Ray already holds, then imports the state engine
(numba, polars, the kernels) while those objects are no longer scanned: see ``_prepare_worker``.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from quantflow.compute import allocator
from quantflow.compute.stage import counted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardOutcome:
    shard: Any
    result: Any = None
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0
    node: str = ""  # the Ray node that ran it ("" in process)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ExecutionReport:
    outcomes: list[ShardOutcome] = field(default_factory=list)
    seconds: float = 0.0
    executor: str = ""

    @property
    def failed(self) -> list[ShardOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def nodes(self) -> set[str]:
        """The Ray nodes that ran shards (empty in process): a cluster run shows it used every node."""
        return {o.node for o in self.outcomes if o.node}

    def raise_on_failure(self) -> None:
        if self.failed:
            lines = [f"{o.shard}: {o.error}" for o in self.failed[:10]]
            more = f" (and {len(self.failed) - 10} more)" if len(self.failed) > 10 else ""
            raise RuntimeError(f"{len(self.failed)} of {len(self.outcomes)} shards failed{more}:\n" + "\n".join(lines))


Progress = Callable[[int, int, ShardOutcome], None]
ONE_THREAD_VARS = ("POLARS_MAX_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "MKL_NUM_THREADS")


class LocalExecutor:
    """Runs shards one after another in this process; same retry semantics as Ray."""

    name = "local"

    def __init__(self, retries: int = 1):
        self.retries = retries

    def map(self, fn: Callable[[Any], Any], shards: Sequence[Any], progress: Progress | None = None) -> ExecutionReport:
        began = time.perf_counter()
        report = ExecutionReport(executor=self.name)
        for i, shard in enumerate(shards):
            outcome = _run_with_retries(fn, shard, self.retries)
            report.outcomes.append(outcome)
            if progress:
                progress(i + 1, len(shards), outcome)
        report.seconds = time.perf_counter() - began
        return report


def _run_with_retries(fn: Callable[[Any], Any], shard: Any, retries: int) -> ShardOutcome:
    began = time.perf_counter()
    error = None
    for attempt in range(1, retries + 2):
        try:
            return ShardOutcome(shard, fn(shard), None, attempt, time.perf_counter() - began)
        except Exception as exc:  # a shard's failure is reported, the other shards go on
            error = f"{type(exc).__name__}: {exc}"
            log.warning("shard %s failed (attempt %d): %s", shard, attempt, error)
    return ShardOutcome(shard, None, error, retries + 1, time.perf_counter() - began)


_worker_prepared = False


def _prepare_worker() -> bool:
    """Once per worker process, before the first task's imports: True the first time, else False.

    ``gc.freeze()`` moves every object alive now (Ray's own modules and state, a few hundred thousand
    objects, all of them as long-lived as the process) to the permanent generation, so the full
    collections that importing numba, polars and the kernels triggers no longer walk them: about 0.12 s
    less GC in a fresh worker on a 2-core machine (of about 0.19 s). Nothing is collected first, so any
    garbage cycle already pending stays (once, a few KB); Ray Serve freezes its replicas the same way.
    """
    global _worker_prepared
    if _worker_prepared:
        return False
    _worker_prepared = True
    gc.freeze()
    return True


def _run_in_worker(payload: bytes) -> ShardOutcome:
    """The Ray task: ``(fn, shard, retries)`` come pickled, and are unpickled after ``_prepare_worker``."""
    first = _prepare_worker()
    fn, shard, retries = pickle.loads(payload)  # imports fn's module (the state engine) in a fresh worker
    if first:
        gc.freeze()  # the modules just imported live as long as the worker too
    import dataclasses

    import ray

    outcome = _run_with_retries(fn, shard, retries)
    return dataclasses.replace(outcome, node=ray.get_runtime_context().get_node_id())


def _connect_error(address: str, exc: BaseException) -> Exception:
    """One line for a run that cannot reach its cluster. Ray buries a refused token deep in a traceback's
    text (and its joining nodes and clients default to no token while ``ray start --head`` turns it on)."""
    from quantflow.compute.stage import StageError

    text = "".join(traceback.format_exception(exc))
    if "InvalidAuthToken" in text or "AuthenticationError" in text:
        why = ("Ray's token authentication refused the run (Authentication token is missing or incorrect): set "
               "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, or ~/.ray/auth_token from the head)")
    else:
        while exc.__cause__ is not None:
            exc = exc.__cause__
        why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return StageError(f"cannot connect to the Ray cluster at RAY_ADDRESS={address}: {why}")


class RayExecutor:
    """Runs shards as Ray tasks, at most ``max_concurrency`` at a time.

    Connects to ``RAY_ADDRESS`` when set (an existing cluster), else starts a local Ray with that many CPUs.
    ``env`` is passed to the workers (e.g. ``NUMBA_CACHE_DIR`` so all workers share compiled kernels).
    """

    name = "ray"

    def __init__(self, max_concurrency: int = 4, retries: int = 1, env: dict[str, str] | None = None):
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.env = env or {}

    def _init(self) -> None:
        import ray

        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            if address:
                try:
                    ray.init(address=address, log_to_driver=False)
                except Exception as exc:
                    raise _connect_error(address, exc) from exc
            else:
                # Ray's default token authentication stays on; only its notice about it on every start goes
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
                ray.init(num_cpus=self.max_concurrency, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < self.max_concurrency:
            log.warning("Ray has %s but max_concurrency is %d: at most %s will run at once",
                        counted(int(cpus), "CPU"), self.max_concurrency, counted(int(cpus), "task"))

    def worker_env(self) -> dict[str, str]:
        """Each task gets one core: libraries that start a thread per core would oversubscribe it. Polars'
        allocator settings go along (``compute/allocator.py``)."""
        return {**{var: "1" for var in ONE_THREAD_VARS}, **allocator.worker_env(), **self.env}

    def map(self, fn: Callable[[Any], Any], shards: Sequence[Any], progress: Progress | None = None) -> ExecutionReport:
        import ray

        self._init()
        began = time.perf_counter()
        from ray import cloudpickle

        # the environment goes with every task (not ray.init), so it holds on an already running Ray too
        task = ray.remote(num_cpus=1, max_retries=0)(_run_in_worker).options(
            runtime_env={"env_vars": self.worker_env()})
        report = ExecutionReport(executor=self.name)
        pending: dict[Any, int] = {}
        queue = list(enumerate(shards))
        results: dict[int, ShardOutcome] = {}
        while queue or pending:
            while queue and len(pending) < self.max_concurrency:
                i, shard = queue.pop(0)
                pending[task.remote(cloudpickle.dumps((fn, shard, self.retries)))] = i
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the worker itself died: report the shard as failed
                    outcome = ShardOutcome(shards[i], None, f"worker failure: {exc}", 1)
                results[i] = outcome
                if progress:
                    progress(len(results), len(shards), outcome)
        report.outcomes = [results[i] for i in range(len(shards))]
        report.seconds = time.perf_counter() - began
        return report


def make_executor(kind: str, max_concurrency: int = 4, retries: int = 1, env: dict[str, str] | None = None):
    if kind == "local":
        return LocalExecutor(retries)
    if kind == "ray":
        return RayExecutor(max_concurrency, retries, env)
    raise ValueError(f"executor must be 'local' or 'ray'; got {kind!r}")
