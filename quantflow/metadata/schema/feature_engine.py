"""The ``project.feature_engine`` section: features over one bar table, compiled into a ``FeatureDAG``.

Every feature has a kind; each kind has one params model that says which columns it reads (bar columns or
other features' outputs) and which columns it writes. ``FeatureDAG.compile`` checks the whole set at load
time (unknown column, duplicate output, a cycle, a time-series feature that reads a cross-sectional one) and
reports each problem at its feature's line. The computations live in ``quantflow.feature_engine``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from quantflow.metadata.schema.base import NAME_RE, MetadataModel, repeated
from quantflow.storage.tables import BARS_DAILY_TABLE, ENRICHED_TABLE, QUOTES_TABLE, bar_columns

ALPHA158_KBAR = ("KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2")
ALPHA158_PRICE = ("OPEN0", "HIGH0", "LOW0", "VWAP0")
ALPHA158_ROLLING = ("ROC", "MA", "STD", "BETA", "RSQR", "RESI", "MAX", "MIN", "QTLU", "QTLD", "RANK", "RSV", "IMAX",
                    "IMIN", "IMXD", "CORR", "CORD", "CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD", "VMA", "VSTD",
                    "WVMA", "VSUMP", "VSUMN", "VSUMD")
ALPHA158_WINDOWS = (5, 10, 20, 30, 60)
ALPHA158_NAMES = (*ALPHA158_KBAR, *ALPHA158_PRICE,
                  *(f"{family}{d}" for family in ALPHA158_ROLLING for d in ALPHA158_WINDOWS))
ALPHA158_READS = ("open", "high", "low", "close", "volume", "vwap")

MICROSTRUCTURE_MEASURES = ("order_flow_imbalance", "signed_volume_ratio", "spread", "effective_spread",
                           "kyle_lambda", "amihud", "vpin", "roll")
CALENDAR_FIELDS = ("day_of_week", "day_of_month", "month", "quarter", "minute_of_day")


# ---------------------------------------------------------------- params of each kind
class _Params(MetadataModel):
    def reads(self) -> list[str]:
        return [self.column] if hasattr(self, "column") else []

    def outputs(self, name: str) -> list[str]:
        return [name]


class TalibParams(_Params):
    """Any TA-Lib function by name, with its own parameters; ``inputs`` maps its inputs to columns."""

    function: str
    inputs: dict[str, str] = Field(default_factory=dict, description="TA-Lib input -> column (default: the "
                                   "bar column of the same name; close for single-series functions)")

    def function_params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def input_columns(self) -> list[str]:
        from quantflow.metadata.talib_catalog import catalog

        return [self.inputs.get(i, i) for i in catalog()[self.function.upper()]["inputs"]]

    def reads(self) -> list[str]:
        return self.input_columns()

    def outputs(self, name: str) -> list[str]:
        from quantflow.metadata.talib_catalog import catalog

        names = catalog()[self.function.upper()]["outputs"]
        return [name] if len(names) == 1 else [f"{name}_{o}" for o in names]


class ReturnsParams(_Params):
    """Returns over several horizons (bars): close_t / close_{t-h} - 1, or the log of the ratio."""

    column: str = "close"
    horizons: list[int] = Field(default_factory=lambda: [1], min_length=1)
    log: bool = False

    @field_validator("horizons")
    @classmethod
    def _positive(cls, horizons: list[int]) -> list[int]:
        if min(horizons) < 1 or len(set(horizons)) != len(horizons):
            raise ValueError("horizons must be distinct numbers of bars >= 1")
        return horizons

    def outputs(self, name: str) -> list[str]:
        return [f"{name}_{h}" for h in self.horizons]


class VolatilityParams(_Params):
    """Rolling standard deviation (ddof 1) of one-bar log returns, optionally annualized."""

    column: str = "close"
    window: int = Field(20, ge=2)
    annualize: int | None = Field(None, ge=1, description="periods per year (252 for daily bars)")


class ZScoreParams(_Params):
    """(x - rolling mean) / rolling standard deviation (ddof 1) over ``window`` bars."""

    column: str
    window: int = Field(20, ge=2)


class RollingParams(_Params):
    column: str
    window: int = Field(20, ge=1)
    stat: Literal["mean", "std", "min", "max", "sum"] = "mean"


class BenchmarkParams(_Params):
    """Rolling beta / correlation of one-bar log returns to a benchmark symbol's, over the same bars."""

    benchmark: str
    column: str = "close"
    window: int = Field(60, ge=3)


