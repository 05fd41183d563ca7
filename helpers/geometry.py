"""Numpy geometry of the 3DMPPE test-time pipeline (helpers/README.md, "The test-time pipeline"), float64 throughout.

Used by the evaluator, the torch pipeline (boxes, RootNet k) and the demo generator (the inverse
`camera_to_heatmap`). Every function broadcasts over a leading batch: per-sample `f` and `c` are
(N, 2) arrays, a single camera may be given as (2,).
"""
from __future__ import annotations

import numpy as np

from .protocol import BBOX_3D_SHAPE_MM

BOX_EXTENSION = 1.25  # processed boxes are 1.25 x the (padded) clipped box
DEPTH_EXTENT_MM = BBOX_3D_SHAPE_MM[2]  # depth bins span +-1000 mm around the root


def _as_float(a, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise ValueError(f"{name} must be an array, got shape {arr.shape}")
    return arr


def _per_sample(a: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape a per-sample (N, k) array (or a shared (k,) one) to broadcast against an ndim-array."""
    if a.ndim == 1:
        return a
    return a.reshape(a.shape[:1] + (1,) * (ndim - 2) + a.shape[-1:])


def process_bboxes(bboxes, widths, heights, aspect_ratio: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised `process_bbox`: (N, 4) `[x, y, w, h]` boxes -> (processed boxes (N, 4), valid (N,) bool).

    Clip to the image (x2 is computed from the clipped x1, extent w - 1, so a box starting left of the
    image is shifted, not cropped), pad to `aspect_ratio` (input width / height) around the centre,
    then scale by 1.25. Rows that are empty after clipping are invalid and hold NaN.
    """
    b = _as_float(bboxes, "bboxes")
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"bboxes must have shape (N, 4), got {b.shape}")
    width = np.broadcast_to(np.asarray(widths, dtype=np.float64), b.shape[:1])
    height = np.broadcast_to(np.asarray(heights, dtype=np.float64), b.shape[:1])
    x, y, w, h = b.T
    x1 = np.maximum(0.0, x)
    y1 = np.maximum(0.0, y)
    x2 = np.minimum(width - 1, x1 + np.maximum(0.0, w - 1))
    y2 = np.minimum(height - 1, y1 + np.maximum(0.0, h - 1))
    clipped_w = x2 - x1
    clipped_h = y2 - y1
    # Upstream's emptiness test, plus a zero-size box, which no crop or k value can use.
    valid = (w * h > 0) & (x2 >= x1) & (y2 >= y1) & ((clipped_w > 0) | (clipped_h > 0))
    cx = x1 + clipped_w / 2.0
    cy = y1 + clipped_h / 2.0
    padded_w = np.where(clipped_w < aspect_ratio * clipped_h, clipped_h * aspect_ratio, clipped_w)
    padded_h = np.where(clipped_w > aspect_ratio * clipped_h, clipped_w / aspect_ratio, clipped_h)
    out_w = padded_w * BOX_EXTENSION
    out_h = padded_h * BOX_EXTENSION
    out = np.stack([cx - out_w / 2.0, cy - out_h / 2.0, out_w, out_h], axis=1)
    out[~valid] = np.nan
    return out, valid


def process_bbox(bbox, width: float, height: float, aspect_ratio: float = 1.0) -> np.ndarray | None:
    """One box `[x, y, w, h]` -> the processed (4,) box, or None when it is empty inside the image."""
    box = _as_float(bbox, "bbox")
    if box.shape != (4,):
        raise ValueError(f"bbox must have 4 values [x, y, w, h], got shape {box.shape}")
    out, valid = process_bboxes(box[None], [width], [height], aspect_ratio)
    return out[0] if valid[0] else None


def fit_boxes_to_aspect(bboxes, aspect_ratio: float) -> np.ndarray:
    """(N, 4) processed boxes -> the largest box of `aspect_ratio` (width / height) inside each, same centre.

    For detected boxes, which RootNet stores already processed for a square input: the square cannot tell
    the person's original extent, and the inscribed box is what `process_bboxes` gives at that aspect
    ratio whenever the person's box was no wider than the aspect ratio allows (a standing person at 3:4);
    a wider person loses the sides of the crop, never the scale.
    """
    b = _as_float(bboxes, "bboxes")
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"bboxes must have shape (N, 4), got {b.shape}")
    if not aspect_ratio > 0:
        raise ValueError(f"aspect_ratio must be positive, got {aspect_ratio}")
    x, y, w, h = b.T
    out_w = np.minimum(w, h * aspect_ratio)
    out_h = np.minimum(h, w / aspect_ratio)
    return np.stack([x + (w - out_w) / 2.0, y + (h - out_h) / 2.0, out_w, out_h], axis=1)


