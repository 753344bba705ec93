"""The Pareto front and hypervolume on hand-made points (objective values: test_objectives.py)."""

from __future__ import annotations

import numpy as np
import pytest
from optuna.trial import TrialState, create_trial

from aam_search.search.pareto import hypervolume, pareto_front, pareto_mask
from aam_search.search.record import DISCARDED

UL = ["utility", "leakage"]  # maximize, minimize


def trial(number: int, values, state=TrialState.COMPLETE, **kwargs):
    frozen = create_trial(state=state, values=values if state == TrialState.COMPLETE else None, **kwargs)
    frozen.number = number
    return frozen


def test_pareto_mask_follows_each_objectives_direction():
    values = np.array([
        [0.9, 0.5],  # best utility
        [0.8, 0.3],  # trade-off
        [0.7, 0.6],  # dominated by both above
        [0.6, 0.3],  # same leakage as [0.8, 0.3], less utility: dominated
        [0.5, 0.1],  # lowest leakage
        [0.9, 0.5],  # a tie with the first: ties do not dominate each other
    ])
    assert pareto_mask(values, UL).tolist() == [True, True, False, False, True, True]
    # Both minimized, the same points give another front: low utility now wins.
    assert pareto_mask(values, ["leakage", "params"]).tolist() == [False, False, False, False, True, False]


def test_pareto_mask_three_objectives():
    values = np.array([[0.9, 0.5, 100], [0.9, 0.5, 50], [0.8, 0.2, 500]])
    assert pareto_mask(values, ["utility", "leakage", "params"]).tolist() == [False, True, True]


def test_hypervolume_of_a_known_area():
    # Reference (utility 0.5, leakage 0.5). In the (utility, leakage) plane:
    #   (0.8, 0.2) covers [0.5, 0.8] x [0.2, 0.5] = 0.09
    #   (0.6, 0.1) covers [0.5, 0.6] x [0.1, 0.5] = 0.04, of which 0.03 overlaps -> 0.10 in all.
    reference = np.array([0.5, 0.5])
    trials = [trial(0, [0.8, 0.2]), trial(1, [0.6, 0.1])]
    assert hypervolume(trials, UL, reference) == pytest.approx(0.10)
    # A dominated point adds nothing; a point beyond the reference (too little utility)
    # is on the front but adds nothing either.
    more = [*trials, trial(2, [0.55, 0.3]), trial(3, [0.4, 0.05])]
    assert {t.number for t in pareto_front(more, UL)} == {0, 1, 3}
    assert hypervolume(more, UL, reference) == pytest.approx(0.10)
    # A better point grows it: (0.9, 0.05) alone covers 0.4 x 0.45 = 0.18 and dominates the rest.
    assert hypervolume([*more, trial(4, [0.9, 0.05])], UL, reference) == pytest.approx(0.18)


def test_hypervolume_is_zero_without_completed_points_inside_the_reference():
    reference = np.array([0.5, 0.5])
    assert hypervolume([], UL, reference) == 0.0
    assert hypervolume([trial(0, [0.4, 0.2]), trial(1, [0.9, 0.7])], UL, reference) == 0.0


def test_pareto_front_ignores_failed_discarded_and_infeasible_trials():
    trials = [
        trial(0, [0.7, 0.4]),
        trial(1, [0.9, 0.1], user_attrs={DISCARDED: "budget reached"}),
        trial(2, [0.95, 0.05], constraints={"max_utility_drop": 0.2}),  # infeasible
        trial(3, [0.8, 0.5], constraints={"max_utility_drop": -0.1}),  # feasible
        trial(4, None, state=TrialState.FAIL),
        trial(5, [0.6, 0.45]),  # dominated by trial 0
    ]
    front = pareto_front(trials, UL)
    # Sorted best first by the first objective (utility, maximized).
    assert [t.number for t in front] == [3, 0]


