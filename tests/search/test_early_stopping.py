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


def _union_area(points, reference):
    """Area dominated by ``points`` (minimised) below ``reference``, cell by cell."""
    xs = sorted({p[0] for p in points} | {reference[0]})
    ys = sorted({p[1] for p in points} | {reference[1]})
    area = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        for y0, y1 in zip(ys, ys[1:]):
            if any(p[0] <= x0 and p[1] <= y0 for p in points):
                area += (x1 - x0) * (y1 - y0)
    return area


def _brute_volume(points, front, study_reference=None):
    """Each point's exclusive hypervolume in its front, by its definition (two objectives)."""
    columns = list(zip(*points))
    reference = [max(c) + (0.1 * (max(c) - min(c)) if max(c) > min(c) else 1.0) for c in columns]
    if study_reference is not None:
        reference = [max(r, s) for r, s in zip(reference, study_reference)]
    volume = [0.0] * len(points)
    for f in set(front):
        members = [points[i] for i in range(len(points)) if front[i] == f]
        whole = _union_area(members, reference)
        for i in range(len(points)):
            if front[i] == f:
                rest = [points[j] for j in range(len(points)) if front[j] == f and j != i]
                volume[i] = whole - _union_area(rest, reference)
    return volume


def test_a_newcomer_at_the_other_end_of_the_front_beats_duplicated_points():
    # The benchmark's case (utility up, leakage down): two trials identical at rung 1, a third
    # with far better leakage. By crowding distance alone it lost to an earlier end point.
    assert should_continue([[0.75, 0.889], [0.75, 0.889]], [0.708, 0.657], ["maximize", "minimize"], 3)


def test_the_newcomer_adding_less_volume_stops():
    # Both ends of a 3-point front are infinite in crowding; their exclusive volumes differ.
    recorded = [[0.0, 10.0], [5.0, 5.0]]
    assert not should_continue(recorded, [9.0, 4.9], MIN2, reduction_factor=3)  # adds a sliver
    assert should_continue(recorded, [1.0, 0.0], MIN2, reduction_factor=3)  # adds the most


def test_the_study_reference_weighs_a_front_as_the_study_will():
    # The benchmark's case (utility up, leakage down; seed 3): two early trials near the raw
    # features' leakage and a newcomer trading 0.06 utility for 0.22 less leakage. Against the
    # rung's own bounds the two ends of the front weigh about the same (the earlier one wins);
    # at the study's reference (half the raw utility, the raw leakage) the newcomer adds far
    # more of the volume the study maximises, and goes on.
    recorded, newcomer = [[0.75, 0.889], [0.75, 0.887]], [0.688, 0.665]
    directions = ["maximize", "minimize"]
    assert not should_continue(recorded, newcomer, directions, 3)
    assert should_continue(recorded, newcomer, directions, 3, reference=[0.375, 0.917])
    # A reference some rung vectors are worse than is pushed out to bound them all.
    assert should_continue(recorded, newcomer, directions, 3, reference=[0.375, 0.7])
    # A reference that is not finite is ignored.
    assert not should_continue(recorded, newcomer, directions, 3, reference=[float("nan"), 0.917])


@pytest.mark.parametrize("seed", range(40))
def test_random_rungs_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, m, eta = int(rng.integers(2, 12)), int(rng.integers(2, 4)), int(rng.integers(2, 5))
    directions = [rng.choice(["minimize", "maximize"]) for _ in range(m)]
    raw = rng.integers(0, 6, size=(n, m)).astype(float)  # small ints: ties and shared fronts
    signs = [1 if d == "minimize" else -1 for d in directions]
    points = [tuple(v * s for v, s in zip(row, signs)) for row in raw]
    front, crowd = _brute_rank(points)
    # Every other seed ranks at a study reference (in the objectives' own directions).
    raw_reference = rng.integers(-2, 8, size=m).astype(float) if seed % 2 else None
    study_reference = None if raw_reference is None else [v * s for v, s in zip(raw_reference, signs)]
    volume = _brute_volume(points, front, study_reference) if m == 2 else [0.0] * n
    new = n - 1

    def key(i):  # smaller is better; an earlier row wins a pure tie
        return (front[i], -round(volume[i], 9), -crowd[i])

    better = sum(1 for i in range(n - 1) if key(i) <= key(new))
    expected = n < eta or better < keep_count(n, eta)
    reference = None if raw_reference is None else raw_reference.tolist()
    assert should_continue(raw[:-1].tolist(), raw[-1].tolist(), directions, eta, reference) == expected
