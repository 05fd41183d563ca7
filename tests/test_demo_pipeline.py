"""The real-data code path on the generated demo dataset: discovery, loading, heatmap round trip,
evaluation under known noise, and the crop of a rendered image.

Expected values are derived here: the exact realised error of the injected noise, its analytic expectation
(with a Monte-Carlo band from an independent generator), and the rendered figure's colours.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from helpers import demo_data, evaluate, geometry, h36m, pipeline

EVAL_JOINTS = 17
HEATMAP = {"output_shape": (64, 64), "depth_dim": 64}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_data.generate(tmp_path_factory.mktemp("pipeline") / "kaggle_input", seed=1, frames=1,
                              show_progress=False)


@pytest.fixture(scope="module")
def test_set(demo):
    return h36m.load_test_set(h36m.find_annotation_dir(demo.root), protocol=2)


def _encode(test_set, joint_cam, output_shape, depth_dim):
    """Camera mm -> heatmap units with the test set's boxes and root depths, stored as float32 like a model's."""
    coords = geometry.camera_to_heatmap(joint_cam, test_set.bbox, test_set.root_cam[:, 2], test_set.f, test_set.c,
                                        output_shape, depth_dim)
    return coords.astype(np.float32)


def _predictions(test_set, coords, output_shape, depth_dim):
    return {"image_id": test_set.image_id, "coords": coords, "output_shape": np.array(output_shape),
            "depth_dim": np.array(depth_dim)}


def test_discovery_and_loading_of_the_kaggle_like_layout(demo, test_set):
    assert h36m.find_annotation_dir(demo.root) == demo.root / "annotations (1)" / "annotations"
    assert len(test_set) == demo.num_test_samples
    assert (test_set.frame_idx % 64 == 0).all() and set(test_set.subject.tolist()) == {9, 11}
    assert test_set.joint_cam.shape == (len(test_set), 18, 3)
    paths = h36m.resolve_image_paths(test_set, demo.root)
    assert all(p.is_file() for p in paths)
    nested = demo.root / "S11_ACT2_16" / "S11_ACT2_16"
    assert all(p.is_relative_to(nested) for p, s in zip(paths, test_set.subject) if s == 11)
    assert len(h36m.check_images(test_set, demo.root).missing_paths) == 0
    p1 = h36m.load_test_set(demo.root, protocol=1)
    assert set(p1.subject.tolist()) == {11} and len(p1) == int((test_set.subject == 11).sum())


@pytest.mark.parametrize("output_shape, depth_dim", [((64, 64), 64), ((32, 32), 32)])
def test_ground_truth_heatmap_coordinates_decode_to_under_1mm(test_set, output_shape, depth_dim):
    coords = _encode(test_set, test_set.joint_cam, output_shape, depth_dim)
    # The demo people fit inside the crop and the +-1 m depth range.
    assert coords[..., 0].min() >= 0 and coords[..., 0].max() <= output_shape[1] - 1
    assert coords[..., 1].min() >= 0 and coords[..., 1].max() <= output_shape[0] - 1
    assert coords[..., 2].min() >= 0 and coords[..., 2].max() <= depth_dim - 1
    result = evaluate.evaluate(test_set, _predictions(test_set, coords, output_shape, depth_dim))
    assert result["num_samples"] == len(test_set)
    assert result["metrics"]["mpjpe"]["total"] < 1.0
    assert result["metrics"]["pa_mpjpe_rigid"]["total"] < 1.0


def test_ground_truth_coordinates_with_detected_boxes_and_roots(demo, test_set):
    detected = h36m.load_test_set(demo.annotation_dir, protocol=2, bbox_root=demo.bbox_root_file)
    # the demo's sidecar says what its bbox_root file holds: the demo detector's boxes, generated roots
    assert (detected.bbox_source, detected.root_source) == ("detector", "generated")
    np.testing.assert_array_equal(detected.image_id, test_set.image_id)
    assert not np.allclose(detected.root_cam, test_set.root_cam)  # the file's roots are noisy
    coords = _encode(detected, detected.joint_cam, **HEATMAP)
    result = evaluate.evaluate(detected, _predictions(detected, coords, **HEATMAP))
    assert result["metrics"]["mpjpe"]["total"] < 1.0


def test_gaussian_noise_gives_the_expected_mpjpe(test_set):
    sigma = 30.0  # mm, isotropic, independent per joint (root included)
    repeats = 8  # noise realisations of the same test set, evaluated as one larger set
    rng = np.random.default_rng(20240611)
    noise = rng.normal(0.0, sigma, (repeats,) + test_set.joint_cam.shape)
    totals, realised = [], []
    for k in range(repeats):
        coords = _encode(test_set, test_set.joint_cam + noise[k], **HEATMAP)
        result = evaluate.evaluate(test_set, _predictions(test_set, coords, **HEATMAP))
        totals.append(result["metrics"]["mpjpe"]["total"])
        assert result["metrics"]["mpjpe"]["per_joint"]["Pelvis"] < 1e-3  # root-relative: the root is exact
        # Exactly the realised error of this noise: root-relative difference, 17 joints, frame mean.
        rel = noise[k][:, :EVAL_JOINTS] - noise[k][:, :1]
        realised.append(np.linalg.norm(rel, axis=-1).mean())
        assert result["metrics"]["pa_mpjpe_rigid"]["total"] <= result["metrics"]["mpjpe"]["total"]
    np.testing.assert_allclose(totals, realised, atol=1e-2)

    # Expectation: n_j - n_0 ~ N(0, 2 sigma^2 I) is Maxwell with scale sigma*sqrt(2), mean 4 sigma / sqrt(pi);
    # Pelvis contributes 0, so the 17-joint mean is 16/17 of that.
    expected = 16 / 17 * 4 * sigma / math.sqrt(math.pi)
    # Spread of one sample's 17-joint mean (joints share the root noise), from an independent generator.
    mc = np.random.default_rng(7).normal(0.0, sigma, (200_000, EVAL_JOINTS, 3))
    per_sample = np.linalg.norm(mc - mc[:, :1], axis=-1).mean(axis=1)
    assert per_sample.mean() == pytest.approx(expected, rel=3e-3)
    band = 4 * per_sample.std() / math.sqrt(repeats * len(test_set))
    assert abs(np.mean(totals) - expected) < band, (np.mean(totals), expected, band)


def test_crop_of_a_demo_image_contains_the_centred_figure(demo, test_set):
    paths = h36m.resolve_image_paths(test_set, demo.root)
    picks = np.linspace(0, len(test_set) - 1, 24).round().astype(int)  # spread over subjects, actions, cameras
    images = [decode_jpeg(read_file(str(paths[i])), mode=ImageReadMode.RGB) for i in picks]
    crops = pipeline.crop_images(images, test_set.bbox[picks], (256, 256))
    assert crops.shape == (len(picks), 3, 256, 256) and crops.dtype == torch.uint8  # the official uint8 crop
    crops = crops.float()

    # The figure is drawn in saturated colours on a near-grey background.
    chroma = crops.max(dim=1).values - crops.min(dim=1).values
    figure = (chroma > 45).numpy()
    ys, xs = np.mgrid[0:256, 0:256]
    joints_in_crop = geometry.camera_to_heatmap(test_set.joint_cam[picks], test_set.bbox[picks],
                                                test_set.root_cam[picks, 2], test_set.f[picks], test_set.c[picks],
                                                (256, 256), 64)[:, :EVAL_JOINTS, :2]
    right_red, left_blue = [], []
    for n, mask in enumerate(figure):
        area = mask.sum()
        assert 0.02 * mask.size < area < 0.4 * mask.size
        centroid = np.array([(xs * mask).sum(), (ys * mask).sum()]) / area
        assert np.abs(centroid - 127.5).max() < 0.15 * 256, f"figure off-centre in crop {n}: {centroid}"
        frame = np.concatenate([mask[:4].ravel(), mask[-4:].ravel(), mask[:, :4].ravel(), mask[:, -4:].ravel()])
        assert frame.mean() < 0.01, f"figure touches the crop border in crop {n}"
        # The crop and the heatmap mapping agree: joints land on the drawn figure.
        col, row = np.clip(np.rint(joints_in_crop[n]).astype(int), 0, 255).T
        assert mask[row, col].mean() >= 0.8
        rgb = crops[n][:, row, col].numpy()  # (3, 17)
        right_red.append([rgb[0, j] > rgb[2, j] for j in (2, 3)])  # R_Knee, R_Ankle: red/orange
        left_blue.append([rgb[2, j] > rgb[0, j] for j in (5, 6)])  # L_Knee, L_Ankle: blue
    # Left and right differ in colour, so a flip would show (a leg may hide the other in a side view).
    assert np.mean(right_red) > 0.75 and np.mean(left_blue) > 0.75
