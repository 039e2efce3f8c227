"""The ``project.portfolio``, ``project.backtest`` and ``project.reports`` sections: a model's out-of-sample
predictions -> target weights (riskfolio-lib) -> a vectorbt backtest -> the plot, stress and risk reports."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from quantflow.metadata.schema.base import MetadataModel

PORTFOLIO_METHODS = ("mean_variance", "risk_parity", "hrp", "herc", "nco")
OBJECTIVES = ("Sharpe", "MinRisk", "Utility", "MaxRet")
# riskfolio-lib's risk measures (codes as riskfolio names them); HRP/HERC/NCO take the same codes
RISK_MEASURES = ("MV", "MAD", "MSV", "FLPM", "SLPM", "CVaR", "EVaR", "WR", "MDD", "ADD", "CDaR", "EDaR", "UCI")
# riskfolio's covariance estimators (``method_cov``): hist = sample covariance
COVARIANCE_ESTIMATORS = ("hist", "ledoit", "oas", "shrunk", "gl", "ewma1", "ewma2", "jlogo", "fixed", "spectral",
                         "shrink")


class CovarianceConfig(MetadataModel):
    """Covariance of daily returns over a trailing window ending at the rebalance date (inclusive)."""

    estimator: Literal[COVARIANCE_ESTIMATORS] = Field(
        "ledoit", description="riskfolio method_cov: hist (sample), ledoit (Ledoit-Wolf), oas, shrunk, gl, ewma1, ...")
    window: int = Field(60, ge=5, description="trading days of returns before each rebalance")


class RebalanceConfig(MetadataModel):
    """When weights are recomputed: at the close of the first trading day of each week or month (knowable
    at that close, unlike 'the last day of the week'), or every N trading days."""

    every: Literal["weekly", "monthly"] | int = Field("weekly", description="weekly, monthly or N trading days")

    @field_validator("every")
    @classmethod
    def _positive(cls, every):
        if isinstance(every, int) and every < 1:
            raise ValueError("every: give weekly, monthly or a number of trading days >= 1")
        return every


class PortfolioConfig(MetadataModel):
    """Target weights at each rebalance date from one model's predictions (group ``portfolio``)."""

    model: str = Field(description="the model of project.models whose predictions (pred_<model>) drive the weights")
    method: Literal[PORTFOLIO_METHODS] = Field("hrp", description="mean_variance, risk_parity, hrp, herc or nco")
    objective: Literal[OBJECTIVES] = Field("Sharpe", description="mean_variance and nco: the objective over "
                                           "the signals' expected returns")
    risk_measure: Literal[RISK_MEASURES] = Field("MV", description="riskfolio's risk measure code")
    risk_aversion: float = Field(2.0, gt=0, description="objective Utility: the risk aversion")
    linkage: Literal["single", "complete", "average", "ward"] = Field("ward", description="hrp, herc, nco: the "
                                                                      "hierarchical clustering's linkage")
    covariance: CovarianceConfig = CovarianceConfig()
    rebalance: RebalanceConfig = RebalanceConfig()
    expected_returns: Literal["signal_x_volatility", "prediction"] = Field(
        "signal_x_volatility", description="signal_x_volatility: the prediction (expected label in [-1, 1]) "
        "times the asset's trailing daily volatility; prediction: the prediction is a return already "
        "(a regression on ret)")
    signal_max_age: int = Field(5, ge=1, description="trading days a prediction stays usable (1: its own date only)")
    min_signal: float = Field(0.0, ge=0, description="a symbol is held only when |signal| > min_signal (long "
                              "only: signal > min_signal); the methods that take no expected returns allocate "
                              "among the held symbols")
    long_only: bool = Field(True, description="false: long-short (shorts where the signal is negative)")
    max_short: float = Field(0.3, ge=0, description="long-short mean_variance: the shorts' total (net 1, "
                             "gross at most 1 + 2 * max_short)")
    max_weight: float = Field(0.4, gt=0, le=1, description="the largest |weight| of one symbol")
    max_turnover: float | None = Field(None, gt=0, description="one-way turnover per rebalance, "
                                       "0.5 * sum |w_new - w_drifted|; the move is scaled down to fit")
    cash_buffer: float = Field(0.02, ge=0, lt=1, description="share of the portfolio kept in cash")