class CalendarParams(_Params):
    fields: list[Literal[CALENDAR_FIELDS]] = Field(default_factory=lambda: ["day_of_week", "month"], min_length=1)
    timezone: str = Field("America/New_York", description="exchange time zone of intraday bars (minute_of_day)")

    def outputs(self, name: str) -> list[str]:
        return [f"{name}_{f}" for f in self.fields]


class CrossSectionParams(_Params):
    """A transform across symbols at each bar time, after the time-series features."""

    column: str


class MicrostructureParams(_Params):
    """Market-microstructure measures per bar, from the bars' buy/sell volume, ``cdm_trade_enriched`` and
    ``cdm_quotes``, averaged or regressed over ``window`` bars."""

    measure: Literal[MICROSTRUCTURE_MEASURES]
    window: int = Field(20, ge=2)

    def reads(self) -> list[str]:
        return ["close"] if self.measure in ("kyle_lambda", "amihud", "roll") else []


FEATURE_KINDS: dict[str, type[_Params]] = {
    "talib": TalibParams,
    "returns": ReturnsParams,
    "volatility": VolatilityParams,
    "zscore": ZScoreParams,
    "rolling": RollingParams,
    "beta": BenchmarkParams,
    "correlation": BenchmarkParams,
    "calendar": CalendarParams,
    "cs_rank": CrossSectionParams,
    "cs_zscore": CrossSectionParams,
    "cs_demean": CrossSectionParams,
    "microstructure": MicrostructureParams,
}
CROSS_SECTIONAL_KINDS = ("cs_rank", "cs_zscore", "cs_demean")


class FeatureConfig(MetadataModel):
    """One feature: a kind with its params; its outputs are named after it (see each kind)."""

    name: str = Field(pattern=NAME_RE)
    kind: Literal[tuple(FEATURE_KINDS)]
    params: dict[str, Any] = Field(default_factory=dict)
    outputs: list[str] | None = Field(None, description="names of the output columns, replacing the default ones")


class FeatureEngineConfig(MetadataModel):
    """Features over one bar table, written to ``ft_features`` (one row per bar of ``input``)."""

    input: str = Field(BARS_DAILY_TABLE, pattern=r"^cdm_\w+$", description="bar table: cdm_bars_daily or a "
                       "state-engine bar table")
    preset: Literal["alpha158"] | None = Field(None, description="alpha158: Qlib's 158 price-volume factors")
    features: list[FeatureConfig] = Field(default_factory=list)
    executor: Literal["local", "ray"] = "local"
    max_concurrency: int = Field(2, ge=1)
    rows_per_task: int = Field(1_000_000, ge=1, description="bars (with warm-up) per task")
    settle_periods: int = Field(20, ge=1, description="warm-up of recursive indicators (EMA, Wilder): this "
                                "many times their longest period (their start's weight is below e^-20)")

    def tick_tables(self) -> list[str]:
        """The tick tables the microstructure features read beside the bars: enriched trades for spreads (and
        for signed volume when the bars have no buy/sell volume), quotes for order-flow imbalance."""
        measures = {f.params.get("measure") for f in self.features if f.kind == "microstructure"}
        flow = measures & {"signed_volume_ratio", "vpin", "kyle_lambda"} and "buy_volume" not in bar_columns(self.input)
        return ([ENRICHED_TABLE] if measures & {"spread", "effective_spread"} or flow else []) + \
            ([QUOTES_TABLE] if "order_flow_imbalance" in measures else [])

    @field_validator("features")
    @classmethod
    def _distinct_names(cls, features: list[FeatureConfig]) -> list[FeatureConfig]:
        dupes = repeated([f.name for f in features])
        if dupes:
            raise ValueError(f"feature names must be distinct: {', '.join(dupes)}")
        return features


