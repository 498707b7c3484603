"""Metrics and statistics: hand-checked values, intervals that contain the mean, an honest paired test."""

import pytest

from tunesmith.scoring.metrics import scores, token_f1
from tunesmith.scoring.stats import bootstrap_ci, paired_test


def test_token_f1_and_exact_match_by_hand():
    # prediction tokens {team, met, monday}, reference {team, met, on, friday}: 2 common
    # -> P 2/3, R 2/4 -> F1 4/7
    assert token_f1("The team met Monday.", "the team met on Friday") == pytest.approx(100 * 4 / 7, abs=0.01)
    assert token_f1("", "") == 100.0 and token_f1("a", "b c") == 0.0
    s = scores("The team met.", "the team met")
    assert s["exact_match"] == 100.0 and s["token_f1"] == 100.0 and s["rougeL"] == 100.0
    s = scores("Budget approved.", "Meeting Summary: The design was discussed at length.")
    assert s["exact_match"] == 0.0 and s["rouge1"] == 0.0 and s["bleu"] < 5 and 0 <= s["chrf"] < 30


def test_identical_text_scores_full_marks():
    s = scores(
        "Meeting Summary: The team chose a rubber case.", "Meeting Summary: The team chose a rubber case."
    )
    assert s["bleu"] == 100.0 and s["chrf"] == 100.0 and s["rougeLsum"] == 100.0


def test_bootstrap_interval_contains_the_mean_and_is_reproducible():
    values = [10, 12, 9, 30, 25, 11, 14, 8, 13, 40]
    lo, hi = bootstrap_ci(values)
    assert lo < sum(values) / len(values) < hi
    assert (lo, hi) == bootstrap_ci(values)
    assert hi - lo > bootstrap_ci([15.0] * 10)[1] - bootstrap_ci([15.0] * 10)[0]


def test_paired_test_says_no_significant_difference_when_that_is_the_truth():
    a = [30, 31, 29, 35, 28, 33, 30, 32]
    noise = [30, 30, 31, 34, 29, 32, 31, 31]  # same level, small per-example noise
    t = paired_test(noise, a)
    assert not t["significant"] and t["p"] > 0.05 and t["ci"][0] < 0 < t["ci"][1]
    better = [x + 10 for x in a]
    t = paired_test(better, a)
    assert t["significant"] and t["p"] < 0.001 and t["change"] == 10.0
