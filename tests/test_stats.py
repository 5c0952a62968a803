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


def test_static_gap_interpolates_linearly_between_the_neighbours():
    front = [(0.3, 0.80), (0.6, 0.86), (1.0, 0.88)]
    gap = stats.static_gap_points(front, energy=0.45, accuracy=0.84)
    # Halfway between 0.80 and 0.86: 0.83, so +1.00 point.
    assert gap["within_front"]
    assert gap["front_accuracy"] == pytest.approx(0.83)
    assert gap["gap_points"] == pytest.approx(1.0)
    below = stats.static_gap_points(list(reversed(front)), energy=0.8, accuracy=0.85)
    assert below["gap_points"] == pytest.approx(-2.0)  # the front gives 0.87 at 0.8
    at_point = stats.static_gap_points(front, energy=0.6, accuracy=0.86)
    assert at_point["gap_points"] == pytest.approx(0.0)


def test_static_gap_outside_the_front_is_reported_not_extrapolated():
    front = [(0.3, 0.80), (0.6, 0.86)]
    for energy in (0.2, 0.7):
        gap = stats.static_gap_points(front, energy=energy, accuracy=0.9)
        assert gap["gap_points"] is None and gap["front_accuracy"] is None
        assert not gap["within_front"]
        assert "outside" in gap["note"]


def test_static_gap_needs_two_energies():
    with pytest.raises(ValueError, match="two networks"):
        stats.static_gap_points([(0.5, 0.8), (0.5, 0.82)], energy=0.5, accuracy=0.8)