# ---------------------------------------------------------------- the DAG
@dataclass(frozen=True)
class FeatureNode:
    name: str
    kind: str
    params: Any  # the kind's params model; None for the preset
    outputs: tuple[str, ...]
    reads: tuple[str, ...]  # bar columns and other features' outputs
    depends_on: tuple[str, ...]  # names of the features whose outputs it reads
    index: int | None  # position in feature_engine.features (None: the preset)

    @property
    def cross_sectional(self) -> bool:
        return self.kind in CROSS_SECTIONAL_KINDS


@dataclass(frozen=True)
class FeatureDAG:
    """The features in an order that computes each after what it reads: time-series features first, then
    the cross-sectional ones."""

    input: str
    nodes: tuple[FeatureNode, ...]

    @property
    def outputs(self) -> list[str]:
        return [o for n in self.nodes for o in n.outputs]

    @property
    def benchmarks(self) -> list[str]:
        return sorted({n.params.benchmark for n in self.nodes if n.kind in ("beta", "correlation")})

    def node(self, name: str) -> FeatureNode:
        return next(n for n in self.nodes if n.name == name)

    @classmethod
    def compile(cls, cfg: FeatureEngineConfig, symbols: list[str] | None = None) -> FeatureDAG:
        issues = cls.issues(cfg, symbols)
        if issues:
            raise ValueError("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in issues))
        return cls._compiled(cfg)[0]

    @classmethod
    def issues(cls, cfg: FeatureEngineConfig, symbols: list[str] | None = None) -> list[tuple[tuple, str]]:
        """Problems as (path under feature_engine, message), each at the feature that has it."""
        return cls._compiled(cfg, symbols)[1]

    @classmethod
    def _compiled(cls, cfg: FeatureEngineConfig, symbols: list[str] | None = None):
        issues: list[tuple[tuple, str]] = []
        nodes: list[FeatureNode] = []
        broken: list[str] = []  # features already reported: what reads them is not reported again
        if cfg.preset == "alpha158":
            names = [n for n in ALPHA158_NAMES if n != "VWAP0" or "vwap" in bar_columns(cfg.input)]
            nodes.append(FeatureNode("alpha158", "alpha158", None, tuple(names), (), (), None))
        for i, f in enumerate(cfg.features):
            where = ("features", i)
            model = FEATURE_KINDS[f.kind]
            try:
                params = model.model_validate(f.params)
            except ValidationError as exc:
                for err in exc.errors():
                    issues.append((where + ("params", *err["loc"]), f"feature {f.name!r}: {err['msg']}"))
                broken.append(f.name)
                continue
            problem = _kind_problem(f, params, symbols)
            if problem:
                issues.append((where + ("params",), f"feature {f.name!r}: {problem}"))
                broken.append(f.name)
                continue
            outputs = params.outputs(f.name)
            if f.outputs is not None:
                if len(f.outputs) != len(outputs):
                    issues.append((where + ("outputs",), f"feature {f.name!r} writes {len(outputs)} columns "
                                   f"({', '.join(outputs)}); outputs names {len(f.outputs)}"))
                    continue
                outputs = list(f.outputs)
            nodes.append(FeatureNode(f.name, f.kind, params, tuple(outputs), tuple(params.reads()), (), i))
        issues += _duplicate_outputs(nodes, cfg.input)
        producer = {o: n for n in nodes for o in n.outputs}
        columns = bar_columns(cfg.input)
        linked = []
        for n in nodes:
            unknown = [c for c in n.reads if c not in columns and c not in producer
                       and not any(c == b or c.startswith(f"{b}_") for b in broken)]
            if unknown:
                known = ", ".join(sorted(columns))
                issues.append((("features", n.index, "params"), f"feature {n.name!r} reads {', '.join(unknown)}: "
                               f"not a column of {cfg.input} ({known}) nor a feature's output"))
            deps = tuple(dict.fromkeys(producer[c].name for c in n.reads if c in producer))
            bad = [d for d in deps if producer_node(nodes, d).cross_sectional and not n.cross_sectional]
            if bad:
                issues.append((("features", n.index, "params"), f"feature {n.name!r} is a time series of "
                               f"cross-sectional feature {bad[0]!r}: cross-sectional transforms come last"))
            linked.append(FeatureNode(n.name, n.kind, n.params, n.outputs, n.reads, deps, n.index))
        order, cycle = _topological(linked)
        if cycle:
            first = min((n for n in linked if n.name in cycle), key=lambda n: n.index or 0)
            issues.append((("features", first.index), f"features {' -> '.join(cycle)} read each other in a cycle"))
        order.sort(key=lambda n: n.cross_sectional)  # stable: keeps the dependency order within each phase
        return cls(cfg.input, tuple(order)), issues


def producer_node(nodes: list[FeatureNode], name: str) -> FeatureNode:
    return next(n for n in nodes if n.name == name)


def _kind_problem(f: FeatureConfig, params: Any, symbols: list[str] | None) -> str | None:
    if f.kind == "talib":
        from quantflow.metadata.talib_catalog import catalog

        known = catalog()
        name = params.function.upper()
        if name not in known:
            return f"TA-Lib has no function {params.function!r}"
        wrong = sorted(set(params.function_params()) - set(known[name]["params"]))
        if wrong:
            return (f"TA-Lib {name} has no parameter {', '.join(wrong)} "
                    f"(it takes: {', '.join(known[name]['params']) or 'none'})")
        extra = sorted(set(params.inputs) - set(known[name]["inputs"]))
        if extra:
            return f"TA-Lib {name} has no input {', '.join(extra)} (its inputs: {', '.join(known[name]['inputs'])})"
    if f.kind in ("beta", "correlation") and symbols is not None and params.benchmark not in symbols:
        return f"benchmark {params.benchmark!r} is not one of the project's symbols"
    return None


def _duplicate_outputs(nodes: list[FeatureNode], table: str) -> list[tuple[tuple, str]]:
    issues, seen = [], {c: f"a column of {table}" for c in ("symbol", "date", "ts", *bar_columns(table))}
    for n in nodes:
        for o in n.outputs:
            if o in seen:
                issues.append((("features", n.index) if n.index is not None else ("preset",),
                               f"feature {n.name!r} writes {o!r}, already written by {seen[o]}"))
            seen[o] = f"feature {n.name!r}"
    return issues


def _topological(nodes: list[FeatureNode]) -> tuple[list[FeatureNode], list[str]]:
    """Kahn's order (configuration order among the ready ones), and the names of a cycle when there is one."""
    by_name = {n.name: n for n in nodes}
    done: set[str] = set()
    order: list[FeatureNode] = []
    while len(order) < len(nodes):
        ready = [n for n in nodes if n.name not in done and all(d in done or d not in by_name for d in n.depends_on)]
        if not ready:
            return order, _cycle([n for n in nodes if n.name not in done], by_name)
        for n in ready:
            done.add(n.name)
            order.append(n)
    return order, []


def _cycle(left: list[FeatureNode], by_name: dict[str, FeatureNode]) -> list[str]:
    """Each unfinished node reads another unfinished one: follow those links until a name repeats."""
    pending = {n.name for n in left}
    path, name = [], left[0].name
    while name not in path:
        path.append(name)
        name = next(d for d in by_name[name].depends_on if d in pending)
    return path[path.index(name):] + [name]
