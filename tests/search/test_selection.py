"""Choosing the trial to promote, on hand-made trials (no MLflow, no training)."""

from __future__ import annotations

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from aam_search.search.selection import SelectionError, choose_trial

DIST = {"x": FloatDistribution(0, 1)}


def trial(number: int, utility: float, leakage: float, drop: float | None, state=TrialState.COMPLETE):
    attrs = {"utility": utility, "leakage": leakage, "utility_drop": "nan" if drop is None else drop}
    made = create_trial(state=state, values=[utility, leakage] if state == TrialState.COMPLETE else None,
                        params={"x": 0.5}, distributions=DIST, user_attrs=attrs)
    made.number = number
    return made


def test_rule_picks_least_leakage_within_the_drop():
    trials = [trial(0, 0.80, 0.50, 0.00), trial(1, 0.79, 0.40, 0.0125), trial(2, 0.795, 0.45, 0.006),
              trial(3, 0.60, 0.10, 0.25), trial(4, 0.9, 0.0, None)]
    assert choose_trial(trials, ["utility", "leakage"], max_utility_drop=0.01)[0].number == 2
    assert choose_trial(trials, ["utility", "leakage"], max_utility_drop=0.02)[0].number == 1
    assert choose_trial(trials, ["utility", "leakage"], max_utility_drop=None)[0].number == 2  # default 0.01
    with pytest.raises(SelectionError, match=r"smallest utility drop is 0\.0000 \(trial 0\)"):
        choose_trial(trials, ["utility", "leakage"], max_utility_drop=-0.5)


def test_knee_is_the_front_point_nearest_the_ideal_corner():
    trials = [trial(0, 0.80, 0.60, 0.0), trial(1, 0.76, 0.30, 0.05), trial(2, 0.40, 0.05, 0.5),
              trial(3, 0.70, 0.50, 0.1)]  # 3 is dominated by 1
    chosen, rule = choose_trial(trials, ["utility", "leakage"], knee=True, baseline={"utility": 0.8, "leakage": 0.6})
    assert chosen.number == 1 and "knee" in rule


def test_explicit_trial_must_have_completed():
    trials = [trial(0, 0.8, 0.5, 0.0), trial(1, 0, 0, 0, state=TrialState.FAIL)]
    trials[1].user_attrs["aam:reason"] = "diverged: loss diverged in epoch 3"
    with pytest.raises(SelectionError, match="trial 1 is FAIL, not completed .diverged"):
        choose_trial(trials, ["utility", "leakage"], trial=1)
    with pytest.raises(SelectionError, match="no completed trial"):
        choose_trial(trials[1:], ["utility", "leakage"])
    assert choose_trial(trials, ["utility", "leakage"], trial=0)[0].number == 0


def test_a_pruned_trial_is_never_chosen():
    # Stopped at a rung: its numbers are a partial run's, even where they look best.
    pruned = trial(5, 0.85, 0.01, 0.0, state=TrialState.PRUNED)
    trials = [trial(0, 0.80, 0.50, 0.00), trial(1, 0.76, 0.30, 0.05), pruned]
    assert choose_trial(trials, ["utility", "leakage"], max_utility_drop=0.01)[0].number == 0
    assert choose_trial(trials, ["utility", "leakage"], knee=True, baseline={"utility": 0.8, "leakage": 0.6}
                        )[0].number != 5
    with pytest.raises(SelectionError, match="trial 5 is PRUNED, not completed"):
        choose_trial(trials, ["utility", "leakage"], trial=5)
    with pytest.raises(SelectionError, match="no completed trial yet"):
        choose_trial([pruned], ["utility", "leakage"])
