"""Metric functions: MPJPE, rigid and similarity Procrustes, MRPE."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import metrics


def _random_rotations(rng, n):
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1  # proper rotations only
    return q


def test_mpjpe_per_joint_is_euclidean_distance():
    pred = np.zeros((1, 2, 3))
    gt = np.array([[[3.0, 4.0, 0.0], [1.0, 2.0, 2.0]]])
    np.testing.assert_allclose(metrics.mpjpe_per_joint(pred, gt), [[5.0, 3.0]])
    with pytest.raises(ValueError):
        metrics.mpjpe_per_joint(np.zeros((1, 17, 3)), np.zeros((1, 18, 3)))


def test_rigid_align_recovers_rotation_and_translation_but_not_scale():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(20, 17, 3)) * 300
    R = _random_rotations(rng, 20)
    t = rng.normal(size=(20, 1, 3)) * 500
    moved = np.einsum("nij,nkj->nki", R, gt) + t
    np.testing.assert_allclose(metrics.rigid_align(moved, gt), gt, atol=1e-8)
    # scale is not corrected by the rigid fit, but is by the similarity fit
    scaled = 1.2 * moved
    assert metrics.mpjpe_per_joint(metrics.rigid_align(scaled, gt), gt).mean() > 1.0
    np.testing.assert_allclose(metrics.similarity_align(scaled, gt), gt, atol=1e-8)


def test_combined_alignment_equals_the_separate_ones():
    rng = np.random.default_rng(4)
    pred, gt = rng.normal(size=(2, 8, 17, 3)) * 200
    rigid, similarity = metrics.rigid_and_similarity_align(pred, gt)
    np.testing.assert_array_equal(rigid, metrics.rigid_align(pred, gt))
    np.testing.assert_array_equal(similarity, metrics.similarity_align(pred, gt))


def test_alignment_never_reflects():
    rng = np.random.default_rng(1)
    gt = rng.normal(size=(5, 17, 3)) * 300
    mirrored = gt * np.array([-1.0, 1.0, 1.0])  # a reflection fits perfectly; a rotation cannot
    for align in (metrics.rigid_align, metrics.similarity_align):
        aligned = align(mirrored, gt)
        assert metrics.mpjpe_per_joint(aligned, gt).mean() > 10.0
        # the result is still a proper rigid motion of the input: pairwise distances (up to scale) kept
        d_in = np.linalg.norm(mirrored[:, :, None] - mirrored[:, None], axis=-1)
        d_out = np.linalg.norm(aligned[:, :, None] - aligned[:, None], axis=-1)
        ratio = d_out[:, 0, 1] / d_in[:, 0, 1]
        np.testing.assert_allclose(d_out, d_in * ratio[:, None, None], rtol=1e-9, atol=1e-9)
        # and orientation-preserving: the signed volume of the first four joints keeps its sign
        def vol(p):
            return np.linalg.det(p[:, 1:4] - p[:, :1])
        assert (np.sign(vol(aligned)) == np.sign(vol(mirrored))).all()


def test_alignment_is_least_squares_optimal():
    """No small rotation perturbation of the rigid fit gives a smaller squared error."""
    rng = np.random.default_rng(2)
    pred = rng.normal(size=(1, 17, 3)) * 300
    gt = pred + rng.normal(size=(1, 17, 3)) * 40
    aligned = metrics.rigid_align(pred, gt)
    best = ((aligned - gt) ** 2).sum()
    centre = aligned.mean(axis=1, keepdims=True)
    for axis in np.eye(3):
        for angle in (-1e-3, 1e-3):
            K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
            Rp = np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K
            perturbed = (aligned - centre) @ Rp.T + centre
            assert ((perturbed - gt) ** 2).sum() > best


def test_pa_errors_match_golden_per_sample(golden_eval_dir):
    ps = np.load(golden_eval_dir / "expected_per_sample.npz")
    gt = ps["gt_rel17"].astype(np.float64)
    for key in ("predictions_64__gt_info_true", "predictions_32__gt_info_false"):
        pred = ps[f"{key}__pred_rel17"].astype(np.float64)
        np.testing.assert_allclose(metrics.mpjpe_per_joint(pred, gt), ps[f"{key}__mpjpe_joint"], atol=1e-2)
        np.testing.assert_allclose(metrics.mpjpe_per_joint(metrics.rigid_align(pred, gt), gt),
                                   ps[f"{key}__pa_rigid_joint"], atol=1e-2)
        np.testing.assert_allclose(metrics.mpjpe_per_joint(metrics.similarity_align(pred, gt), gt),
                                   ps[f"{key}__pa_similarity_joint"], atol=1e-2)


def test_mrpe():
    pred = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, -10.0]])
    gt = np.zeros((2, 3))
    out = metrics.mrpe(pred, gt)
    assert out == pytest.approx({"total": 7.5, "x": 1.5, "y": 2.0, "z": 5.0})
    np.testing.assert_allclose(metrics.root_errors(pred, gt), [[5, 3, 4, 0], [10, 0, 0, 10]])
    with pytest.raises(ValueError):
        metrics.mrpe(np.zeros((2, 3)), np.zeros((3, 3)))
