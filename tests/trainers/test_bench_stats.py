"""The statistics of `agentgym bench algos` (benchmarks/stats.py) against known values: Student t
quantiles from the printed tables, t intervals, the paired t-test and the exact sign-flip test."""

from __future__ import annotations

import math

import pytest

from agentgym.benchmarks.algos import aggregate, final_markdown, ordering_markdown, parse_compare
from agentgym.benchmarks.stats import mean_ci, paired, sign_flip_p, t_cdf, t_quantile, verdict


@pytest.mark.parametrize(
    ("df", "want"),
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (29, 2.045), (120, 1.980)],
)
def test_t_quantile_matches_the_printed_table(df, want):
    assert t_quantile(0.975, df) == pytest.approx(want, abs=5e-4)
    assert t_quantile(0.025, df) == pytest.approx(-want, abs=5e-4)


def test_t_cdf_known_values():
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    assert t_cdf(2.0, 5) == pytest.approx(0.949030, abs=1e-6)
    assert t_cdf(-2.0, 5) == pytest.approx(1 - 0.949030, abs=1e-6)


def test_mean_ci_three_samples():
    ci = mean_ci([1.0, 2.0, 3.0])
    half = t_quantile(0.975, 2) * 1.0 / math.sqrt(3)
    assert half == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert ci["mean"] == 2.0 and ci["std"] == 1.0 and ci["n"] == 3
    assert ci["half"] == pytest.approx(half)
    assert (ci["lo"], ci["hi"]) == pytest.approx((2.0 - half, 2.0 + half))
    one = mean_ci([0.4])  # one seed: no spread, no interval
    assert one == {"mean": 0.4, "std": 0.0, "n": 1, "lo": None, "hi": None, "half": None}


def test_sign_flip_exact_values():
    assert sign_flip_p([0.1, 0.2, 0.3]) == (2 / 8, True)  # only all-+ and all-- reach |sum|
    # [1, 1, -1]: |sum| = 1; assignments with |sum| >= 1 are all 8 (sums are odd): p = 1.
    assert sign_flip_p([1.0, 1.0, -1.0]) == (1.0, True)
    # [3, 1, 1, 1]: |sum| 6; sums >= 6 in absolute value: +3 with all three 1s of one sign
    # (+3+3 = 6) or -3 with -3 (= -6): 2 of 16.
    assert sign_flip_p([3.0, 1.0, 1.0, 1.0]) == (2 / 16, True)
    assert sign_flip_p([0.0, 0.0]) == (1.0, True)
    p, exact = sign_flip_p([0.1] * 17)  # above 16 seeds: sampled, flagged as such
    assert not exact and p == pytest.approx(2 / 2**17, abs=1e-4)


def test_paired_on_synthetic_results():
    gigpo = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.2}
    grpo = {0: 0.4, 1: 0.4, 2: 0.6, 9: 0.9}  # seed 3 and 9 unpaired: left out
    res = paired(gigpo, grpo)
    assert res["seeds"] == [0, 1, 2] and res["n"] == 3
    assert res["diffs"] == pytest.approx([0.1, 0.2, 0.1])
    assert (res["wins"], res["losses"], res["ties"]) == (3, 0, 0)
    assert res["mean_diff"] == pytest.approx(0.4 / 3)
    # t = mean / (sd / sqrt(3)) = (2/15) / ((1/(10 sqrt 3)) / sqrt 3) = 4: two-sided p(df=2).
    assert res["p_ttest"] == pytest.approx(2 * (1 - t_cdf(4.0, 2)))
    assert res["p_ttest"] == pytest.approx(0.0572, abs=1e-4)
    half = 4.303 * (0.1 / math.sqrt(3)) / math.sqrt(3)
    assert (res["lo"], res["hi"]) == pytest.approx((0.4 / 3 - half, 0.4 / 3 + half), abs=1e-4)
    assert res["p_signflip"] == 2 / 8 and res["signflip_exact"]
    words = verdict("gigpo", "grpo", res)
    assert words.startswith("gigpo beat grpo on 3 of 3 seeds; mean difference +0.133 [-0.010,")
    assert "not significant at 0.05" in words and "cannot go below 0.25" in words
    # A large consistent gain over 6 seeds is significant; identical results are not.
    big = paired({s: 0.8 + 0.01 * s for s in range(6)}, {s: 0.2 for s in range(6)})
    assert big["p_ttest"] < 1e-4 and big["p_signflip"] == 2 / 64
    assert "significant at 0.05 (gigpo higher)" in verdict("gigpo", "grpo", big)
    same = paired({0: 0.3, 1: 0.5}, {0: 0.3, 1: 0.5})
    assert same["ties"] == 2 and same["p_ttest"] == 1.0 and same["p_signflip"] == 1.0
    assert paired({0: 0.1}, {1: 0.2}) is None


def test_final_table_and_published_ordering():
    runs = [
        {"method": m, "seed": s, "curve": {0: 0.1, 4: v + 0.01 * s}}
        for m, v in (("gigpo", 0.5), ("grpo", 0.4), ("rloo", 0.3))
        for s in range(3)
    ]
    agg = aggregate(runs)
    assert agg["grpo"][4]["mean"] == pytest.approx(0.41) and agg["grpo"][4]["n"] == 3
    assert agg["grpo"][0]["half"] == pytest.approx(0.0)
    final = {m: agg[m][4] for m in agg}
    md = final_markdown(final, {"gigpo": {"nonsingleton_frac": 0.7, "step_groups": 12.0}}, {})
    assert "| gigpo | 0.51 | [0.49, 0.53] | 0.01 | 3 | 0.70 | 12.0 |" in md
    assert "| rloo | 0.31 |" in md and "n/a" in md
    pairs = {
        k: paired({s: a + 0.01 * s for s in range(3)}, {s: b + 0.01 * s for s in range(3)})
        for k, a, b in (("gigpo:grpo", 0.5, 0.4), ("grpo:rloo", 0.4, 0.3))
    }
    text = ordering_markdown(final, pairs)
    assert "GiGPO > GRPO > RLOO" in text and "reproduced in the means" in text
    swapped = {**final, "rloo": agg["gigpo"][4], "gigpo": agg["rloo"][4]}
    assert "NOT reproduced in the means" in ordering_markdown(swapped, {})
    assert ordering_markdown({"gigpo": final["gigpo"]}, {}) == ""


def test_parse_compare():
    assert parse_compare(["gigpo:grpo", "gigpo+epo:rloo"]) == [
        ("gigpo", "grpo"),
        ("gigpo+epo", "rloo"),
    ]
    with pytest.raises(ValueError, match="--compare 'gigpo': write two methods as A:B"):
        parse_compare(["gigpo"])
