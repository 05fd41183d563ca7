"""Confidence intervals and paired model comparisons: a bootstrap over recordings, vectorised.

The test frames of Human3.6M are not independent: frames 64 apart and the four camera views of one
recording show the same person doing the same thing. The unit that is resampled is therefore the
**recording**, (subject, action, subaction), taken whole with all its cameras and frames. A resample draws as
many recordings as the test set has, with replacement; the statistic is the frame-weighted mean (what the
official `tot` is) over the drawn recordings. `RESAMPLES` resamples with the fixed `SEED` give percentile
intervals at `LEVEL`, so the same inputs give the same numbers, byte for byte.

What an interval means: how much the number would move if the test set had been other recordings of the same
kind (sampling uncertainty of the test set). What it does not mean: the spread of reproducing the model
(training noise, another checkpoint, other software), which it does not measure.

Each resample is a vector of recording counts, so resampling every metric (or every action) at once is one matrix
product: (resamples x recordings) @ (recordings x statistics).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95
UNIT = "recording (subject, action, subaction), with all its cameras and frames"
METHOD = (f"percentile bootstrap over recordings: {RESAMPLES:,} resamples of the {UNIT}, drawn with replacement, "
          f"seed {SEED}")


def recording_codes(subject, action_index, subaction) -> tuple[np.ndarray, int]:
    """(code of each sample's recording (N,), number of recordings); codes follow sorted (subject, action, subaction)."""
    keys = np.stack([np.asarray(subject, np.int64), np.asarray(action_index, np.int64),
                     np.asarray(subaction, np.int64)], axis=1)
    if len(keys) == 0:
        raise ValueError("no samples: nothing to resample")
    _, codes = np.unique(keys, axis=0, return_inverse=True)
    codes = codes.reshape(-1)
    return codes, int(codes.max()) + 1


def resample_counts(n_groups: int, resamples: int = RESAMPLES, seed: int | np.random.Generator = SEED) -> np.ndarray:
    """(resamples, n_groups) float64: how often each group is drawn in each resample (each row sums to n_groups).

    With an integer seed the draws depend only on (n_groups, resamples, seed) and are computed once (read-only):
    every comparison over the same recordings uses the same resamples."""
    if isinstance(seed, np.random.Generator):
        return _draw_counts(n_groups, resamples, seed)
    return _cached_counts(int(n_groups), int(resamples), int(seed))


@functools.lru_cache(maxsize=16)
def _cached_counts(n_groups: int, resamples: int, seed: int) -> np.ndarray:
    counts = _draw_counts(n_groups, resamples, np.random.default_rng(seed))
    counts.setflags(write=False)
    return counts


def _draw_counts(n_groups: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    draws = rng.integers(0, n_groups, size=(resamples, n_groups))
    rows = np.repeat(np.arange(resamples) * n_groups, n_groups)
    return np.bincount(rows + draws.reshape(-1), minlength=resamples * n_groups).reshape(resamples, n_groups) \
        .astype(np.float64)


def _group_sums(values: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, K) sums of `values` (N, K) per group."""
    out = np.zeros((n_groups, values.shape[1]))
    np.add.at(out, codes, values)
    return out


def resampled_means(values, codes: np.ndarray, n_groups: int, counts: np.ndarray) -> np.ndarray:
    """Frame-weighted means of `values` ((N,) or (N, K)) in every resample: (resamples,) or (resamples, K)."""
    values = np.asarray(values, np.float64)
    flat = values.ndim == 1
    values = values[:, None] if flat else values
    sums = counts @ _group_sums(values, codes, n_groups)
    frames = counts @ np.bincount(codes, minlength=n_groups).astype(np.float64)
    means = sums / frames[:, None]
    return means[:, 0] if flat else means


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> np.ndarray:
    """[low, high] of the resampled statistic (axis 0), the central `level` share."""
    tail = (1.0 - level) / 2.0 * 100.0
    return np.percentile(samples, [tail, 100.0 - tail], axis=0)


def mean_interval(values, codes: np.ndarray, n_groups: int, *, resamples: int = RESAMPLES, seed=SEED,
                  level: float = LEVEL) -> np.ndarray:
    """`level` interval of the frame-weighted mean of `values` ((N,) -> (2,); (N, K) -> (2, K))."""
    counts = resample_counts(n_groups, resamples, seed)
    return percentile_interval(resampled_means(values, codes, n_groups, counts), level)


# ------------------------------------------------------------------------------------------- one result
def result_intervals(per_sample, *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> dict:
    """The `ci95` block of result.json: the interval of every metric's total and of each action's mean.

    Totals resample the test set's recordings; an action's mean resamples that action's recordings. One random
    stream (seed) in a fixed order: totals first, then the actions in the official order."""
    errors = per_sample.sample_errors()
    names = list(errors)
    values = np.stack([errors[name] for name in names], axis=1)
    codes, n_groups = recording_codes(per_sample.subject, per_sample.action_index, per_sample.subaction)
    rng = np.random.default_rng(seed)
    totals = percentile_interval(resampled_means(values, codes, n_groups, resample_counts(n_groups, resamples, rng)),
                                 level)
    block = {name: {"total": [float(totals[0, k]), float(totals[1, k])], "per_action": {}}
             for k, name in enumerate(names)}
    from .protocol import ACTION_NAMES

    action_index = np.asarray(per_sample.action_index)
    for a, action in enumerate(ACTION_NAMES):
        rows = np.flatnonzero(action_index == a)
        if not len(rows):
            continue
        sub_codes, sub_groups = recording_codes(np.asarray(per_sample.subject)[rows], action_index[rows],
                                                np.asarray(per_sample.subaction)[rows])
        counts = resample_counts(sub_groups, resamples, rng)
        interval = percentile_interval(resampled_means(values[rows], sub_codes, sub_groups, counts), level)
        for k, name in enumerate(names):
            block[name]["per_action"][action] = [float(interval[0, k]), float(interval[1, k])]
    return {"level": level, "method": METHOD, "unit": UNIT, "resamples": int(resamples), "seed": int(seed),
            "recordings": int(n_groups), "metrics": block}


# --------------------------------------------------------------------------------------- paired comparison
@dataclass(frozen=True)
class PairedComparison:
    n_common: int
    delta: float  # mean over the common samples of (a - b), mm
    ci95_low: float
    ci95_high: float
    p_value: float  # two-sided bootstrap p-value of "no difference"
    recordings: int

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return bool(self.ci95_low > 0 or self.ci95_high < 0)


def paired_comparison(errors_a, errors_b, subject, action_index, subaction, *, resamples: int = RESAMPLES,
                      seed: int = SEED, level: float = LEVEL) -> PairedComparison:
    """Compare two models on the same samples (rows aligned): the mean difference a - b with its interval from
    the recording bootstrap of the per-sample differences, and a two-sided p-value."""
    diff = np.asarray(errors_a, np.float64) - np.asarray(errors_b, np.float64)
    codes, n_groups = recording_codes(subject, action_index, subaction)
    means = resampled_means(diff, codes, n_groups, resample_counts(n_groups, resamples, seed))
    low, high = percentile_interval(means, level)
    below, above = np.count_nonzero(means <= 0.0), np.count_nonzero(means >= 0.0)
    p_value = min(1.0, 2.0 * (min(below, above) + 1) / (resamples + 1))
    return PairedComparison(len(diff), float(diff.mean()), float(low), float(high), float(p_value), n_groups)


def unpaired_difference_interval(errors_a, errors_b, subject, action_index, subaction, *,
                                 resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> np.ndarray:
    """The interval of mean(a) - mean(b) when each model is resampled on its own (as if the two had been run on
    different test sets): what ignoring the pairing gives, for comparison."""
    codes, n_groups = recording_codes(subject, action_index, subaction)
    rng = np.random.default_rng(seed)
    mean_a = resampled_means(errors_a, codes, n_groups, resample_counts(n_groups, resamples, rng))
    mean_b = resampled_means(errors_b, codes, n_groups, resample_counts(n_groups, resamples, rng))
    return percentile_interval(mean_a - mean_b, level)