class BacktestSweep(MetadataModel):
    """Execution parameters varied together in one vectorbt call (every combination, ranked by Sharpe)."""

    fees: list[float] | None = None
    slippage: list[float] | None = None
    execution_lag: list[int] | None = None
    gross: list[float] | None = Field(None, description="scale of the weights (1: as optimized)")

    def grid(self, base: BacktestConfig) -> list[dict[str, float]]:
        import itertools

        axes = {"fees": self.fees or [base.fees], "slippage": self.slippage or [base.slippage],
                "execution_lag": self.execution_lag or [base.execution_lag], "gross": self.gross or [1.0]}
        return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


class BacktestConfig(MetadataModel):
    """vectorbt ``Portfolio.from_orders`` driven by the target weights (group ``backtest``)."""

    fees: float = Field(0.0005, ge=0, lt=1, description="proportional fee per trade (0.0005 = 5 bps)")
    slippage: float = Field(0.0005, ge=0, lt=1, description="price moved against each order, proportionally")
    execution_lag: int = Field(1, ge=0, description="bars between the decision (a rebalance date's close) and "
                               "the orders; 0 trades at the decision's own bar (look-ahead with price: open)")
    execution_price: Literal["open", "close"] = Field("open", description="the execution bar's open or close")
    init_cash: float = Field(1_000_000.0, gt=0)
    year_days: int = Field(252, ge=1, description="trading days per year, for annualized figures")
    sweep: BacktestSweep | None = None

    @model_validator(mode="after")
    def _no_lookahead(self) -> BacktestConfig:
        lags = [self.execution_lag, *((self.sweep.execution_lag or []) if self.sweep else [])]
        if any(lag < 0 for lag in lags):
            raise ValueError(f"execution_lag {min(lags)} trades before the decision: use lags >= 1")
        if 0 in lags and self.execution_price == "open":
            raise ValueError("execution_lag 0 with execution_price open trades at the open of the bar whose "
                             "close made the decision: look-ahead; use execution_lag >= 1 or price close")
        if self.sweep:
            for name, low, high in (("fees", 0, 1), ("slippage", 0, 1), ("gross", 1e-9, 1)):
                bad = [x for x in getattr(self.sweep, name) or [] if not low <= x <= high]
                if bad:
                    raise ValueError(f"sweep.{name}: {bad} outside [{low:g}, {high:g}]"
                                     + (" (no leverage: the strategy trades its own cash)" if name == "gross" else ""))
        return self


class StressConfig(MetadataModel):
    window: int = Field(20, ge=2, description="trading days of the historical windows")
    worst: int = Field(3, ge=1, description="worst non-overlapping windows of the current portfolio")
    simulations: int = Field(20_000, ge=1_000, description="draws of the Gaussian and Student-t shocks")
    horizon: int = Field(10, ge=1, description="days of the hypothetical shocks")
    student_t_df: float = Field(4.0, gt=2)
    stressed_correlation: float = Field(0.9, ge=0, lt=1, description="every pairwise correlation under stress")
    crash: float = Field(-0.3, gt=-1, lt=0, description="the single-asset crash's return")
    seed: int = 0


class ReportsConfig(MetadataModel):
    """The plot, stress-test and risk reports (group ``reports``): self-contained HTML, PNG and CSV."""

    factors: list[str] | None = Field(None, description="ft_features columns in the factor report (default: the "
                                      "first six features of the portfolio's model)")
    ic_horizons: list[int] = Field([1, 2, 5, 10, 20], description="forward days of the IC decay")
    quantiles: int = Field(5, ge=2, description="factor quantiles (at most the number of symbols)")
    var_levels: list[float] = Field([0.95, 0.99], description="confidence levels of VaR and CVaR")
    rolling_window: int = Field(60, ge=5, description="trading days of rolling volatility and beta")
    stress: StressConfig = StressConfig()

    @field_validator("var_levels")
    @classmethod
    def _levels(cls, levels: list[float]) -> list[float]:
        if not levels or any(not 0.5 < x < 1 for x in levels):
            raise ValueError("var_levels: confidence levels between 0.5 and 1, e.g. [0.95, 0.99]")
        return levels
