"""Non-square model inputs end to end: boxes padded to the input aspect ratio, depth decoded with the model's
own depth extent, and the Integral challenge checkpoint (384x288, 3D box 1485x1980 mm) run through the runner."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import environment, evaluate, h36m, runner
from helpers.geometry import camera_to_heatmap
from helpers.models.registry import MODEL_REGISTRY, get_spec
from helpers.results import RESULT_FILE

CHALLENGE = "integral_r152_challenge"
ASPECT = 288 / 384  # the challenge input's width / height


@pytest.fixture(scope="module")
def annotations(golden_eval_dir) -> Path:
    return golden_eval_dir / "annotations"


@pytest.fixture(scope="module")
def square(annotations):
    return h36m.load_test_set(annotations)


@pytest.fixture(scope="module")
def tall(annotations):
    return h36m.load_test_set(annotations, aspect_ratio=ASPECT)


def _centre(boxes: np.ndarray) -> np.ndarray:
    return boxes[:, :2] + boxes[:, 2:] / 2


# ------------------------------------------------------------------------------------------------ registry
def test_challenge_spec_states_its_geometry_and_every_other_model_keeps_the_3dmppe_cube():
    spec = get_spec(CHALLENGE)
    assert spec.input_shape == (384, 288) and spec.output_shape == (96, 72) and spec.depth_dim == 72
    assert spec.aspect_ratio == pytest.approx(0.75)
    # hm36_challenge yaml: rect_3d_width 1485, rect_3d_height 1980; Integral scales depth by the width.
    assert spec.bbox_3d_mm == (1485.0, 1980.0, 1485.0) and spec.depth_extent_mm == 1485.0
    assert "not comparable" in spec.protocol_note
    for other in MODEL_REGISTRY.values():
        if other.model_id != CHALLENGE:
            assert other.aspect_ratio == 1.0 and other.depth_extent_mm == 2000.0 and not other.protocol_note


# ------------------------------------------------------------------------------------------------- boxes
def test_ground_truth_boxes_are_padded_to_the_aspect_ratio_around_the_same_centre(square, tall):
    assert np.array_equal(square.image_id, tall.image_id)
    assert tall.aspect_ratio == ASPECT and square.aspect_ratio == 1.0
    np.testing.assert_allclose(tall.bbox[:, 2] / tall.bbox[:, 3], ASPECT, rtol=1e-12)
    np.testing.assert_allclose(_centre(tall.bbox), _centre(square.bbox), atol=1e-9)
    # helpers/README.md "Boxes", computed here: clip, then the padded box is 1.25 x the clipped box, tight on one side.
    x, y, w, h = tall.gt_bbox.T
    x1, y1 = np.maximum(0, x), np.maximum(0, y)
    clipped_w = np.minimum(tall.width - 1, x1 + np.maximum(0, w - 1)) - x1
    clipped_h = np.minimum(tall.height - 1, y1 + np.maximum(0, h - 1)) - y1
    scale_w = tall.bbox[:, 2] / (1.25 * clipped_w)
    scale_h = tall.bbox[:, 3] / (1.25 * clipped_h)
    assert (scale_w >= 1 - 1e-9).all() and (scale_h >= 1 - 1e-9).all()
    np.testing.assert_allclose(np.minimum(scale_w, scale_h), 1.0, rtol=1e-9)
    assert (scale_w > 1 + 1e-6).any(), "some boxes must actually be widened to 3:4"


def test_detected_square_boxes_become_the_inscribed_box_of_the_aspect_ratio(golden_eval_dir, annotations):
    bbox_root = golden_eval_dir / "bbox_root_human36m_output.json"
    square = h36m.load_test_set(annotations, bbox_root=bbox_root)
    tall = h36m.load_test_set(annotations, bbox_root=bbox_root, aspect_ratio=ASPECT)
    assert tall.bbox_source == "unknown" and tall.aspect_ratio == ASPECT  # a file of unknown origin
    np.testing.assert_allclose(tall.bbox[:, 2] / tall.bbox[:, 3], ASPECT, rtol=1e-12)
    np.testing.assert_allclose(_centre(tall.bbox), _centre(square.bbox), atol=1e-9)
    np.testing.assert_allclose(tall.bbox[:, 3], square.bbox[:, 3])  # the square's side is kept as the height
    np.testing.assert_array_equal(tall.root_cam, square.root_cam)


@pytest.mark.parametrize("bad", [0.0, -0.75, float("nan")])
def test_an_invalid_aspect_ratio_is_refused(annotations, bad):
    with pytest.raises(ValueError, match="aspect_ratio must be a positive number"):
        h36m.load_test_set(annotations, aspect_ratio=bad)


# ------------------------------------------------------------------------------------------------ decode
def _encoded_ground_truth(test_set, depth_extent_mm: float) -> dict:
    spec = get_spec(CHALLENGE)
    coords = camera_to_heatmap(test_set.joint_cam, test_set.bbox, test_set.root_cam[:, 2], test_set.f,
                               test_set.c, spec.output_shape, spec.depth_dim, depth_extent_mm)
    return {"image_id": test_set.image_id, "coords": coords, "output_shape": np.array(spec.output_shape),
            "depth_dim": np.array(spec.depth_dim)}


def test_non_square_ground_truth_decodes_back_with_the_models_depth_extent(tall):
    extent = get_spec(CHALLENGE).depth_extent_mm
    pred = _encoded_ground_truth(tall, extent)
    result = evaluate.evaluate(tall, pred, depth_extent_mm=extent)
    assert result["headline"]["value"] < 1.0
    assert result["predictions"]["output_shape"] == [96, 72] and result["predictions"]["depth_extent_mm"] == extent
    assert result["conventions"]["crop_aspect_ratio"] == ASPECT and result["conventions"]["depth_extent_mm"] == extent
    # Recorded in the predictions, the extent needs no argument; the 2000 mm default would be wrong by mm.
    assert evaluate.evaluate(tall, {**pred, "depth_extent_mm": np.array(extent)})["headline"]["value"] < 1.0
    assert evaluate.evaluate(tall, pred)["headline"]["value"] > 10.0
    with pytest.raises(evaluate.PredictionError, match="depth_extent_mm 1485 but 2000"):
        evaluate.evaluate(tall, {**pred, "depth_extent_mm": np.array(extent)}, depth_extent_mm=2000.0)


def test_predictions_made_on_other_crop_boxes_are_refused(square, tall):
    extent = get_spec(CHALLENGE).depth_extent_mm
    pred = _encoded_ground_truth(tall, extent)
    with pytest.raises(evaluate.PredictionError, match="other crop boxes"):
        evaluate.evaluate(square, {**pred, "bbox": tall.bbox}, depth_extent_mm=extent)
    with pytest.raises(evaluate.PredictionError, match=r"aspect_ratio=0\.75"):
        evaluate.evaluate(square, {**pred, "input_shape": np.array([384, 288])}, depth_extent_mm=extent)
    ok = evaluate.evaluate(tall, {**pred, "bbox": tall.bbox, "input_shape": np.array([384, 288])},
                           depth_extent_mm=extent)
    assert ok["headline"]["value"] < 1.0


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def challenge_run(tmp_path_factory):
    """The challenge model, random demo weights, 4 demo images through the notebook runner."""
    cache = tmp_path_factory.getbasetemp() / "demo-cache"  # shared with the runner tests
    out = tmp_path_factory.mktemp("nonsquare-out")
    patch = pytest.MonkeyPatch()
    patch.setattr(environment, "default_input_roots", lambda *a, **k: [])
    try:
        run = runner.prepare(runner.RunParams(model=CHALLENGE, cache_dir=str(cache), output_dir=str(out),
                                              batch_size=4, image_limit=4))
        run.infer()
        run.evaluate()
        run.save()
    finally:
        patch.undo()
    return run


def test_the_challenge_model_runs_end_to_end_on_3_by_4_crops(challenge_run):
    run = challenge_run
    assert run.weights_kind == "random_demo"
    with np.load(run.inference["predictions_path"], allow_pickle=False) as npz:
        pred = {k: npz[k] for k in npz.files}
    assert tuple(pred["output_shape"]) == (96, 72) and int(pred["depth_dim"]) == 72
    assert tuple(pred["input_shape"]) == (384, 288) and float(pred["depth_extent_mm"]) == 1485.0
    # The crops were cut from 3:4 boxes: one image pixel maps to the same crop scale along x and y.
    np.testing.assert_allclose(pred["bbox"][:, 2] / 288, pred["bbox"][:, 3] / 384, rtol=1e-9)
    coords = pred["coords"]
    assert coords.shape == (4, 18, 3)
    assert (coords[..., 0] >= 0).all() and (coords[..., 0] <= 71).all()
    assert (coords[..., 1] >= 0).all() and (coords[..., 1] <= 95).all()
    assert (coords[..., 2] >= 0).all() and (coords[..., 2] <= 71).all()

    saved = json.loads((run.output_dir / RESULT_FILE).read_text())
    assert saved["predictions"]["output_shape"] == [96, 72] and saved["predictions"]["depth_extent_mm"] == 1485.0
    conv = saved["conventions"]
    assert conv["crop_aspect_ratio"] == pytest.approx(0.75) and conv["depth_extent_mm"] == 1485.0
    assert "not comparable to Protocol 1/2" in conv["protocol_note"]
    assert saved["num_samples"] == 4 and saved["partial"] is True
    assert saved["model"]["input_shape"] == [384, 288]
    grade = run.paper_comparison()["grade"].iloc[0]
    assert grade.startswith("n/a") and "another protocol" in grade


def test_rescore_reads_the_aspect_ratio_and_depth_extent_from_the_predictions(challenge_run, tmp_path, capsys):
    run = challenge_run
    out = tmp_path / "rescored.json"
    args = ["--annotations", str(run.annotation_dir), "--predictions", run.inference["predictions_path"],
            "--allow-partial", "--out", str(out)]
    assert evaluate.main(args) == 0
    rescored = json.loads(out.read_text())
    assert rescored["headline"]["value"] == pytest.approx(run.result["headline"]["value"], rel=1e-12)
    assert rescored["conventions"]["crop_aspect_ratio"] == pytest.approx(0.75)
    assert "protocol_note" in rescored["conventions"]
    # Square boxes do not match the crops the predictions were made on: a clear refusal, no file.
    refused = tmp_path / "refused.json"
    assert evaluate.main(args[:-1] + [str(refused), "--aspect-ratio", "1"]) == 1
    assert "aspect_ratio=0.75" in capsys.readouterr().err
    assert not refused.exists()
