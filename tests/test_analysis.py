"""Analysis as data: rules {metric, compare, threshold, dry_run} and the one judge that interprets them."""

from __future__ import annotations

from typing import get_args

import pytest

from activities.analysis import COMPARISONS, AnalysisRule, Check, Measurement, Verdict, judge
from skyshift.spec.analysis import Comparison

FLOOR_RULES = [
    AnalysisRule(metric="eval_*", compare="within_floor", threshold=0.01, dry_run=True),
    AnalysisRule(metric="*", compare="within_floor", threshold=1e-5, floor_margin=1.0),
]


def only(measurement: Measurement, rules=FLOOR_RULES, confidence: float = 0.98) -> Check:
    return judge("s", [measurement], rules, confidence).checks[0]


def test_every_comparison_a_rule_may_name_has_an_interpretation():
    assert set(COMPARISONS) == set(get_args(Comparison))
    with pytest.raises(ValueError, match="compare"):
        AnalysisRule(metric="loss", compare="roughly", threshold=1)


def test_a_difference_inside_the_noise_floor_passes_and_beyond_it_fails():
    inside = only(Measurement(metric="loss", observed=3e-4, floor=2e-4))
    assert inside.outcome == "pass" and inside.threshold == pytest.approx(4e-4) and inside.floor == 2e-4
    beyond = only(Measurement(metric="loss", observed=5e-4, floor=2e-4, step=17))
    assert beyond.outcome == "fail" and beyond.step == 17
    assert "floor 0.0002 x 2" in beyond.detail and "allowed 0.0004" in beyond.detail


def test_without_a_floor_the_rule_threshold_still_allows_rounding():
    assert only(Measurement(metric="loss", observed=5e-6, floor=0.0)).outcome == "pass"
    assert only(Measurement(metric="loss", observed=5e-5, floor=0.0)).outcome == "fail"
    assert only(Measurement(metric="loss", observed=float("nan"), floor=0.0)).outcome == "fail"


def test_the_first_matching_rule_decides_and_dry_run_only_reports():
    result = judge("s", [Measurement(metric="eval_acc", observed=0.5, floor=0.0),
                         Measurement(metric="loss", observed=0.0, floor=0.0)], FLOOR_RULES)  # fmt: skip
    assert result.outcome == "pass"
    assert "dry-run: eval_acc would be fail" in result.summary


def test_a_rule_about_enough_data_is_inconclusive_never_fail():
    rules = [AnalysisRule(metric="*.samples", compare="at_least", threshold=50, on_breach="inconclusive")]
    assert only(Measurement(metric="chat.samples", observed=49), rules).outcome == "inconclusive"
    assert only(Measurement(metric="chat.samples", observed=50), rules).outcome == "pass"


def test_significance_comes_from_the_confidence_the_plan_sets():
    rules = [AnalysisRule(metric="latency", compare="significant_increase", threshold=15, unit="%")]
    large_but_noisy = Measurement(metric="latency", observed=40, p_value=0.03)
    assert only(large_but_noisy, rules, confidence=0.98).outcome == "pass"
    assert only(large_but_noisy, rules, confidence=0.95).outcome == "fail"
    small_but_certain = Measurement(metric="latency", observed=10, p_value=1e-9)
    assert only(small_but_certain, rules).outcome == "pass"


def test_unreadable_is_an_error_and_an_unjudged_metric_says_so():
    assert only(Measurement(metric="x", error="scrape refused")).outcome == "error"
    unjudged = judge("s", [Measurement(metric="x", observed=1)], []).checks[0]
    assert unjudged.outcome == "inconclusive" and "no analysis rule judges x" in unjudged.detail


def test_verdicts_from_older_histories_still_decode():
    old = '{"subject": "cutover:5pct", "outcome": "pass", "summary": "2 checks passed", "checks": [' \
          '{"metric": "chat.latency", "outcome": "pass", "source": 7.0, "target": 7.1, "observed": 1.4, ' \
          '"threshold": 15.0, "p_value": 0.3, "effect_size": 0.5, "confidence_interval": null, "dry_run": false, ' \
          '"detail": "p50 7.1 ms vs 7.0 ms"}]}'  # fmt: skip
    verdict = Verdict.model_validate_json(old)
    assert verdict.checks[0].floor is None and verdict.checks[0].compare is None
