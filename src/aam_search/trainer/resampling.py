"""Resampling of evaluation videos: cross-fit folds and the per-video bootstrap.

Both work on whole videos, never on rows: the clips (or static clips) of one video are
near-duplicates, so a fold or a resample that split them would let an attacker match a
video against itself, and an interval over rows would be far too narrow.

Bootstrap: ``BOOTSTRAP_RESAMPLES`` draws (with replacement) of the evaluation videos, one
shared draw for every statistic of a trial (utility, each protocol, the worst case), so the
worst case's interval is the interval of the worst case; percentile 95% intervals. With
fewer than ``MIN_BOOTSTRAP_VIDEOS`` videos an interval says nothing: it is ``None`` with a note.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
MIN_BOOTSTRAP_VIDEOS = 10
CI_LEVEL = 0.95


def video_folds(videos: np.ndarray, strata: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per video (``[V]``), folds as equal as possible and stratified.

    ``strata`` is one row per video (e.g. its attribute labels, -1 = unknown); videos are
    shuffled, grouped by their stratum and dealt out in turn, so every fold gets about the
    same share of each label combination.
    """
    count = len(videos)
    if folds < 2 or count < folds:
        raise ValueError(f"cannot make {folds} folds of {count} videos")
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(count)
    strata = np.asarray(strata).reshape(count, -1)[order]
    # Stable sort by stratum keeps the random order inside each stratum.
    keys = np.lexsort(strata.T[::-1]) if strata.shape[1] else np.arange(count)
    dealt = order[keys]
    assignment = np.empty(count, dtype=np.int64)
    # One round-robin through all strata in turn: folds differ in size by at most one video.
    assignment[dealt] = np.arange(count) % folds
    return assignment


@dataclass(frozen=True)
class Resampler:
    """One shared bootstrap draw over the evaluation videos ``videos`` (cache indices)."""

    videos: np.ndarray  # [V] sorted cache video indices
    counts: np.ndarray  # [B, V] how often each video is drawn in each resample

    @classmethod
    def draw(cls, videos: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Resampler:
        videos = np.unique(np.asarray(videos, dtype=np.int64))
        rng = np.random.default_rng([seed, 11])
        picks = rng.integers(0, len(videos), size=(resamples, len(videos))) if len(videos) else np.zeros((resamples, 0), int)
        counts = np.zeros((resamples, len(videos)), dtype=np.int64)
        np.add.at(counts, (np.arange(resamples)[:, None], picks), 1)
        return cls(videos, counts)

    @property
    def resamples(self) -> int:
        return len(self.counts)

    def weights(self, owner: np.ndarray) -> np.ndarray:
        """``[B, N]`` multiplicity of each row whose video is ``owner[i]`` (0 for videos not drawn)."""
        position = np.searchsorted(self.videos, owner)
        position = np.clip(position, 0, max(len(self.videos) - 1, 0))
        known = (self.videos[position] == owner) if len(self.videos) else np.zeros(len(owner), bool)
        out = self.counts[:, position] if len(self.videos) else np.zeros((self.resamples, len(owner)), np.int64)
        return out * known[None, :]


def enough_videos(count: int) -> str | None:
    """``None`` when a bootstrap of ``count`` videos means something, else the note to show."""
    if count >= MIN_BOOTSTRAP_VIDEOS:
        return None
    return (f"only {count} evaluation videos (< {MIN_BOOTSTRAP_VIDEOS}): no bootstrap interval, "
            "the point estimate is all there is")


def percentile_ci(samples: np.ndarray, level: float = CI_LEVEL) -> list[float]:
    """``[lo, hi]`` percentile interval of bootstrap ``samples`` (NaN resamples left out)."""
    finite = samples[np.isfinite(samples)]
    if len(finite) == 0:
        return [float("nan"), float("nan")]
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return [float(lo), float(hi)]


def weighted_average_precision(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AP of ``scores``/``labels`` ``[N]`` for each weight row ``[B, N]``: row i counted ``w`` times.

    Exactly the AP of the data with each row repeated (``average_precision`` on the expanded
    arrays): rows sorted by score, ties broken pessimistically (negatives first), and a
    positive's ``w`` copies each contribute their own precision. NaN without positives.
    """
    labels = labels.astype(bool)
    order = np.lexsort((labels.astype(int), -scores))
    hits = labels[order]
    w = np.asarray(weights, dtype=np.float64)[:, order]
    positives = (w * hits).sum(1)
    before_count = np.cumsum(w, axis=1) - w
    before_hits = np.cumsum(w * hits, axis=1) - w * hits
    total = np.zeros(len(w))
    w_hit, bc, bh = w[:, hits], before_count[:, hits], before_hits[:, hits]
    for copy in range(1, int(w_hit.max(initial=0)) + 1):
        present = w_hit >= copy
        total += np.where(present, (bh + copy) / np.maximum(bc + copy, 1), 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, total / np.maximum(positives, 1), np.nan)
