"""The reports' figures against direct computations: VaR/CVaR, drawdowns, IC, quantiles, risk
contributions, stress scenarios."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from quantflow.reports import engine


def test_var_table_matches_the_definitions():
    r = pd.Series(np.random.default_rng(0).standard_t(4, 5000) * 0.01)
    table = engine.var_table(r, [0.95, 0.99]).set_index("level")
    sorted_r = np.sort(r.to_numpy())
    cut = np.quantile(r, 0.05)
    assert table.loc[0.95, "historical_var"] == pytest.approx(-cut)
    assert table.loc[0.95, "historical_cvar"] == pytest.approx(-sorted_r[sorted_r <= cut].mean())
    mu, sd = r.mean(), r.std(ddof=1)
    assert table.loc[0.99, "parametric_var"] == pytest.approx(-(mu + stats.norm.ppf(0.01) * sd))
    # normal CVaR: the mean of the normal tail below its VaR, checked by integration
    tail = stats.norm(mu, sd).expect(lambda x: x, lb=-np.inf, ub=mu + stats.norm.ppf(0.01) * sd) / 0.01
    assert table.loc[0.99, "parametric_cvar"] == pytest.approx(-tail, rel=1e-6)
    assert (table["historical_cvar"] >= table["historical_var"]).all()


def test_drawdowns_find_depth_dates_and_recovery():
    index = pd.bdate_range("2024-01-01", periods=9)
    equity = pd.Series([100, 110, 99, 88, 110, 120, 108, 114, 115], index=index, dtype=float)
    table = engine.drawdowns(equity)
    first = table.iloc[0]
    assert first["depth"] == pytest.approx(88 / 110 - 1)
    assert (first["peak"], first["trough"], first["recovery"]) == (index[1], index[3], index[4])
    second = table.iloc[1]  # still under water at the end
    assert second["depth"] == pytest.approx(108 / 120 - 1) and pd.isna(second["recovery"])


def test_information_coefficient_is_the_daily_spearman_correlation():
    rng = np.random.default_rng(1)
    index = pd.bdate_range("2024-01-01", periods=30)
    factor = pd.DataFrame(rng.normal(size=(30, 6)), index=index, columns=list("ABCDEF"))
    forward = 0.3 * factor + pd.DataFrame(rng.normal(size=(30, 6)), index=index, columns=factor.columns)
    forward.iloc[3, 2] = np.nan
    ic = engine.information_coefficient(factor, forward)
    for i in (0, 3, 17):
        row = pd.concat([factor.iloc[i], forward.iloc[i]], axis=1).dropna()
        assert ic.iloc[i] == pytest.approx(stats.spearmanr(row.iloc[:, 0], row.iloc[:, 1]).statistic)


def test_quantile_returns_rank_within_each_date():
    index = pd.bdate_range("2024-01-01", periods=2)
    factor = pd.DataFrame([[1, 2, 3, 4], [40, 30, 20, 10]], index=index, columns=list("ABCD"), dtype=float)
    forward = pd.DataFrame([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]], index=index, columns=factor.columns)
    q = engine.quantile_returns(factor, forward, 2).set_index("quantile")
    assert q.loc[1, "mean_forward_return"] == pytest.approx(0.15)  # the two lowest factors each day
    assert q.loc[2, "mean_forward_return"] == pytest.approx(0.35)


def test_ic_uses_forward_returns_only():
    index = pd.bdate_range("2024-01-01", periods=6)
    close = pd.DataFrame({"A": [1, 2, 4, 8, 16, 32]}, index=index, dtype=float)
    fwd = engine.forward_returns(close, 2)
    assert fwd["A"].iloc[0] == pytest.approx(3.0) and fwd["A"].iloc[-2:].isna().all()


def test_risk_contributions_sum_to_one_and_match_the_marginal_definition():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 4))
    cov = a @ a.T / 100
    w = np.array([0.4, -0.1, 0.3, 0.4])
    rc = engine.risk_contributions(w, cov)
    assert rc.sum() == pytest.approx(1.0)
    eps = 1e-7  # w_i * d(sigma^2)/dw_i / (2 sigma^2)
    var = w @ cov @ w
    for i in range(4):
        bumped = w.copy()
        bumped[i] += eps
        assert rc[i] == pytest.approx(w[i] * (bumped @ cov @ bumped - var) / eps / (2 * var), rel=1e-4)


def test_worst_windows_do_not_overlap_and_are_the_worst():
    rng = np.random.default_rng(3)
    r = pd.Series(rng.normal(0, 0.01, 300), index=pd.bdate_range("2020-01-01", periods=300))
    r.iloc[100:105] = -0.05
    spans = engine.worst_windows(r, 5, 3)
    assert spans[0] == (r.index[100], r.index[104])
    starts = sorted(r.index.get_loc(a) for a, _ in spans)
    assert all(b - a >= 5 for a, b in zip(starts, starts[1:]))


def test_covered_crises_need_the_whole_span():
    index = pd.bdate_range("2019-06-01", "2020-12-31")
    assert list(engine.covered_crises(index)) == ["COVID-19 crash (March 2020)"]


def test_shocks_have_the_covariance_they_claim():
    rng = np.random.default_rng(4)
    cov = np.array([[1e-4, 3e-5], [3e-5, 4e-4]])
    w = np.array([0.6, 0.4])
    for df in (None, 5.0):
        losses = engine.simulate_losses(w, np.zeros(2), cov, 1, 200_000, rng, df)
        assert losses.var() == pytest.approx(w @ cov @ w, rel=0.03)
    normal = engine.simulate_losses(w, np.zeros(2), cov, 1, 200_000, rng)
    heavy = engine.simulate_losses(w, np.zeros(2), cov, 1, 200_000, rng, 4.0)
    assert engine.tail(heavy, 0.999)[0] > engine.tail(normal, 0.999)[0]  # heavier tails, same variance


def test_correlation_stress_and_crash_impacts():
    cov = np.array([[4e-4, 1e-4], [1e-4, 1e-4]])
    stressed = engine.stressed_covariance(cov, 0.9)
    assert np.diag(stressed) == pytest.approx(np.diag(cov))
    assert stressed[0, 1] == pytest.approx(0.9 * 0.02 * 0.01)
    impact = engine.crash_impacts(np.array([0.5, 0.5]), cov, -0.3)
    assert impact.loc[0, "direct"] == pytest.approx(-0.15)
    # B co-moves with A by beta = cov / var(A) = 0.25
    assert impact.loc[0, "with_co_moves"] == pytest.approx(0.5 * -0.3 + 0.5 * 0.25 * -0.3)


def test_ic_decay_sees_the_future_factor_and_not_the_past_one():
    rng = np.random.default_rng(5)
    index = pd.bdate_range("2024-01-01", periods=200)
    close = pd.DataFrame(100 * np.exp(np.cumsum(rng.normal(0, 0.01, (200, 8)), axis=0)), index=index,
                         columns=[f"S{i}" for i in range(8)])
    oracle = engine.forward_returns(close, 5)  # knows the next 5 days: IC 1 at horizon 5
    past = close / close.shift(5) - 1  # the last 5 days of a random walk: no information
    table = engine.ic_decay(oracle, close, [5]).iloc[0]
    assert table["mean_ic"] == pytest.approx(1.0)
    assert abs(engine.ic_decay(past, close, [5]).iloc[0]["mean_ic"]) < 0.1