def world_to_camera(X, R, t) -> np.ndarray:
    """X_cam = R . X_world + t. X (..., 3); R (3, 3) and t (3,), or per sample R (N, 3, 3), t (N, 3)."""
    X = _as_float(X, "X")
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if R.ndim == 2:
        return X @ R.T + t
    rotated = np.einsum("nij,n...j->n...i", R, X)
    return rotated + _per_sample(t, X.ndim)


def camera_to_pixel(X, f, c) -> np.ndarray:
    """Pinhole projection (..., 3) camera mm -> (..., 3) `[u, v, Z]` (pixels, pixels, mm)."""
    X = _as_float(X, "X")
    f = _per_sample(np.asarray(f, dtype=np.float64), X.ndim)
    c = _per_sample(np.asarray(c, dtype=np.float64), X.ndim)
    Z = X[..., 2:3]
    uv = X[..., :2] / Z * f + c
    return np.concatenate([uv, Z], axis=-1)


def pixel_to_camera(uvz, f, c) -> np.ndarray:
    """Inverse of `camera_to_pixel`: (..., 3) `[u, v, Z]` -> camera mm."""
    uvz = _as_float(uvz, "uvz")
    f = _per_sample(np.asarray(f, dtype=np.float64), uvz.ndim)
    c = _per_sample(np.asarray(c, dtype=np.float64), uvz.ndim)
    Z = uvz[..., 2:3]
    xy = (uvz[..., :2] - c) / f * Z
    return np.concatenate([xy, Z], axis=-1)


def _check_heatmap_args(coords, bbox, root_z):
    coords = _as_float(coords, "coords")
    if coords.ndim != 3 or coords.shape[2] != 3:
        raise ValueError(f"coords must have shape (N, J, 3), got {coords.shape}")
    bbox = _as_float(bbox, "bbox").reshape(-1, 4)
    root_z = np.asarray(root_z, dtype=np.float64).reshape(-1)
    n = coords.shape[0]
    if bbox.shape[0] != n or root_z.shape[0] != n:
        raise ValueError(f"bbox {bbox.shape} and root_z {root_z.shape} must have one row per sample ({n})")
    return coords, bbox, root_z


def heatmap_to_camera(coords, bbox, root_z, f, c, output_shape, depth_dim: int,
                      depth_extent_mm: float = DEPTH_EXTENT_MM) -> np.ndarray:
    """Heatmap units (N, J, 3) -> camera mm (N, J, 3) (helpers/README.md, "Back to camera space").

    x, y are output-heatmap pixels mapped into the box (no half-pixel offset); z is a depth bin, bin
    depth_dim/2 being the root depth `root_z` and the full range +-depth_extent_mm/2.
    """
    coords, bbox, root_z = _check_heatmap_args(coords, bbox, root_z)
    out_h, out_w = (float(s) for s in output_shape)
    x_img = coords[..., 0] / out_w * bbox[:, 2:3] + bbox[:, 0:1]
    y_img = coords[..., 1] / out_h * bbox[:, 3:4] + bbox[:, 1:2]
    Z = (coords[..., 2] / float(depth_dim) * 2.0 - 1.0) * (depth_extent_mm / 2.0) + root_z[:, None]
    return pixel_to_camera(np.stack([x_img, y_img, Z], axis=-1), f, c)


def camera_to_heatmap(joint_cam, bbox, root_z, f, c, output_shape, depth_dim: int,
                      depth_extent_mm: float = DEPTH_EXTENT_MM) -> np.ndarray:
    """Exact inverse of `heatmap_to_camera`: camera mm (N, J, 3) -> heatmap units (N, J, 3)."""
    joint_cam, bbox, root_z = _check_heatmap_args(joint_cam, bbox, root_z)
    out_h, out_w = (float(s) for s in output_shape)
    uvz = camera_to_pixel(joint_cam, f, c)
    x = (uvz[..., 0] - bbox[:, 0:1]) / bbox[:, 2:3] * out_w
    y = (uvz[..., 1] - bbox[:, 1:2]) / bbox[:, 3:4] * out_h
    z = ((uvz[..., 2] - root_z[:, None]) / (depth_extent_mm / 2.0) + 1.0) / 2.0 * float(depth_dim)
    return np.stack([x, y, z], axis=-1)


def rootnet_k_value(bbox, f, real_size_mm=(2000.0, 2000.0)) -> np.ndarray:
    """RootNet's depth prior k = sqrt(real_w . real_h . fx . fy / (w . h)) on the processed box, (N, 1) float32."""
    bbox = _as_float(bbox, "bbox").reshape(-1, 4)
    f = np.broadcast_to(np.asarray(f, dtype=np.float64), (bbox.shape[0], 2))
    area = bbox[:, 2] * bbox[:, 3]
    if np.any(area <= 0):
        raise ValueError("rootnet_k_value needs boxes with positive width and height")
    k = np.sqrt(real_size_mm[0] * real_size_mm[1] * f[:, 0] * f[:, 1] / area)
    return k.astype(np.float32)[:, None]
