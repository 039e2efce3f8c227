"""Groups ``portfolio``, ``backtest`` and ``reports``: thin adapters over their stage runners.

``pf_weights`` depends on the model's predictions and on its validation asset, whose blocking overfitting
gates (``project.validation.blocking``) stop the portfolio of a model that failed them; ``trading_report``
on ``pf_weights``; each report asset on ``trading_report``. The reports' URLs and key figures (Sharpe, max
drawdown, VaR, ...) are materialization metadata, so the UI plots them across runs."""

import dagster as dg

from quantflow.metadata.manager import ProjectMetadata
from quantflow.pipeline.config import BacktestRunConfig, PortfolioRunConfig, ReportsRunConfig
from quantflow.pipeline.dagster.metadata import frame_preview, stage_metadata
from quantflow.pipeline.dagster.reporting import REPORTER_KEY, call_stage
from quantflow.storage.tables import BARS_DAILY_TABLE, FEATURES_TABLE, WEIGHTS_TABLE, predictions_table

TRADING_REPORT = "trading_report"
REPORT_ASSETS = {"plot": "report_plot", "stress_test": "report_stress_test", "risk": "report_risk"}


def build_portfolio_assets(md: ProjectMetadata) -> list[dg.AssetsDefinition]:
    cfg = md.project.portfolio
    if cfg is None:
        return []

    @dg.asset(name=WEIGHTS_TABLE, group_name="portfolio", kinds={"riskfolio", "parquet"},
              deps=[dg.AssetKey(predictions_table(cfg.model)), dg.AssetKey(f"validation_{cfg.model}"),
                    dg.AssetKey(BARS_DAILY_TABLE)],
              required_resource_keys={REPORTER_KEY},
              description=f"Target weights ({cfg.method}, rebalanced {cfg.rebalance.every}) from the out-of-sample "
                          f"predictions of model {cfg.model} (lake table {WEIGHTS_TABLE}).")
    def pf_weights(context: dg.AssetExecutionContext, config: PortfolioRunConfig):
        from quantflow.portfolio import runner  # at run time: riskfolio and cvxpy stay out

        window = config.window(md.symbols)
        result = call_stage(context, md, WEIGHTS_TABLE, lambda progress: runner.run(md, window, progress=progress))
        return dg.MaterializeResult(metadata=stage_metadata(result, [WEIGHTS_TABLE]))

    return [pf_weights]


def build_backtest_assets(md: ProjectMetadata) -> list[dg.AssetsDefinition]:
    if md.project.backtest is None or md.project.portfolio is None:
        return []

    @dg.asset(name=TRADING_REPORT, group_name="backtest", kinds={"vectorbt"},
              deps=[dg.AssetKey(WEIGHTS_TABLE), dg.AssetKey(BARS_DAILY_TABLE)],
              required_resource_keys={REPORTER_KEY},
              description="vectorbt backtest of pf_weights against equal-weight and buy-and-hold benchmarks: "
                          "metrics, equity curve, orders and the sweep's leaderboard (blob store backtest/).")
    def trading_report(context: dg.AssetExecutionContext, config: BacktestRunConfig):
        from quantflow.backtest import runner  # at run time: vectorbt stays out

        window = config.window(md.symbols)
        result = call_stage(context, md, TRADING_REPORT, lambda progress: runner.run(md, window, progress=progress))
        meta = stage_metadata(result, [])
        if result.leaderboard is not None:
            import polars as pl

            meta["leaderboard"] = frame_preview(pl.from_pandas(result.leaderboard.reset_index()), rows=10)
        return dg.MaterializeResult(metadata=meta)

    return [trading_report]


def _report_asset(md: ProjectMetadata, report: str) -> dg.AssetsDefinition:
    name = REPORT_ASSETS[report]
    deps = [dg.AssetKey(TRADING_REPORT)]
    if report == "plot":
        deps += [dg.AssetKey(FEATURES_TABLE), dg.AssetKey(predictions_table(md.project.portfolio.model))]

    @dg.asset(name=name, group_name="reports", kinds={"plotly", "html"}, deps=deps,
              required_resource_keys={REPORTER_KEY},
              description=f"The {report.replace('_', ' ')} report of the backtested strategy (blob store reports/).")
    def report_asset(context: dg.AssetExecutionContext, config: ReportsRunConfig):
        from quantflow.reports import runner

        window = config.window(md.symbols)
        result = call_stage(context, md, name, lambda progress: runner.run(md, window, progress=progress,
                                                                          report=report))
        return dg.MaterializeResult(metadata=stage_metadata(result, []))

    return report_asset


def build_reports_assets(md: ProjectMetadata) -> list[dg.AssetsDefinition]:
    if md.project.reports is None or md.project.backtest is None or md.project.portfolio is None:
        return []
    return [_report_asset(md, report) for report in REPORT_ASSETS]
