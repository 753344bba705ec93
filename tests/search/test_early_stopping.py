import itertools
import math

import numpy as np
import pytest

from aam_search.search.early_stopping import keep_count, rung_epochs, should_continue

MIN2 = ["minimize", "minimize"]


def test_syne_tune_counter_example_continues():
    assert should_continue([[1, 1], [2, 2], [9, 9]], [0, 0], MIN2, reduction_factor=2)
    assert should_continue([[1, 1], [2, 2], [9, 9]], [0, 0], MIN2, reduction_factor=4)


def test_dominated_newcomer_stops():
    assert not should_continue([[1, 1], [2, 2], [0, 3]], [9, 9], MIN2, reduction_factor=2)


def test_few_trials_pass():
    assert should_continue([[0, 0]], [9, 9], MIN2, reduction_factor=3)


def test_rungs():
    assert rung_epochs(1, 3, 20) == [1, 3, 9]
    assert rung_epochs(2, 2, 16) == [2, 4, 8]
    with pytest.raises(ValueError):
        rung_epochs(1, 1, 10)


def _brute_rank(points):
    """Front index by pairwise dominance; crowding by its definition, per objective."""
    n = len(points)
    dom = [[all(a <= b for a, b in zip(points[i], points[j])) and points[i] != points[j]
            for j in range(n)] for i in range(n)]
    front = [None] * n
    level, left = 0, set(range(n))
    while left:
        current = {j for j in left if not any(dom[i][j] for i in left)}
        for j in current:
            front[j] = level
        left -= current
        level += 1
    crowd = [0.0] * n
    for f in set(front):
        members = [i for i in range(n) if front[i] == f]
        if len(members) <= 2:
            for i in members:
                crowd[i] = math.inf
            continue
        for k in range(len(points[0])):
            srt = sorted(members, key=lambda i: points[i][k])
            lo, hi = points[srt[0]][k], points[srt[-1]][k]
            crowd[srt[0]] = crowd[srt[-1]] = math.inf
            for a, b, c in zip(srt, srt[1:], srt[2:]):
                if hi > lo and crowd[b] != math.inf:
                    crowd[b] += (points[c][k] - points[a][k]) / (hi - lo)
    return front, crowd


@pytest.mark.parametrize("seed", range(40))
def test_random_rungs_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, m, eta = int(rng.integers(2, 12)), int(rng.integers(2, 4)), int(rng.integers(2, 5))
    directions = [rng.choice(["minimize", "maximize"]) for _ in range(m)]
    raw = rng.integers(0, 6, size=(n, m)).astype(float)  # small ints: ties and shared fronts
    signs = [1 if d == "minimize" else -1 for d in directions]
    points = [tuple(v * s for v, s in zip(row, signs)) for row in raw]
    front, crowd = _brute_rank(points)
    new = n - 1
    better = sum(1 for i in range(n - 1)
                 if front[i] < front[new] or (front[i] == front[new] and crowd[i] >= crowd[new]))
    expected = n < eta or better < keep_count(n, eta)
    assert should_continue(raw[:-1].tolist(), raw[-1].tolist(), directions, eta) == expected
