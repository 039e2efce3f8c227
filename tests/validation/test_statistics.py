"""PSR, DSR, MinTRL and PBO: the papers' numerical examples, identities, and independent computations."""

from __future__ import annotations

from math import sqrt

import numpy as np
import pytest
from scipy.stats import norm

from quantflow.validation import (
    deflated_sharpe_ratio,
    expected_max_sharpe,
    min_track_record_length,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    psr_from_returns,
    sharpe_ratio,
)
from tests.validation.reference import pbo_loops


def test_deflated_sharpe_ratio_reproduces_bailey_lopez_de_prado_2014():
    """Section 4 of "The Deflated Sharpe Ratio": SR 2.5 annualized over 5 years of daily returns (T = 1,250),
    skew -3, kurtosis 10, after N = 100 trials whose annualized Sharpe ratios have variance 1/2:
    SR0 = 0.1132 per day and DSR = 0.9004."""
    sr, var = 2.5 / sqrt(250), 0.5 / 250  # per day, as the paper converts them
    assert expected_max_sharpe(100, var) == pytest.approx(0.1132, abs=5e-5)
    assert deflated_sharpe_ratio(sr, 1250, -3, 10, 100, var) == pytest.approx(0.9004, abs=5e-5)
    # the same inputs annualized are a different (wrong) question: the units matter
    assert deflated_sharpe_ratio(2.5, 1250, -3, 10, 100, 0.5) != pytest.approx(0.9004, abs=0.01)


def test_psr_reproduces_the_sharpe_ratio_efficient_frontier_example():
    """Bailey and López de Prado (2012), section 3: two years of monthly returns (T = 24) with a monthly
    Sharpe ratio of 0.458 (1.59 annualized), skew -2.448 and kurtosis 10.164 (not in excess): PSR(0) = 0.982
    assuming normal returns, 0.913 with those moments, and 0.953 with three years (T = 36)."""
    assert probabilistic_sharpe_ratio(0.458, 24) == pytest.approx(0.982, abs=5e-4)
    assert probabilistic_sharpe_ratio(0.458, 24, -2.448, 10.164) == pytest.approx(0.913, abs=5e-4)
    assert probabilistic_sharpe_ratio(0.458, 36, -2.448, 10.164) == pytest.approx(0.953, abs=1e-3)  # 0.9535
    # kurtosis taken as excess kurtosis would be another (wrong) answer
    assert probabilistic_sharpe_ratio(0.458, 24, -2.448, 10.164 + 3) != pytest.approx(0.913, abs=5e-3)


def test_min_track_record_length_reproduces_the_sharpe_ratio_efficient_frontier_examples():
    """Bailey and López de Prado (2012), section 5 and the authors' PSR.py: an annualized Sharpe ratio of 2
    against a benchmark of 1 at 95% needs 2.73 years of normal daily returns, 2.83 of weekly and 3.24 of
    monthly returns; with the monthly skew -0.72 and kurtosis 5.78 of hedge-fund indices, 59.895 months
    (4.99 years). MinTRL counts observations, at the returns' own frequency."""
    for per_year, years in ((250, 2.73), (52, 2.83), (12, 3.24)):
        n = min_track_record_length(2 / sqrt(per_year), benchmark=1 / sqrt(per_year), alpha=0.05)
        assert n / per_year == pytest.approx(years, abs=5e-3), per_year
    months = min_track_record_length(2 / sqrt(12), -0.72, 5.78, benchmark=1 / sqrt(12), alpha=0.05)
    assert months == pytest.approx(59.895, abs=5e-4) and months / 12 == pytest.approx(4.99, abs=5e-3)
    assert probabilistic_sharpe_ratio(2 / sqrt(12), months, -0.72, 5.78, 1 / sqrt(12)) == pytest.approx(0.95)


def test_psr_is_the_normal_cdf_of_the_sharpe_z_score():
    # normal returns (skew 0, kurtosis 3): z = (SR - SR*) sqrt(T - 1) / sqrt(1 + SR^2 / 2)
    sr, t = 0.1, 500
    z = sr * sqrt(t - 1) / sqrt(1 + sr**2 / 2)
    assert probabilistic_sharpe_ratio(sr, t) == pytest.approx(norm.cdf(z), rel=1e-12)
    # negative skew and fat tails lower the confidence in the same Sharpe ratio
    assert probabilistic_sharpe_ratio(sr, t, skew=-2, kurtosis=9) < probabilistic_sharpe_ratio(sr, t)
    assert probabilistic_sharpe_ratio(sr, t, benchmark=sr) == 0.5


