"""Pose and root error metrics, batched numpy (in the spirit of VideoPose3D `common/loss.py`).

All functions take (N, J, 3) arrays in mm and fit one alignment per sample with a single batched
SVD, so a full Protocol-2 evaluation takes a fraction of a second.
"""
from __future__ import annotations

import numpy as np


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred and gt must both be (N, J, 3); got {pred.shape} and {gt.shape}")
    return pred, gt


def mpjpe_per_joint(pred, gt) -> np.ndarray:
    """Euclidean error of every joint, (N, J) mm."""
    pred, gt = _pair(pred, gt)
    return np.linalg.norm(pred - gt, axis=-1)


def _procrustes(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares alignment of each pred to its gt with a proper rotation.

    The best rotation is the same with or without scale, so one SVD gives both alignments:
    returns (rigid = R.p + t, similarity = s.R.p + t').
    """
    mu_pred = pred.mean(axis=1, keepdims=True)
    mu_gt = gt.mean(axis=1, keepdims=True)
    p0 = pred - mu_pred
    g0 = gt - mu_gt
    cross = np.swapaxes(p0, 1, 2) @ g0  # sum_j p_j g_j^T, (N, 3, 3)
    U, S, Vt = np.linalg.svd(cross)
    V, Ut = np.swapaxes(Vt, 1, 2), np.swapaxes(U, 1, 2)
    # A reflection would fit better for mirrored poses; flip the weakest axis to keep det(R) = +1.
    reflect = np.linalg.det(V @ Ut) < 0
    D = np.ones_like(S)
    D[reflect, -1] = -1.0
    R = (V * D[:, None, :]) @ Ut  # V . D . U^T
    rotated = p0 @ np.swapaxes(R, 1, 2)  # row vectors: (R p)^T = p^T R^T
    scale = (S * D).sum(axis=1) / (p0 ** 2).sum(axis=(1, 2))
    return rotated + mu_gt, scale[:, None, None] * rotated + mu_gt


def rigid_align(pred, gt) -> np.ndarray:
    """Rotation + translation, no scale: the official 3DMPPE `rigid_align` (Kabsch with reflection fix)."""
    return _procrustes(*_pair(pred, gt))[0]


def similarity_align(pred, gt) -> np.ndarray:
    """Scale + rotation + translation: the alignment of VideoPose3D `p_mpjpe`."""
    return _procrustes(*_pair(pred, gt))[1]


def rigid_and_similarity_align(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    """Both alignments from one SVD: (rigid_align(pred, gt), similarity_align(pred, gt))."""
    return _procrustes(*_pair(pred, gt))


def root_errors(pred_root, gt_root) -> np.ndarray:
    """Per-sample root errors (N, 4): Euclidean distance, then |dx|, |dy|, |dz| (mm)."""
    pred_root = np.asarray(pred_root, dtype=np.float64)
    gt_root = np.asarray(gt_root, dtype=np.float64)
    if pred_root.shape != gt_root.shape or pred_root.ndim != 2 or pred_root.shape[1] != 3:
        raise ValueError(f"pred_root and gt_root must both be (N, 3); got {pred_root.shape} and {gt_root.shape}")
    diff = pred_root - gt_root
    return np.concatenate([np.linalg.norm(diff, axis=1, keepdims=True), np.abs(diff)], axis=1)


def mrpe(pred_root, gt_root) -> dict:
    """Mean root position error (RootNet's MRPE): mean Euclidean error and per-axis mean absolute error."""
    mean = root_errors(pred_root, gt_root).mean(axis=0)
    return {"total": float(mean[0]), "x": float(mean[1]), "y": float(mean[2]), "z": float(mean[3])}
