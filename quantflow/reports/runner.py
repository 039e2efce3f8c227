"""Reports stage entry point: ``run(md, window, report=...)`` writes one report family to ``reports/``.

- ``plot``: ``plot_<ts>.html``: prices with features, predictions vs realized, equity and drawdown vs the
  benchmarks, weights over time, and a factor report (IC decay and quantile returns) per factor and for the
  model's prediction.
- ``stress_test``: ``stress_test_historical_<ts>.html`` (the current weights over the worst windows of the
  price history and the named crises it covers) and ``stress_test_hypothetical_<ts>.html`` (Gaussian and
  Student-t shocks, correlations stressed, each asset crashing).
- ``risk``: ``risk_<kind>_<ts>.html`` / ``.png`` / ``.csv`` for var, drawdown, rolling, contributions, weights.

Inputs: the newest ``trading_report`` of the backtest (its equity curve and portfolio configuration),
``pf_weights``, ``cdm_bars_daily``, the model's predictions and ``ft_features``, up to the window's end.

In ``skip_if_exists`` a report whose inputs, configuration and code are as at its last run for the window, and
whose files are still the newest, is kept as it is (``storage.run_records``): nothing is drawn again.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import polars as pl

from quantflow.compute.stage import Progress, RunWindow, StageError, StageResult, counted
from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.artifacts import RISK_KINDS
from quantflow.storage.panels import daily_panel, model_predictions, newest_config
from quantflow.storage.project import project_artifacts, project_lake
from quantflow.storage.run_records import (
    RunRecords,
    artifact_signatures,
    code_version,
    digest,
    partition_signatures,
)
from quantflow.storage.tables import BARS_DAILY_TABLE, FEATURES_TABLE, WEIGHTS_TABLE, predictions_table

STAGE = "reports"
KEPT_FIGURES = ("figures", "warnings", "artifacts")  # what a kept report reports again
REPORTS = ("plot", "stress_test", "risk")
COLORS = {"strategy": "#1f77b4", "equal_weight": "#ff7f0e", "buy_and_hold": "#2ca02c"}


@dataclass
class ReportResult(StageResult):
    report: str = ""
    figures: dict[str, float] = field(default_factory=dict)  # numeric key figures (plotted across runs)
    kept: bool = False  # skip_if_exists, inputs as at the window's last run: nothing drawn again
    # the summary lists the pages to open; the risk PNGs and CSVs sit beside risk_var_<ts>.html
    summary_artifacts: ClassVar[tuple[str, ...]] = ("plot_url", "stress_test_historical_url",
                                                    "stress_test_hypothetical_url", "risk_var_html_url")

    def headline(self) -> str:
        if not self.artifacts:  # the backtest's own warning says why; one line here, not one per report
            return "nothing to report: the newest backtest traded nothing, or there is none yet"
        shown = ", ".join(f"{k} {v:.4g}" for k, v in list(self.figures.items())[:4])
        files = counted(len(self.artifacts), "file")
        if self.report == "risk" and self.artifacts:
            files += f" ({', '.join(RISK_KINDS)}: html, png, csv)"
        kept = "; kept: inputs, configuration and code as at the window's last run" if self.kept else ""
        return files + (f"; {shown}" if shown else "") + kept

    def key_figures(self) -> dict[str, Any]:
        return {k: v for k, v in self.figures.items() if v is not None and math.isfinite(v)}


@dataclass
class Inputs:
    trading: dict[str, Any]
    equity: pd.DataFrame  # date index: strategy, equal_weight, buy_and_hold, *_return, drawdown, ...
    weights: pd.DataFrame  # rebalance dates x symbols
    close: pd.DataFrame  # every date up to the window's end x symbols
    year_days: int

    @property
    def returns(self) -> pd.Series:
        return self.equity["strategy_return"].fillna(0.0)

    @property
    def benchmark(self) -> pd.Series:
        return self.equity["equal_weight_return"].fillna(0.0)


def load_inputs(md: ProjectMetadata, window: RunWindow) -> Inputs | None:
    backtests = project_artifacts(md, "backtest")
    url = backtests.latest("trading_report_", "json")
    if url is None:
        return None
    trading = json.loads(backtests.get(url))
    if "equity_curve_url" not in trading:  # the newest backtest traded nothing
        return None
    trading["url"] = url
    equity = pl.read_parquet(io.BytesIO(backtests.get(trading["equity_curve_url"]))).to_pandas()
    equity = equity.set_index(pd.to_datetime(equity["date"])).drop(columns="date")
    rows = project_lake(md).read(WEIGHTS_TABLE, list(md.symbols), None, window.end_date)
    rows = rows.filter(pl.col("config") == trading["portfolio_config"]).to_pandas()
    rows["date"] = pd.to_datetime(rows["date"])
    weights = rows.pivot_table(index="date", columns="symbol", values="weight", aggfunc="last")
    weights = weights.reindex(columns=list(md.symbols)).fillna(0.0).sort_index()
    close = daily_panel(md, window.end_date)["close"]
    return Inputs(trading, equity, weights, close, md.project.backtest.year_days)


def _figures_of(figures: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# --- plot ---------------------------------------------------------------------------------------------------

def _factor_names(md: ProjectMetadata, available: list[str]) -> list[str]:
    from fnmatch import fnmatchcase

    wanted = md.project.reports.factors
    if wanted:
        missing = [f for f in wanted if f not in available]
        if missing:
            raise StageError(f"{STAGE}: reports.factors {missing} are not columns of {FEATURES_TABLE}")
        return wanted
    model = next(m for m in md.project.models or [] if m.name == md.project.portfolio.model)
    patterns = model.features or ["*"]
    return [c for c in available if any(fnmatchcase(c, p) for p in patterns)][:6]


def plot_report(md: ProjectMetadata, window: RunWindow, inp: Inputs, store, result: ReportResult) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from quantflow.reports import engine
    from quantflow.reports.render import Page

    cfg = md.project.reports
    model = md.project.portfolio.model
    page = Page(f"{md.name}: strategy on model {model}",
                f"window {window.start_date} .. {window.end_date}; trading report {inp.trading['url'].rsplit('/', 1)[-1]}")
    features = project_lake(md).read(FEATURES_TABLE, list(md.symbols), None, window.end_date).to_pandas()
    features["date"] = pd.to_datetime(features["date"])
    names = _factor_names(md, [c for c in features.columns if c not in ("symbol", "date", "ts")])
    pred, _, notes = model_predictions(md, model, window.end_date)
    result.warnings += notes
    wide = {n: features.pivot_table(index="date", columns="symbol", values=n, aggfunc="last")
            .reindex(index=inp.close.index, columns=inp.close.columns) for n in names}
    if pred.height:
        frame = pred.select("symbol", "date", "prediction", "ret").to_pandas()
        frame["date"] = pd.to_datetime(frame["date"])
        wide[f"prediction ({model})"] = frame.pivot_table(index="date", columns="symbol", values="prediction",
                                                          aggfunc="last").reindex(index=inp.close.index,
                                                                                  columns=inp.close.columns)

    page.heading("Prices and features")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.05)
    first = names[0] if names else None
    for s in inp.close.columns:
        series = inp.close[s].dropna()
        if series.empty:  # a project symbol without bars
            continue
        fig.add_trace(go.Scatter(x=series.index, y=series / series.iloc[0], name=s, legendgroup=s), 1, 1)
        if first:
            fig.add_trace(go.Scatter(x=wide[first].index, y=wide[first][s], name=f"{s} {first}", legendgroup=s,
                                     showlegend=False), 2, 1)
    fig.update_yaxes(title_text="close / first close (log scale)", type="log", row=1, col=1)
    fig.update_yaxes(title_text=first or "", row=2, col=1)
    page.figure(fig)

    page.heading("Predictions vs realized")
    if pred.height:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("prediction vs the label's realized return",
                                                            "mean prediction and realized return per date"))
        for s in md.symbols:
            part = frame[frame["symbol"] == s]
            fig.add_trace(go.Scatter(x=part["prediction"], y=part["ret"], mode="markers", name=s), 1, 1)
        per_day = frame.groupby("date")[["prediction", "ret"]].mean()
        fig.add_trace(go.Scatter(x=per_day.index, y=per_day["prediction"], name="mean prediction"), 1, 2)
        fig.add_trace(go.Scatter(x=per_day.index, y=per_day["ret"], name="mean realized"), 1, 2)
        page.figure(fig)
        hit = float((np.sign(frame["prediction"]) == np.sign(frame["ret"])).mean())
        result.figures["prediction_hit_rate"] = hit
        page.note(f"{len(frame):,} out-of-sample predictions; sign agreement with the realized return {hit:.1%}")
    else:
        page.note(f"model {model} has no stored predictions")

    page.heading("Equity and drawdown vs benchmarks")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.05)
    for name in ("strategy", "equal_weight", "buy_and_hold"):
        curve = inp.equity[name]
        fig.add_trace(go.Scatter(x=curve.index, y=curve, name=name, line={"color": COLORS[name]}), 1, 1)
        fig.add_trace(go.Scatter(x=curve.index, y=curve / curve.cummax() - 1, name=f"{name} drawdown",
                                 line={"color": COLORS[name]}, showlegend=False), 2, 1)
    fig.update_yaxes(title_text="equity", row=1, col=1)
    fig.update_yaxes(title_text="drawdown", tickformat=".0%", row=2, col=1)
    page.figure(fig)
    metrics = inp.trading["metrics"]
    page.table(pd.DataFrame([{"series": "strategy", **_headline(metrics)},
                             *({"series": k, **_headline(v)} for k, v in inp.trading["benchmarks"].items())]))

    page.heading("Weights over time")
    page.figure(_weights_figure(inp.weights))

    page.heading("Factor report")
    page.note("Information coefficient: Spearman correlation across symbols of the factor at a date's close with "
              "the forward return from that close; quantile returns: mean forward return "
              f"({cfg.ic_horizons[0]} day) per factor quantile across symbols.")
    quantiles = min(cfg.quantiles, len(md.symbols))
    decay_fig, q_fig = go.Figure(), go.Figure()
    decay_rows = []
    for name, factor in wide.items():
        decay = engine.ic_decay(factor, inp.close, cfg.ic_horizons)
        decay_fig.add_trace(go.Bar(x=[str(h) for h in decay["horizon"]], y=decay["mean_ic"], name=name))
        q = engine.quantile_returns(factor, engine.forward_returns(inp.close, cfg.ic_horizons[0]), quantiles)
        q_fig.add_trace(go.Bar(x=q["quantile"].astype(str), y=q["mean_forward_return"], name=name))
        decay_rows += [{"factor": name, **row} for row in decay.to_dict("records")]
    decay_fig.update_layout(title="IC decay: mean IC by forward horizon (days)", barmode="group")
    q_fig.update_layout(title=f"Mean {cfg.ic_horizons[0]}-day forward return by quantile", barmode="group")
    page.figure(decay_fig)
    page.figure(q_fig)
    page.table(pd.DataFrame(decay_rows))
    result.artifacts["plot_url"] = store.put("plot_", "html", page.html())
    result.figures.update({k: v for k, v in _figures_of(metrics).items() if k in ("sharpe", "max_drawdown",
                                                                                     "total_return")})


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in ("total_return", "annual_return", "annual_volatility", "sharpe", "sortino",
                                  "calmar", "max_drawdown", "max_drawdown_days")}


def _weights_figure(weights: pd.DataFrame):
    import plotly.graph_objects as go

    fig = go.Figure([go.Bar(x=weights.index, y=weights[s], name=s) for s in weights.columns])
    fig.update_layout(title="Weights at each rebalance (held until the next; shorts below zero)",
                      barmode="relative", yaxis_tickformat=".0%")
    return fig


# --- stress tests -------------------------------------------------------------------------------------------

def stress_reports(md: ProjectMetadata, window: RunWindow, inp: Inputs, store, result: ReportResult) -> None:
    import plotly.graph_objects as go
    from scipy.stats import norm

    from quantflow.reports import engine
    from quantflow.reports.render import Page

    cfg = md.project.reports.stress
    invested = inp.weights[inp.weights.abs().sum(axis=1) > 0]  # the newest rebalance that holds something
    if invested.empty:
        result.warnings.append("stress test: every rebalance held only cash: nothing to stress")
        return
    current, as_of = invested.iloc[-1], invested.index[-1].date()
    if as_of != inp.weights.index[-1].date():
        result.warnings.append(f"stress test: the newest rebalance ({inp.weights.index[-1].date()}) holds only "
                               f"cash; the weights of {as_of} are stressed")
    asset_returns = inp.close.pct_change(fill_method=None)
    portfolio = asset_returns.fillna(0.0) @ current.to_numpy()
    market = asset_returns.mean(axis=1).fillna(0.0)
    portfolio, market = portfolio.iloc[1:], market.iloc[1:]
    held = ", ".join(f"{s} {w:.1%}" for s, w in current.items() if abs(w) > 1e-9) or "all cash"

    page = Page(f"{md.name}: historical stress test", f"the weights of {as_of} ({held}) over the price history "
                f"{portfolio.index[0].date()} .. {portfolio.index[-1].date()}")
    spans = {f"worst {cfg.window}-day window #{i + 1}": span
             for i, span in enumerate(engine.worst_windows(portfolio, cfg.window, cfg.worst))}
    crises = engine.covered_crises(portfolio.index)
    spans.update(crises)
    page.note(f"Named crises covered by the data: {', '.join(crises) or 'none'} (of {len(engine.NAMED_CRISES)} "
              "known: the data must span the whole crisis).")
    rows, fig = [], go.Figure()
    for name, (a, b) in spans.items():
        p, m = portfolio.loc[a:b], market.loc[a:b]
        rows.append({"scenario": name, "start": a.date(), "end": b.date(), **engine.window_stats(p, m)})
        path = np.r_[0.0, (1 + p).cumprod().to_numpy() - 1]  # from the window's start, day 0
        fig.add_trace(go.Scatter(x=list(range(len(path))), y=path, name=name))
    fig.update_layout(title="Cumulative return of the current weights in each window", xaxis_title="trading day",
                      yaxis_tickformat=".1%")
    table = pd.DataFrame(rows)
    if len(table):
        bars = go.Figure([go.Bar(x=table["scenario"], y=table["return"], name="portfolio"),
                          go.Bar(x=table["scenario"], y=table["market_return"], name="equal-weight market")])
        bars.update_layout(title="Return over each window", barmode="group", yaxis_tickformat=".0%")
        page.figure(bars)
    page.figure(fig)
    page.table(table)
    result.artifacts["stress_test_historical_url"] = store.put("stress_test_historical_", "html", page.html())
    if len(table):
        result.figures["stress_worst_window_return"] = float(table["return"].min())

    # hypothetical shocks from the trailing year of returns (the whole history when shorter)
    recent = asset_returns.iloc[-252:].dropna(how="all").fillna(0.0)
    mean, cov = recent.mean().to_numpy(), recent.cov().to_numpy()
    w = current.to_numpy()
    rng = np.random.default_rng(cfg.seed)
    page = Page(f"{md.name}: hypothetical stress test", f"the weights of {as_of} ({held}); {cfg.horizon}-day "
                f"horizon, {cfg.simulations:,} draws, covariance of the last {len(recent)} days")
    levels = md.project.reports.var_levels
    fig, rows = go.Figure(), []
    for name, df in (("Gaussian", None), (f"Student-t ({cfg.student_t_df:g} df)", cfg.student_t_df)):
        losses = engine.simulate_losses(w, mean, cov, cfg.horizon, cfg.simulations, rng, df)
        fig.add_trace(go.Histogram(x=losses, name=name, opacity=0.6, histnorm="probability density"))
        for level in levels:
            var, cvar = engine.tail(losses, level)
            rows.append({"scenario": name, "level": level, "var": var, "cvar": cvar})
    fig.update_layout(title=f"Simulated {cfg.horizon}-day portfolio returns", barmode="overlay",
                      xaxis_tickformat=".1%")
    page.heading("Gaussian and Student-t shocks")
    page.figure(fig)
    page.table(pd.DataFrame(rows))
    result.figures.update({f"stress_{r['scenario'].split()[0].lower().replace('-', '_')}_var_{int(r['level'] * 100)}":
                           r["var"] for r in rows})

    page.heading(f"Correlation stress: every correlation {cfg.stressed_correlation:g}")
    stressed = engine.stressed_covariance(cov, cfg.stressed_correlation)
    horizon_vol = {k: float(np.sqrt(w @ c @ w * cfg.horizon)) for k, c in (("observed", cov), ("stressed", stressed))}
    z = {level: -float(norm.ppf(1 - level)) for level in levels}
    corr_rows = [{"covariance": k, f"{cfg.horizon}-day volatility": v,
                  **{f"VaR {level:.0%}": z[level] * v for level in levels}} for k, v in horizon_vol.items()]
    page.table(pd.DataFrame(corr_rows))
    fig = go.Figure(go.Bar(x=list(horizon_vol), y=list(horizon_vol.values())))
    fig.update_layout(title=f"{cfg.horizon}-day portfolio volatility", yaxis_tickformat=".1%")
    page.figure(fig)

    page.heading(f"Single-asset crash: each symbol {cfg.crash:.0%}")
    crash = engine.crash_impacts(w, cov, cfg.crash)
    crash.insert(0, "symbol", list(inp.close.columns))
    fig = go.Figure([go.Bar(x=crash["symbol"], y=crash["direct"], name="direct"),
                     go.Bar(x=crash["symbol"], y=crash["with_co_moves"], name="with expected co-moves")])
    fig.update_layout(title="Portfolio return when one symbol crashes", barmode="group", yaxis_tickformat=".1%")
    page.figure(fig)
    page.table(crash)
    result.figures["stress_worst_single_crash"] = float(crash["with_co_moves"].min())
    result.artifacts["stress_test_hypothetical_url"] = store.put("stress_test_hypothetical_", "html", page.html())


# --- risk ---------------------------------------------------------------------------------------------------

def risk_reports(md: ProjectMetadata, window: RunWindow, inp: Inputs, store, result: ReportResult) -> None:
    import plotly.graph_objects as go

    from quantflow.reports import engine
    from quantflow.reports.render import Page, png

    cfg = md.project.reports
    returns, bench = inp.returns, inp.benchmark
    outputs: dict[str, tuple[Page, bytes, pd.DataFrame]] = {}

    var = engine.var_table(returns, cfg.var_levels)
    page = Page(f"{md.name}: value at risk", "one-day VaR and CVaR of the strategy's daily returns "
                "(positive: a loss fraction)")
    fig = go.Figure(go.Histogram(x=returns, nbinsx=40, name="daily returns"))
    for row in var.itertuples():
        fig.add_vline(x=-row.historical_var, line_dash="dash", annotation_text=f"VaR {row.level:.0%}")
    fig.update_layout(title="Daily returns and historical VaR", xaxis_tickformat=".1%")
    page.figure(fig)
    page.table(var)

    def draw_var(ax):
        ax.hist(returns, bins=40, color="#1f77b4", alpha=0.8)
        for row in var.itertuples():
            ax.axvline(-row.historical_var, color="red", linestyle="--", label=f"VaR {row.level:.0%}")
        ax.set_title("Daily returns and historical VaR")
        ax.legend()
    outputs["var"] = (page, png(draw_var), var)
    for row in var.itertuples():
        result.figures[f"var_{int(row.level * 100)}"] = float(row.historical_var)
        result.figures[f"cvar_{int(row.level * 100)}"] = float(row.historical_cvar)

    equity = inp.equity["strategy"]
    table = engine.drawdowns(equity)
    page = Page(f"{md.name}: drawdowns", "underwater curves and the deepest drawdowns of the strategy")
    fig = go.Figure([go.Scatter(x=inp.equity.index, y=inp.equity[n] / inp.equity[n].cummax() - 1, name=n,
                                fill="tozeroy" if n == "strategy" else None, line={"color": COLORS[n]})
                     for n in COLORS])
    fig.update_layout(title="Drawdown", yaxis_tickformat=".1%")
    page.figure(fig)
    page.table(table)
    underwater = equity / equity.cummax() - 1

    def draw_dd(ax):
        ax.fill_between(underwater.index, underwater, 0, color="#d62728", alpha=0.5)
        ax.set_title("Strategy drawdown")
    outputs["drawdown"] = (page, png(draw_dd), table)
    result.figures["max_drawdown"] = float(underwater.min())

    rolling = engine.rolling_risk(returns, bench, cfg.rolling_window, inp.year_days)
    page = Page(f"{md.name}: rolling risk", f"{cfg.rolling_window}-day rolling volatility (annualized) and beta "
                "to the equal-weight benchmark")
    fig = go.Figure([go.Scatter(x=rolling.index, y=rolling[c], name=c) for c in rolling.columns])
    fig.update_layout(title="Rolling volatility and beta")
    page.figure(fig)

    def draw_rolling(ax):
        for c in rolling.columns:
            ax.plot(rolling.index, rolling[c], label=c)
        ax.set_title(f"{cfg.rolling_window}-day rolling volatility and beta")
        ax.legend()
    outputs["rolling"] = (page, png(draw_rolling), rolling.reset_index(names="date"))
    if rolling["volatility"].notna().any():
        result.figures["rolling_volatility_last"] = float(rolling["volatility"].dropna().iloc[-1])

    asset_returns = inp.close.pct_change(fill_method=None)
    window_days = md.project.portfolio.covariance.window
    contrib = []
    for day, w in inp.weights.iterrows():
        recent = asset_returns.loc[:day].iloc[-window_days:].fillna(0.0)
        share = engine.risk_contributions(w.to_numpy(), recent.cov().to_numpy())
        contrib.append({"date": day, **dict(zip(inp.weights.columns, share))})
    contrib = pd.DataFrame(contrib)
    page = Page(f"{md.name}: risk contributions", "each symbol's share of the portfolio variance at each "
                f"rebalance (covariance of the {window_days} days before it)")
    fig = go.Figure([go.Bar(x=contrib["date"], y=contrib[s], name=s) for s in inp.weights.columns])
    fig.update_layout(title="Risk contributions", barmode="stack", yaxis_tickformat=".0%")
    page.figure(fig)

    def draw_contrib(ax):
        _stacked_bars(ax, contrib.set_index("date"))
        ax.set_title("Risk contributions per rebalance (a hedge contributes below zero)")
    outputs["contributions"] = (page, png(draw_contrib), contrib)

    page = Page(f"{md.name}: dynamic weights", "weights at each rebalance, held until the next")
    page.figure(_weights_figure(inp.weights))

    def draw_weights(ax):
        _stacked_bars(ax, inp.weights)
        ax.set_title("Weights at each rebalance (shorts below zero)")
    outputs["weights"] = (page, png(draw_weights), inp.weights.reset_index(names="date"))

    for kind in RISK_KINDS:
        page, image, table = outputs[kind]
        result.artifacts[f"risk_{kind}_html_url"] = store.put(f"risk_{kind}_", "html", page.html())
        result.artifacts[f"risk_{kind}_png_url"] = store.put(f"risk_{kind}_", "png", image)
        result.artifacts[f"risk_{kind}_csv_url"] = store.put(f"risk_{kind}_", "csv", table.to_csv(index=False).encode())


def _stacked_bars(ax, frame: pd.DataFrame) -> None:
    """Bars per date stacked by column: positive parts up from zero, negative parts down; each bar as wide
    as the typical gap between rebalances (matplotlib's default, 0.8 day, vanishes over years)."""
    import matplotlib.dates as mdates

    days = mdates.date2num(pd.DatetimeIndex(frame.index).to_pydatetime())
    width = 0.9 * float(np.median(np.diff(days))) if len(days) > 1 else 0.8
    up, down = np.zeros(len(frame)), np.zeros(len(frame))
    for column in frame.columns:
        values = frame[column].to_numpy(dtype=float)
        ax.bar(days, values, width=width, bottom=np.where(values >= 0, up, down), label=column)
        up, down = up + np.clip(values, 0, None), down + np.clip(values, None, 0)
    ax.xaxis_date()
    ax.axhline(0, color="black", linewidth=0.8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), ncol=max(1, math.ceil(len(frame.columns) / 20)),
              fontsize="small")


