"""Tests of tools/stats.py: Student-t quantiles, confidence intervals, Pareto fronts."""

import math

import pytest

from tools import stats


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (19, 2.0930), (100, 1.9840)])
def test_t_quantile_matches_tables(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_is_symmetric_and_checks_arguments():
    assert stats.t_quantile(0.025, 7) == pytest.approx(-stats.t_quantile(0.975, 7), abs=1e-6)
    assert stats.t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="p must be in"):
        stats.t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df must be"):
        stats.t_quantile(0.9, 0)


def test_mean_confidence_interval():
    ci = stats.mean_confidence_interval([0.90, 0.92, 0.91, 0.93], level=0.95)
    std = math.sqrt(sum((v - 0.915) ** 2 for v in [0.90, 0.92, 0.91, 0.93]) / 3)
    assert ci["mean"] == pytest.approx(0.915)
    assert ci["std"] == pytest.approx(std)
    assert ci["half_width"] == pytest.approx(3.1824 * std / 2, rel=1e-4)
    assert ci["low"] < ci["mean"] < ci["high"]
    one = stats.mean_confidence_interval([0.5])
    assert one["mean"] == 0.5 and one["low"] is None
    with pytest.raises(ValueError, match="empty"):
        stats.mean_confidence_interval([])


def test_pareto_front_keeps_the_undominated_points_sorted_by_x():
    points = [(0.1, 0.9), (0.5, 0.8), (0.05, 0.85), (0.5, 0.7), (0.7, 0.6), (0.7, 0.6)]
    # (0.05, 0.85) is dominated by (0.1, 0.9); (0.5, 0.7) by (0.5, 0.8); equal points are both kept.
    assert stats.pareto_front(points) == [0, 1, 4, 5]
