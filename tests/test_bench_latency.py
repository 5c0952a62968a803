"""Tests of tools/bench_latency.py's paired latency ratio (its flags: test_export_tool.py)."""

import pytest

from tools.bench_latency import paired_ratio


def _cells(per_round_chunk):
    """{(round, chunk): {image: seconds}} from {(round, chunk): [seconds, ...]}."""
    return {key: {10 * key[1] + i: t for i, t in enumerate(times)} for key, times in per_round_chunk.items()}


def test_paired_ratio_cancels_load_that_hits_both_alike():
    base, variant = {}, {}
    for r, load in enumerate((1.0, 1.6, 0.9)):  # the machine's load drifts between rounds
        for c in range(4):
            base[(r, c)] = [load * 1e-3] * 5
            variant[(r, c)] = [load * 1.04e-3] * 5
    ratio, (low, high), rounds = paired_ratio(_cells(variant), _cells(base))
    assert ratio == pytest.approx(1.04)
    assert (low, high) == (pytest.approx(1.04), pytest.approx(1.04))
    assert rounds == 3


def test_paired_ratio_is_the_ratio_of_mean_latencies_when_chunks_differ():
    # A policy that skips much in chunk 0 (ratio 0.3) and nothing in chunk 1
    # (ratio 1.0), where the baseline takes twice as long per image in chunk 1.
    base = {(r, c): [1e-3 * (c + 1)] * 4 for r in range(3) for c in range(2)}
    variant = {(r, 0): [0.3e-3] * 4 for r in range(3)}
    variant.update({(r, 1): [2e-3] * 4 for r in range(3)})
    ratio, _, _ = paired_ratio(_cells(variant), _cells(base))
    assert ratio == pytest.approx((0.3 * 4 + 2 * 4) / (1 * 4 + 2 * 4))


def test_paired_ratio_ignores_a_stall_in_one_round_and_reports_it_in_the_range():
    base = {(r, c): [1e-3] * 4 for r in range(5) for c in range(3)}
    variant = {(r, c): [1.02e-3] * 4 for r in range(5) for c in range(3)}
    variant[(2, 1)] = [5e-3] * 4  # the variant stalled once
    ratio, (low, high), _ = paired_ratio(_cells(variant), _cells(base))
    assert ratio == pytest.approx(1.02)
    assert low == pytest.approx(1.02) and high > 2.0


def test_paired_ratio_uses_only_images_both_timed():
    base = _cells({(0, 0): [1e-3, 1e-3, 1e-3]})
    oracle = {(0, 0): {1: 0.5e-3}}  # covers image 1 only
    assert paired_ratio(oracle, base)[0] == pytest.approx(0.5)
    assert paired_ratio({(0, 0): {7: 1e-3}}, base) is None
