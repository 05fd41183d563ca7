"""Geometry of the 3DMPPE pipeline: boxes, projections, heatmap <-> camera, RootNet k."""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import geometry as g


def test_process_bbox_inside_image_pads_to_square_and_extends():
    # [100, 200, 51, 101]: clipped extent 50 x 100, centre (125, 250); padded to 100 x 100, x1.25 -> 125.
    out = g.process_bbox([100, 200, 51, 101], 1000, 1000)
    np.testing.assert_allclose(out, [125 - 62.5, 250 - 62.5, 125, 125])


def test_process_bbox_left_border_shifts_instead_of_cropping():
    # x = -20 clips x1 to 0, but x2 = x1 + (w - 1) is measured from the clipped x1: the box is shifted.
    out = g.process_bbox([-20, 10, 101, 41], 1000, 1000)
    # clipped box [0, 10, 100, 40] -> centre (50, 30), padded 100 x 100, extended 125 x 125
    np.testing.assert_allclose(out, [50 - 62.5, 30 - 62.5, 125, 125])


def test_process_bbox_right_border_crops():
    # x2 = min(999, 950 + 99) = 999: the right part is cut, width 49.
    out = g.process_bbox([950, 500, 100, 20], 1000, 1000)
    w = 49.0
    np.testing.assert_allclose(out, [950 + w / 2 - 1.25 * w / 2, 500 + 19 / 2 - 1.25 * w / 2, 1.25 * w, 1.25 * w])


def test_process_bbox_aspect_ratio_pads_the_short_side():
    # 4:3 input (aspect_ratio = width / height): a 40 x 40 box is too narrow, so its width becomes 40 * 4/3.
    out = g.process_bbox([0, 0, 41, 41], 1000, 1000, aspect_ratio=4 / 3)
    w, h = 40 * 4 / 3, 40.0
    np.testing.assert_allclose(out, [20 - 1.25 * w / 2, 20 - 1.25 * h / 2, 1.25 * w, 1.25 * h])


@pytest.mark.parametrize("box", [[1200, 10, 50, 50], [10, 10, 0, 50], [10, 10, -5, 50], [10, 1500, 20, 20]])
def test_process_bbox_empty_is_none(box):
    assert g.process_bbox(box, 1000, 1000) is None


def test_process_bboxes_matches_scalar_version():
    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.uniform(-100, 1000, 200), rng.uniform(-100, 1000, 200),
                             rng.uniform(-10, 400, 200), rng.uniform(-10, 400, 200)])
    out, valid = g.process_bboxes(boxes, np.full(200, 1000), np.full(200, 1002))
    assert valid.sum() > 100 and (~valid).sum() > 0
    for box, row, ok in zip(boxes, out, valid):
        single = g.process_bbox(box, 1000, 1002)
        assert (single is not None) == ok
        if ok:
            np.testing.assert_allclose(row, single)
        else:
            assert np.isnan(row).all()


def test_process_bbox_reproduces_golden_processed_boxes(golden_eval_dir):
    ps = np.load(golden_eval_dir / "expected_per_sample.npz")
    data = {}
    for s in (9, 11):
        d = json.loads((golden_eval_dir / "annotations" / f"Human36M_subject{s}_data.json").read_text())
        images = {im["id"]: im for im in d["images"]}
        data.update({a["image_id"]: (a["bbox"], images[a["image_id"]]) for a in d["annotations"]})
    raw = np.array([data[i][0] for i in ps["image_id"]])
    widths = np.array([data[i][1]["width"] for i in ps["image_id"]])
    heights = np.array([data[i][1]["height"] for i in ps["image_id"]])
    out, valid = g.process_bboxes(raw, widths, heights)
    assert valid.all()
    np.testing.assert_allclose(out, ps["gt_info_true__bbox"], atol=1e-9)
    # the fixture has boxes past the left and top borders: the shift behaviour is exercised
    assert (raw[:, 0] < 0).any() and (raw[:, 1] < 0).any()


def test_world_to_camera_single_and_batched_agree():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(4, 18, 3)) * 500
    R = np.linalg.qr(rng.normal(size=(4, 3, 3)))[0]
    t = rng.normal(size=(4, 3)) * 1000
    batched = g.world_to_camera(X, R, t)
    for n in range(4):
        np.testing.assert_allclose(batched[n], (R[n] @ X[n].T).T + t[n])
        np.testing.assert_allclose(g.world_to_camera(X[n], R[n], t[n]), batched[n])