def test_psr_from_returns_uses_per_period_moments():
    rng = np.random.default_rng(1)
    r = rng.standard_t(5, 2000) * 0.01 + 0.0008
    sr = r.mean() / r.std(ddof=1)
    m2, m3, m4 = ((r - r.mean()) ** 2).mean(), ((r - r.mean()) ** 3).mean(), ((r - r.mean()) ** 4).mean()
    skew, kurt = m3 / m2**1.5, m4 / m2**2  # population moments, kurtosis not in excess
    expected = norm.cdf(sr * sqrt(len(r) - 1) / sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    assert psr_from_returns(r) == pytest.approx(expected, rel=1e-10)


def test_min_track_record_length_is_where_psr_reaches_the_confidence():
    for sr, skew, kurt, bench in [(0.1, 0, 3, 0), (0.15, -1.5, 8, 0.05), (0.08, 0.5, 4, 0.0)]:
        n = min_track_record_length(sr, skew, kurt, bench, alpha=0.05)
        assert probabilistic_sharpe_ratio(sr, n, skew, kurt, bench) == pytest.approx(0.95, abs=1e-12)
    assert min_track_record_length(0.05, benchmark=0.05) == float("inf")
    # one year of daily returns at annualized SR 1 (normal): 1 + (1 + SR^2/2) (1.645 / SR)^2 days
    sr = 1 / sqrt(252)
    assert min_track_record_length(sr) == pytest.approx(1 + (1 + sr**2 / 2) * (norm.ppf(0.95) / sr) ** 2)


def test_expected_max_sharpe_grows_with_trials_and_matches_a_monte_carlo():
    rng = np.random.default_rng(0)
    for n, tolerance in ((10, 0.03), (100, 0.01)):  # an asymptotic approximation: closer for many trials
        sims = rng.standard_normal((20000, n)).max(axis=1) * 0.05
        assert expected_max_sharpe(n, 0.05**2) == pytest.approx(sims.mean(), rel=tolerance)
    assert expected_max_sharpe(1, 0.3) == 0.0


def test_pbo_equals_a_loop_implementation_and_its_extremes():
    rng = np.random.default_rng(7)
    noise = rng.standard_normal((480, 12)) * 0.01
    ours = probability_of_backtest_overfitting(noise, n_blocks=8)
    assert ours.n_combinations == 70 and ours.n_trials == 12
    assert ours.pbo == pytest.approx(pbo_loops(noise, 8), abs=0)
    generic = probability_of_backtest_overfitting(noise, n_blocks=8, metric=lambda r: sharpe_ratio(r))
    np.testing.assert_allclose(generic.logits, ours.logits, rtol=1e-9)  # block sums = the direct metric
    # one trial better everywhere: never overfit
    skilled = noise.copy()
    skilled[:, 3] += 0.02
    assert probability_of_backtest_overfitting(skilled, n_blocks=8).pbo == 0.0
    # a trial that wins where the others lose and loses elsewhere: in-sample winner is out-of-sample loser
    t = np.arange(480)
    regime = np.where((t // 60) % 2 == 0, 1.0, -1.0)
    flip = rng.standard_normal((480, 6)) * 0.001
    flip[:, 0] += 0.01 * regime  # best in half the blocks, worst in the others
    flip[:, 1:] -= 0.0005 * regime[:, None]
    assert probability_of_backtest_overfitting(flip, n_blocks=8).pbo > 0.5


def test_pbo_of_a_hand_worked_cscv_example():
    """The paper gives no reproducible matrix, so a 4-block, 3-trial case worked by hand from its definitions
    (metric: the mean; blocks' means below; 6 = C(4, 2) splits, in itertools order):
    IS {0,1} picks A (4 vs 1.5, 1), OOS {2,3} A -0.5 B 4 C 2: rank 1 -> w = 1/4, logit ln(1/3);
    IS {0,2} picks A (2.5), OOS {1,3} A 1 B 3.5 C 1.5: rank 1 -> ln(1/3);
    IS {0,3} picks B (3), OOS {1,2} A 1.5 B 2.5 C 0.5: rank 3 -> w = 3/4, ln 3;
    IS {1,2} picks B (2.5), OOS {0,3} A 2 B 3 C 2.5: rank 3 -> ln 3;
    IS {1,3} picks B (3.5), OOS {0,2} A 2.5 B 2 C 1.5: rank 2 -> w = 1/2, logit 0 (counts as overfit);
    IS {2,3} picks B (4), OOS {0,1} A 4 B 1.5 C 1: rank 2 -> 0.  PBO = 4/6; one OOS loss in 6."""
    blocks = np.array([[5, 1, 2], [3, 2, 0], [0, 3, 1], [-1, 5, 3]], dtype=float)
    returns = np.repeat(blocks, 2, axis=0)  # two periods per block
    result = probability_of_backtest_overfitting(returns, n_blocks=4, metric=lambda r: r.mean(axis=0))
    np.testing.assert_allclose(result.logits, np.log([1 / 3, 1 / 3, 3, 3, 1, 1]), atol=1e-12)
    assert result.pbo == pytest.approx(4 / 6) and result.prob_oos_loss == pytest.approx(1 / 6)
    assert result.n_combinations == 6 and result.n_trials == 3


def test_pbo_of_pure_noise_is_about_one_half():
    rng = np.random.default_rng(11)
    values = [probability_of_backtest_overfitting(rng.standard_normal((320, 20)), n_blocks=8).pbo
              for _ in range(20)]
    assert 0.35 < np.mean(values) < 0.65


def test_pbo_names_bad_shapes():
    with pytest.raises(ValueError, match="N >= 2 trials"):
        probability_of_backtest_overfitting(np.zeros((100, 1)))
    with pytest.raises(ValueError, match="even number"):
        probability_of_backtest_overfitting(np.zeros((100, 3)), n_blocks=5)
    with pytest.raises(ValueError, match="too few"):
        probability_of_backtest_overfitting(np.zeros((20, 3)), n_blocks=16)


def test_sharpe_ratio_units():
    r = np.array([0.01, -0.005, 0.002, 0.007])
    assert sharpe_ratio(r) == pytest.approx(r.mean() / r.std(ddof=1))
    assert sharpe_ratio(r, 252) == pytest.approx(r.mean() / r.std(ddof=1) * sqrt(252))
