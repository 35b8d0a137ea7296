"""gemv_fixed_cost's arithmetic: the K values it times and the line it fits (the timing is GPU)."""

from __future__ import annotations

import pytest

from bench.gemv_fixed_cost import fit_launch, fit_line, k_values


def test_fit_line_recovers_a_fixed_cost_and_a_rate():
    # 6 us per launch plus bytes at 3.45 TB/s (3.45e6 bytes per us)
    xs = [10e6, 20e6, 40e6, 77e6]
    ys = [6.0 + x / 3.45e6 for x in xs]
    fixed, slope = fit_line(xs, ys)
    assert fixed == pytest.approx(6.0)
    assert 1 / slope == pytest.approx(3.45e6)


def test_fit_launch_reports_microseconds_and_bytes_per_second():
    nbytes = [10e6, 20e6, 40e6]
    fixed, rate = fit_launch(nbytes, [6.0 + b / 3.45e12 * 1e6 for b in nbytes])
    assert fixed == pytest.approx(6.0)
    assert rate == pytest.approx(3.45e12)


def test_fit_line_needs_two_distinct_points():
    with pytest.raises(ValueError, match="two distinct"):
        fit_line([5.0, 5.0], [1.0, 2.0])


@pytest.mark.parametrize("k, split_k", [(5120, 1), (5120, 4), (13824, 9), (5120, 8)])
def test_k_values_keep_whole_chunks_per_split_and_the_real_k(k, split_k):
    ks = k_values(k, split_k)
    assert ks[-1] == k and len(ks) >= 3
    assert all(v % (128 * split_k) == 0 for v in ks if v != k)
    assert ks == sorted(set(ks)) and ks[0] > 0