def test_pixel_camera_roundtrip_and_projection_formula():
    rng = np.random.default_rng(2)
    X = np.column_stack([rng.uniform(-800, 800, 50), rng.uniform(-800, 800, 50), rng.uniform(3000, 7000, 50)])
    X = X.reshape(10, 5, 3)
    f = rng.uniform(1100, 1200, (10, 2))
    c = rng.uniform(480, 520, (10, 2))
    uvz = g.camera_to_pixel(X, f, c)
    np.testing.assert_allclose(uvz[..., 0], X[..., 0] / X[..., 2] * f[:, None, 0] + c[:, None, 0])
    np.testing.assert_allclose(uvz[..., 2], X[..., 2])
    np.testing.assert_allclose(g.pixel_to_camera(uvz, f, c), X, atol=1e-9)


def test_heatmap_to_camera_matches_upstream_backprojection(golden_eval_dir):
    """The fixture's back-projected, root-relative predictions (upstream float32 arithmetic)."""
    ps = np.load(golden_eval_dir / "expected_per_sample.npz")
    pred = np.load(golden_eval_dir / "predictions_64.npz")
    order = {int(i): k for k, i in enumerate(pred["image_id"])}
    rows = [order[int(i)] for i in ps["image_id"]]
    cams = {}
    for s in (9, 11):
        cams[s] = json.loads((golden_eval_dir / "annotations" / f"Human36M_subject{s}_camera.json").read_text())
    data = {}
    for s in (9, 11):
        d = json.loads((golden_eval_dir / "annotations" / f"Human36M_subject{s}_data.json").read_text())
        data.update({im["id"]: (s, im["cam_idx"]) for im in d["images"]})
    f = np.array([cams[data[i][0]][str(data[i][1])]["f"] for i in ps["image_id"]])
    c = np.array([cams[data[i][0]][str(data[i][1])]["c"] for i in ps["image_id"]])
    cam = g.heatmap_to_camera(pred["coords"][rows], ps["gt_info_true__bbox"], ps["gt_info_true__root_cam"][:, 2],
                              f, c, (64, 64), 64)
    rel = cam - cam[:, :1]
    np.testing.assert_allclose(rel[:, :17], ps["predictions_64__gt_info_true__pred_rel17"], atol=1e-2)


def test_camera_to_heatmap_is_exact_inverse():
    rng = np.random.default_rng(3)
    n = 6
    coords = rng.uniform(0, 31, (n, 18, 3))
    bbox = np.column_stack([rng.uniform(0, 300, n), rng.uniform(0, 300, n), np.full(n, 400.0), np.full(n, 400.0)])
    root_z = rng.uniform(3000, 6000, n)
    f = rng.uniform(1100, 1200, (n, 2))
    c = rng.uniform(480, 520, (n, 2))
    cam = g.heatmap_to_camera(coords, bbox, root_z, f, c, (32, 32), 32)
    # depth bin depth_dim/2 is the root depth; +-1000 mm at the ends
    mid = g.heatmap_to_camera(np.full((n, 1, 3), 16.0), bbox, root_z, f, c, (32, 32), 32)
    np.testing.assert_allclose(mid[:, 0, 2], root_z)
    np.testing.assert_allclose(cam[..., 2], (coords[..., 2] / 32 * 2 - 1) * 1000 + root_z[:, None])
    back = g.camera_to_heatmap(cam, bbox, root_z, f, c, (32, 32), 32)
    np.testing.assert_allclose(back, coords, atol=1e-9)


def test_rootnet_k_value():
    bbox = np.array([[0, 0, 400.0, 400.0], [10, 10, 200.0, 250.0]])
    f = np.array([[1145.0, 1143.0], [1150.0, 1148.0]])
    k = g.rootnet_k_value(bbox, f)
    assert k.shape == (2, 1) and k.dtype == np.float32
    np.testing.assert_allclose(k[:, 0], [np.sqrt(4e6 * 1145 * 1143 / 160000), np.sqrt(4e6 * 1150 * 1148 / 50000)],
                               rtol=1e-6)
    with pytest.raises(ValueError):
        g.rootnet_k_value([[0, 0, 0, 10]], [[1000, 1000]])
