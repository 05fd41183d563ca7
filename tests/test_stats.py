"""Confidence intervals and paired comparisons (helpers.stats, helpers.comparisons, the consolidated report):
exactly known cases, coverage on synthetic data, pairing, and the rescore -> consolidate path on the golden
fixture against an independent bootstrap."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import stats
from helpers.consolidate import consolidate
from helpers.results import load_per_sample

REPO = Path(__file__).resolve().parents[1]


def _recordings(seed: int, n_recordings: int = 60):
    """Synthetic test set: recordings of 100-189 frames, keys (subject, action, subaction) like Protocol 2."""
    rng = np.random.default_rng(seed)
    recording = np.repeat(np.arange(n_recordings), rng.integers(100, 190, n_recordings))
    return rng, recording, recording // 30, (recording % 30) // 2, recording % 2


def test_a_constant_difference_gives_a_zero_width_interval_at_that_value():
    rng, recording, subject, action, subaction = _recordings(0)
    b = rng.normal(50.0, 10.0, len(recording))
    result = stats.paired_comparison(b + 3.25, b, subject, action, subaction)
    # Every resample averages the same 3.25: the interval is that value, up to the rounding of the sums.
    bound = 1e-12 * len(recording)
    assert abs(result.delta - 3.25) < bound
    assert abs(result.ci95_low - 3.25) < bound and abs(result.ci95_high - 3.25) < bound
    assert result.significant and result.p_value == pytest.approx(2 / (stats.RESAMPLES + 1))
    same = stats.paired_comparison(b, b, subject, action, subaction)
    assert (same.delta, same.ci95_low, same.ci95_high, same.p_value, same.significant) == (0.0, 0.0, 0.0, 1.0, False)


def test_about_95_percent_of_intervals_contain_the_true_difference():
    """400 synthetic test sets of 60 recordings with a true difference of 1 mm and recording-level effects.

    Tolerance: the binomial sd of the hit rate is 0.011 at 400 sets; the percentile bootstrap over 60 clusters
    also under-covers by a point or two (its variance estimate is (G-1)/G of the true one). 0.91-0.98 allows both.
    """
    hits = 0
    for k in range(400):
        rng, recording, subject, action, subaction = _recordings(1000 + k)
        b = rng.normal(50.0, 10.0, len(recording)) + rng.normal(0.0, 5.0, 60)[recording]
        a = b + 1.0 + rng.normal(0.0, 2.0, 60)[recording] + rng.normal(0.0, 3.0, len(recording))
        interval = stats.paired_comparison(a, b, subject, action, subaction, resamples=2000)
        hits += interval.ci95_low <= 1.0 <= interval.ci95_high
    assert 0.91 <= hits / 400 <= 0.98


def test_pairing_narrows_the_interval_when_the_errors_are_correlated():
    rng, recording, subject, action, subaction = _recordings(7)
    shared = rng.normal(0.0, 8.0, 60)[recording] + rng.normal(0.0, 10.0, len(recording))  # hard samples for both
    a = 50.0 + shared + rng.normal(0.0, 1.0, len(recording))
    b = 49.0 + shared + rng.normal(0.0, 1.0, len(recording))
    paired = stats.paired_comparison(a, b, subject, action, subaction)
    unpaired = stats.unpaired_difference_interval(a, b, subject, action, subaction)
    assert (paired.ci95_high - paired.ci95_low) * 4 < unpaired[1] - unpaired[0]
    assert paired.significant and unpaired[0] < 0 < unpaired[1]  # the pairing is what shows the 1 mm


def test_resampling_is_by_recording_and_reproducible():
    rng, recording, subject, action, subaction = _recordings(3)
    codes, groups = stats.recording_codes(subject, action, subaction)
    assert groups == 60 and np.array_equal(np.unique(codes), np.arange(60))
    counts = stats.resample_counts(groups, 500, seed=5)
    assert counts.shape == (500, 60) and (counts.sum(axis=1) == 60).all()
    assert np.array_equal(counts, stats.resample_counts(groups, 500, seed=5))  # fixed seed, same draws
    values = rng.normal(0.0, 1.0, len(recording))
    means = stats.resampled_means(values, codes, groups, counts)
    # a resample pools the frames of the drawn recordings (a recording drawn twice counts twice)
    by_hand = [np.mean(np.concatenate([values[codes == g] for g in np.repeat(np.arange(60), c.astype(int))]))
               for c in counts[:5]]
    assert np.allclose(means[:5], by_hand, rtol=0, atol=1e-12)


# -------------------------------------------------------------- rescore -> consolidate on the golden fixture
def _independent_paired_interval(diff, keys, resamples=10_000, seed=12345):
    """A plain paired bootstrap over recordings, written separately: draw recordings, pool their frames."""
    rng = np.random.default_rng(seed)
    recordings = sorted(set(map(tuple, keys)))
    members = {r: np.flatnonzero((keys == r).all(axis=1)) for r in recordings}
    sums = np.array([diff[members[r]].sum() for r in recordings])
    sizes = np.array([len(members[r]) for r in recordings])
    means = np.empty(resamples)
    for i in range(resamples):
        drawn = rng.choice(len(recordings), size=len(recordings), replace=True)
        means[i] = sums[drawn].sum() / sizes[drawn].sum()
    return np.percentile(means, [2.5, 97.5]), means.std()


@pytest.fixture(scope="module")
def rescored(tmp_path_factory, golden_eval_dir):
    """The two golden prediction files rescored into one folder, then consolidated twice."""
    root = tmp_path_factory.mktemp("rescored")
    for name in ("predictions_32", "predictions_64"):
        cmd = [sys.executable, "-m", "helpers", "rescore", "--annotations", str(golden_eval_dir),
               "--predictions", str(golden_eval_dir / f"{name}.npz"), "--out", str(root / name / "result.json")]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    first = consolidate(root, root / "report_1")
    second = consolidate(root, root / "report_2")
    return root, first, second


def test_rescored_results_carry_intervals_and_per_sample_errors(rescored):
    root, _, _ = rescored
    result = json.loads((root / "predictions_32" / "result.json").read_text())
    ci = result["ci95"]
    assert ci["resamples"] == stats.RESAMPLES and ci["seed"] == stats.SEED and ci["level"] == 0.95
    low, high = ci["headline"]
    assert low < result["headline"]["value"] < high
    for metric in ("mpjpe", "pa_mpjpe_rigid", "pa_mpjpe_similarity", "pa_mpjpe_rigid_fit18"):
        block = ci["metrics"][metric]
        assert set(block["per_action"]) == set(result["metrics"][metric]["per_action"])
        for action, (a_low, a_high) in block["per_action"].items():
            assert a_low <= result["metrics"][metric]["per_action"][action] <= a_high
    samples = load_per_sample(root / "predictions_32" / result["per_sample_errors"]["file"])
    assert set(samples) >= {"image_id", "subject", "action_index", "subaction", "camera", "errors", "joint_errors"}
    assert samples["joint_errors"]["mpjpe"].shape == (result["num_samples"], 17)
    # the per-sample errors average to the official total (each sample has 17 joints)
    assert samples["errors"]["mpjpe"].mean() == pytest.approx(result["metrics"]["mpjpe"]["total"], rel=1e-12)


def test_pairwise_delta_is_the_official_per_sample_difference_and_the_interval_agrees(rescored, golden_eval_dir):
    root, first, _ = rescored
    pairwise = pd.read_csv(root / "report_1" / "pairwise.csv")
    assert list(pairwise.columns[:10]) == ["group", "metric", "model_a", "model_b", "n_common", "delta", "ci95_low",
                                           "ci95_high", "p_value", "significant"]
    assert len(pairwise) == 1
    row = pairwise.iloc[0]
    # results without a model block are named after their folder
    assert {row["model_a"], row["model_b"]} == {"predictions_32", "predictions_64"}
    official = np.load(golden_eval_dir / "expected_per_sample.npz")
    per_sample = {name: official[f"{name}__gt_info_true__mpjpe_joint"].astype(np.float64).mean(axis=1)
                  for name in ("predictions_32", "predictions_64")}
    diff = per_sample[row["model_a"]] - per_sample[row["model_b"]]
    assert row["n_common"] == len(diff)
    assert abs(row["delta"] - diff.mean()) < 1e-3  # the parity tolerance of the official per-joint errors

    samples = load_per_sample(root / row["model_a"] / "per_sample_errors.npz")
    rows = np.argsort(samples["image_id"])
    assert np.array_equal(samples["image_id"][rows], np.sort(official["image_id"]))
    order = np.argsort(official["image_id"])
    keys = np.stack([samples["subject"][rows], samples["action_index"][rows], samples["subaction"][rows]], axis=1)
    (low, high), spread = _independent_paired_interval(diff[order], keys)
    # Two bootstraps with different random streams: each 2.5 % quantile of 10,000 resamples has a Monte Carlo sd
    # of about 0.027 bootstrap sd; 0.2 sd is over five of those for the two streams together.
    assert abs(row["ci95_low"] - low) < 0.2 * spread and abs(row["ci95_high"] - high) < 0.2 * spread
    assert bool(row["significant"]) == (row["ci95_low"] > 0 or row["ci95_high"] < 0)


def test_two_consolidations_of_the_same_inputs_give_identical_files(rescored):
    root, first, second = rescored
    for name in ("pairwise.csv", "leaderboard.csv"):
        assert (root / "report_1" / name).read_bytes() == (root / "report_2" / name).read_bytes(), name


def test_the_report_shows_the_intervals_and_the_pairwise_plot(rescored):
    root, first, _ = rescored
    leaderboard = pd.read_csv(root / "report_1" / "leaderboard.csv")
    assert {"ci95_low", "ci95_high"} <= set(leaderboard.columns)
    assert (leaderboard["ci95_low"] < leaderboard["headline (mm)"]).all()
    assert (leaderboard["headline (mm)"] < leaderboard["ci95_high"]).all()
    assert (root / "report_1" / "pairwise.png").stat().st_size > 0
    text = (root / "report_1" / "REPORT.md").read_text()
    assert "## Confidence intervals and paired comparisons" in text
    assert "sampling uncertainty of the test set" in text and "reproduction error" in text
    assert f"{stats.RESAMPLES:,} resamples" in text and f"seed {stats.SEED}" in text and "recording" in text
    assert "pairwise.png" in text