BUILDERS = {"plot": plot_report, "stress_test": stress_reports, "risk": risk_reports}


def run(md: ProjectMetadata, window: RunWindow, *, progress: Progress | None = None,
        report: str) -> ReportResult:
    if report not in BUILDERS:
        raise ValueError(f"report must be one of {', '.join(REPORTS)}; got {report!r}")
    progress = progress or Progress()
    began = time.perf_counter()
    result = ReportResult(STAGE, window, report=report)
    if md.project.reports is None:
        raise StageError(f"{STAGE}: project.reports is not configured")
    progress.begin(1, "reports", f"report {report}")
    store = project_artifacts(md, "reports")
    records, scope = RunRecords(project_lake(md), STAGE), f"{report} {window.start_date}..{window.end_date}"
    inputs = _inputs_key(md, window, report)  # before anything is read
    if window.write_mode == "skip_if_exists" and records.restore(
            scope, inputs, lambda last: artifact_signatures(store, last["artifacts"].values()), result, KEPT_FIGURES):
        result.kept = True
    else:
        inp = load_inputs(md, window)
        if inp is None or inp.weights.empty:
            result.seconds = time.perf_counter() - began
            return result
        BUILDERS[report](md, window, inp, store, result)
        records.save(scope, inputs, artifact_signatures(store, result.artifacts.values()),
                     {f: getattr(result, f) for f in KEPT_FIGURES})
    progress.advance(1)
    progress.detail(f"report {report}: " + ", ".join(u.rsplit("/", 1)[-1] for u in result.artifacts.values())
                    + (" (kept)" if result.kept else ""))
    result.seconds = time.perf_counter() - began
    return result


def _inputs_key(md: ProjectMetadata, window: RunWindow, report: str) -> str:
    """What the window's reports are drawn from: the configuration, the code, the newest trading report (its
    URL and signature), and up to the window's end the weights, daily prices, features and the model's
    predictions of its newest configuration."""
    model, lake = md.project.portfolio.model, project_lake(md)
    backtests = project_artifacts(md, "backtest")
    trading = backtests.latest("trading_report_", "json")
    tables = [WEIGHTS_TABLE, BARS_DAILY_TABLE, FEATURES_TABLE, predictions_table(model)]
    return digest(report, md.project.reports.model_dump_json(), md.project.portfolio.model_dump_json(),
                  md.project.backtest.model_dump_json(),
                  code_version(__package__, "quantflow.compute",
                               libraries=("plotly", "matplotlib", "pandas", "numpy", "scipy")),
                  str(window.start_date), str(window.end_date), list(md.symbols), newest_config(md, model),
                  trading, trading and backtests.newest_signature(trading),
                  partition_signatures(lake, tables, md.symbols, None, window.end_date))
