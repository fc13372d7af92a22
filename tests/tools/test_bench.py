"""`liqwatch bench kernels` at a small size: it runs, its three implementations agree (it asserts that itself),
and its figures describe the population it built. (The figures themselves are for the README, not for tests.)"""

from liqwatch.tools import bench


def test_bench_kernels_runs_on_a_small_population():
    out = bench.kernels(3_000, repeat=1, reference_sample=300)
    assert out["accounts"] == 3_000
    assert 2.5 < out["positions_per_account"] < 3.5 and 1.5 < out["collateral_per_account"] < 2.5
    assert out["reference_sample"] == 300
    assert out["health_ms"] > 0 and out["cascade_ms"] > 0 and out["bytes_per_account"] > 0
    # the policy run does what it names: partial steps, and deleveraged accounts from the empty fund
    assert out["cascade_policy"]["partial"] > 0 and out["cascade_policy"]["deleveraged"] > 0
    assert out["cascade_stress"]["liquidated"] > 0 and out["cascade_policy_ms"] > 0
    assert out["admit_ticks_us"] > 0 and out["admit_ticks_decoder_us"] > 0  # (both paths' rows equal: asserted)
