"""helpers.report: grading, paper comparison, tables, plots and the random-demo marker.

`make_result` (also used by test_consolidate and test_publish) builds result.json dicts by the schema in
helpers/README.md; every number in it is chosen here, so the tests compare against values they set.
"""
from __future__ import annotations

import math
from dataclasses import replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers import report  # noqa: E402
from helpers.models.registry import MODEL_REGISTRY, ModelSpec, PaperResult, get_spec  # noqa: E402
from helpers.protocol import ACTION_NAMES, EVAL_JOINT_NAMES, conventions_for  # noqa: E402
from helpers.result_schema import validate_result  # noqa: E402

POSE_METRICS = ("mpjpe", "pa_mpjpe_rigid", "pa_mpjpe_similarity", "pa_mpjpe_rigid_fit18")
# metric scale relative to MPJPE, so the four pose metrics differ visibly
POSE_METRIC_SCALE = {"mpjpe": 1.0, "pa_mpjpe_rigid": 0.7, "pa_mpjpe_similarity": 0.65, "pa_mpjpe_rigid_fit18": 0.68}


def _pose_metric(base: float, scale: float) -> dict:
    per_action = {a: round(base * scale + i, 3) for i, a in enumerate(ACTION_NAMES)}
    per_joint = {j: (0.0 if j == "Pelvis" else round(base * scale + 0.5 * k, 3))
                 for k, j in enumerate(EVAL_JOINT_NAMES)}
    return {
        "total": round(base * scale, 3),
        "action_mean": round(sum(per_action.values()) / len(per_action), 6),
        "per_action": per_action,
        "per_joint": per_joint,
        "per_subject": {"S9": round(base * scale - 1, 3), "S11": round(base * scale + 1, 3)},
    }


def make_result(kind: str = "pose", *, model_id: str = "convnextpose_S", base: float = 52.0, protocol: int = 2,
                detected: bool = False, boxes: str = "ground_truth", roots: str = "ground_truth",
                sources: dict | None = None, weights_kind: str = "released", partial: bool = False,
                gmacs: float | None = 1.76, num_params: int | None = 7_438_976, images_per_s: float = 250.0,
                flip_test: bool = True, precision: str = "fp32", batch_size: int = 64) -> dict:
    """A schema-conforming result.json dict; `base` is the headline value in mm. `detected`: the papers' detected
    setting (detector boxes, released RootNet roots); else `boxes` and `roots` name the sources."""
    expected = 8695 if protocol == 2 else 3683
    samples = 500 if partial else expected
    if detected:
        boxes, roots = "detector", "rootnet_released"
    conv = conventions_for(protocol, bbox_source=boxes, root_source=roots, flip_test=flip_test,
                           sources=sources).to_dict()
    if kind == "root":  # as helpers.evaluate.evaluate_roots writes it
        conv["root_source"] = "evaluated (model output)"
    if kind == "pose":
        metrics = {m: _pose_metric(base, POSE_METRIC_SCALE[m]) for m in POSE_METRICS}
        headline_metric = "mpjpe" if protocol == 2 else "pa_mpjpe_rigid_fit18"
        headline = {"metric": headline_metric, "value": metrics[headline_metric]["total"]}
    else:
        metrics = {"mrpe": {"total": base, "x": 20.0, "y": 21.0, "z": base - 10.0,
                            "per_action": {a: round(base + 2 * i, 3) for i, a in enumerate(ACTION_NAMES)},
                            "per_subject": {"S9": base - 3, "S11": base + 3}}}
        headline = {"metric": "mrpe", "value": base}
    result = {
        "schema_version": 1,
        "kind": kind,
        "created_utc": "2025-01-01T00:00:00Z",
        "num_samples": samples,
        "num_expected": expected,
        "partial": partial,
        "conventions": conv,
        "metrics": metrics,
        "headline": headline,
        "model": {"model_id": model_id, "family": model_id.split("_")[0], "variant": "x",
                  "num_params": num_params, "gmacs": gmacs},
        "weights": {"kind": weights_kind, "note": "synthetic test result"},
        "timing": {"inference_s": samples / images_per_s, "images": samples, "images_per_s": images_per_s,
                   "evaluation_s": 1.0, "total_s": samples / images_per_s + 1.0},
        "settings": {"batch_size": batch_size, "precision": precision, "device": "cuda:0", "world_size": 1,
                     "flip_test": flip_test, "image_limit": 500 if partial else None, "channels_last": False,
                     "skip_missing_images": False},
    }
    spec = MODEL_REGISTRY.get(model_id)
    if spec is not None:
        result["model"].update(family=spec.family, variant=spec.variant)
    if partial:
        result["missing"] = {"count": expected - samples, "first_image_ids": [1, 2, 3]}
    return result


FAKE_SPEC = ModelSpec(model_id="fake_pose", family="fake", variant="v", builder="none:none",
                      paper=PaperResult(p2_mpjpe=50.0, p1_pa_mpjpe=35.0, p2_mpjpe_detected=53.0, source="test paper"))


def test_factory_results_conform_to_schema():
    for kwargs in ({}, {"weights_kind": "random_demo"}, {"partial": True}, {"protocol": 1},
                   {"kind": "root", "model_id": "rootnet", "base": 120.0}):
        validate_result(make_result(**kwargs))


@pytest.mark.parametrize("delta, grade", [
    (0.0, "excellent"), (0.999, "excellent"), (-0.999, "excellent"), (1.0, "very good"), (-1.5, "very good"),
    (1.999, "very good"), (2.0, "acceptable"), (-4.99, "acceptable"), (5.0, "investigate"), (-12.0, "investigate"),
])
def test_grade_delta_boundaries(delta, grade):
    assert report.grade_delta(delta) == grade


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_grade_delta_rejects_non_finite(bad):
    with pytest.raises(ValueError, match="finite"):
        report.grade_delta(bad)


def test_paper_comparison_protocol2_ground_truth():
    result = make_result(model_id="fake_pose", base=51.5)
    table = report.paper_comparison(result, FAKE_SPEC)
    row = table.loc["MPJPE"]
    assert row["measured (mm)"] == pytest.approx(51.5)
    assert row["paper (mm)"] == 50.0
    assert row["Δ (mm)"] == pytest.approx(1.5)
    assert row["grade"] == "very good"
    assert row["setting"] == "Protocol 2, ground-truth boxes, ground-truth roots, flip test"


def test_paper_comparison_uses_detected_and_protocol1_values():
    detected = report.paper_comparison(make_result(model_id="fake_pose", base=53.4, detected=True), FAKE_SPEC)
    assert detected.loc["MPJPE", "paper (mm)"] == 53.0
    assert detected.loc["MPJPE", "grade"] == "excellent"
    p1 = make_result(model_id="fake_pose", base=60.0, protocol=1)
    table = report.paper_comparison(p1, FAKE_SPEC)
    measured = p1["metrics"]["pa_mpjpe_rigid_fit18"]["total"]
    assert table.loc["PA-MPJPE rigid fit18", "measured (mm)"] == pytest.approx(measured)
    assert table.loc["PA-MPJPE rigid fit18", "Δ (mm)"] == pytest.approx(measured - 35.0)


def test_paper_comparison_without_published_value_is_not_graded():
    spec = replace(FAKE_SPEC, paper=PaperResult(p2_mpjpe=50.0))  # no detected value published
    table = report.paper_comparison(make_result(model_id="fake_pose", detected=True), spec)
    assert np.isnan(table.loc["MPJPE", "paper (mm)"])
    assert table.loc["MPJPE", "grade"].startswith("n/a")


def test_paper_comparison_random_demo_is_not_graded_and_marked():
    table = report.paper_comparison(make_result(model_id="fake_pose", weights_kind="random_demo"), FAKE_SPEC)
    assert table.loc["MPJPE", "grade"] == "n/a: random demo weights"
    assert report.DEMO_MARKER in repr(table)


def test_paper_comparison_partial_run_says_so():
    table = report.paper_comparison(make_result(model_id="fake_pose", base=50.2, partial=True), FAKE_SPEC)
    assert table.loc["MPJPE", "grade"] == "excellent (partial run: 500 of 8695 samples)"


def test_paper_comparison_rootnet_mrpe():
    result = make_result("root", model_id="rootnet", base=121.0)
    table = report.paper_comparison(result, get_spec("rootnet"))
    assert list(table.index) == ["MRPE", "MRPE x", "MRPE y", "MRPE z"]
    assert table.loc["MRPE", "Δ (mm)"] == pytest.approx(1.0)
    assert table.loc["MRPE x", "Δ (mm)"] == pytest.approx(20.0 - 23.3)
    assert table.loc["MRPE z", "Δ (mm)"] == pytest.approx(111.0 - 108.1)


def test_paper_comparison_rootnet_detected_boxes_not_graded():
    table = report.paper_comparison(make_result("root", model_id="rootnet", detected=True), get_spec("rootnet"))
    assert table["paper (mm)"].isna().all()
    assert table.loc["MRPE", "grade"] == "n/a: MRPE is published for protocol 2 with ground-truth boxes only"
    assert table.loc["MRPE", "setting"] == "Protocol 2, detector boxes, flip test"


@pytest.mark.parametrize("boxes, roots, sources, reason", [
    # ground-truth boxes with RootNet roots: no paper published it, so no number is borrowed
    ("ground_truth", "rootnet_run", {"roots": {"source": "rootnet_run", "weights": "released"}},
     "n/a: no published number for ground-truth boxes with RootNet roots"),
    ("ground_truth", "rootnet_released", None, "n/a: no published number for ground-truth boxes with RootNet roots"),
    # our RootNet run with weights that are not the released checkpoint
    ("detector", "rootnet_run", {"roots": {"source": "rootnet_run", "weights": "unknown"}},
     "n/a: the roots come from a RootNet run with unknown weights, not the released checkpoint"),
    ("unknown", "unknown", None, "n/a: no published number for boxes of unknown origin, roots of unknown origin"),
    ("detector", "generated", None, "n/a: no published number for detector boxes, generated demo roots"),
    # results written before the two facts were told apart: the file may have held ground-truth boxes
    ("detected", "detected", None, "n/a: written before box and root sources were recorded separately"),
])
def test_paper_comparison_only_like_for_like(boxes, roots, sources, reason):
    table = report.paper_comparison(make_result(model_id="posenet", boxes=boxes, roots=roots, sources=sources),
                                    get_spec("posenet"))
    assert np.isnan(table.loc["MPJPE", "paper (mm)"])
    assert table.loc["MPJPE", "grade"].startswith(reason)


def test_paper_comparison_detected_number_for_detector_boxes_and_rootnet_roots():
    released = make_result(model_id="posenet", base=54.9, detected=True)
    table = report.paper_comparison(released, get_spec("posenet"))
    assert table.loc["MPJPE", "paper (mm)"] == 54.4 and table.loc["MPJPE", "grade"] == "excellent"
    assert table.loc["MPJPE", "setting"] == "Protocol 2, detector boxes, released RootNet roots, flip test"
    # our own RootNet run with the released checkpoint on detector boxes is the same setting
    ours = make_result(model_id="posenet", base=55.6, boxes="detector", roots="rootnet_run",
                       sources={"roots": {"source": "rootnet_run", "weights": "released"}})
    table = report.paper_comparison(ours, get_spec("posenet"))
    assert table.loc["MPJPE", "paper (mm)"] == 54.4 and table.loc["MPJPE", "grade"] == "very good"
    assert "detector boxes, RootNet roots (this run)" in table.loc["MPJPE", "setting"]


def test_paper_comparison_refuses_a_bbox_root_file_of_another_protocol():
    check = {"status": "mismatch", "message": "the bbox_root file's roots were made for protocol 2, this run is "
                                              "protocol 1: not the official protocol-1 setting"}
    result = make_result(model_id="posenet", protocol=1, detected=True, sources={"protocol_check": check})
    table = report.paper_comparison(result, get_spec("posenet"))
    assert np.isnan(table.loc["PA-MPJPE rigid fit18", "paper (mm)"])
    assert table.loc["PA-MPJPE rigid fit18", "grade"] == f"n/a: {check['message']}"
    assert "PROTOCOL MISMATCH" in report.format_table(result)


def test_paper_comparison_rejects_wrong_model():
    with pytest.raises(ValueError, match="spec is"):
        report.paper_comparison(make_result(model_id="posenet"), FAKE_SPEC)
    with pytest.raises(ValueError, match="kind"):
        report.paper_comparison(make_result("root", model_id="fake_pose"), FAKE_SPEC)


def test_per_action_frame_pose():
    result = make_result()
    frame = report.per_action_frame(result)
    assert list(frame.index) == list(ACTION_NAMES) + ["action mean", "total"]
    assert list(frame.columns) == ["MPJPE", "PA-MPJPE rigid", "PA-MPJPE similarity", "PA-MPJPE rigid fit18"]
    assert frame.loc["Walking", "MPJPE"] == result["metrics"]["mpjpe"]["per_action"]["Walking"]
    assert frame.loc["total", "PA-MPJPE rigid"] == result["metrics"]["pa_mpjpe_rigid"]["total"]
    assert frame.loc["action mean", "MPJPE"] == result["metrics"]["mpjpe"]["action_mean"]
    # the table says which boxes and roots (and no demo marker: released weights)
    assert frame.columns.name == "Protocol 2, ground-truth boxes, ground-truth roots, flip test"


def test_per_action_frame_root_computes_action_mean():
    result = make_result("root", model_id="rootnet", base=100.0)
    frame = report.per_action_frame(result)
    assert list(frame.columns) == ["MRPE"]
    assert frame.loc["action mean", "MRPE"] == pytest.approx(100.0 + 2 * np.mean(np.arange(15)))
    assert frame.loc["total", "MRPE"] == 100.0


def test_per_joint_frame():
    result = make_result()
    frame = report.per_joint_frame(result)
    assert list(frame.index) == list(EVAL_JOINT_NAMES)
    assert frame.loc["Pelvis", "MPJPE"] == 0.0
    similarity = result["metrics"]["pa_mpjpe_similarity"]["per_joint"]
    assert frame.loc["R_Wrist", "PA-MPJPE similarity"] == similarity["R_Wrist"]
    with pytest.raises(ValueError, match="pose results only"):
        report.per_joint_frame(make_result("root", model_id="rootnet"))


def test_demo_marker_on_tables_and_figures():
    demo = make_result(weights_kind="random_demo")
    assert report.per_action_frame(demo).columns.name == (report.DEMO_MARKER + " | Protocol 2, ground-truth boxes, "
                                                          "ground-truth roots, flip test")
    assert report.DEMO_MARKER in report.per_joint_frame(demo).to_string()
    for plot in (report.plot_per_action, report.plot_per_joint):
        fig = plot(demo)
        texts = [t.get_text() for t in fig.texts] + [ax.get_title() for ax in fig.axes]
        assert any(report.DEMO_MARKER in t for t in texts)
        plt.close(fig)
        clean = plot(make_result())
        assert not any(report.DEMO_MARKER in t for t in [t.get_text() for t in clean.texts]
                       + [ax.get_title() for ax in clean.axes])
        plt.close(clean)


def test_write_model_outputs_pose(tmp_path):
    result = make_result(model_id="convnextpose_S", base=52.3)
    paths = report.write_model_outputs(result, tmp_path / "out")
    assert set(paths) == {"per_action_csv", "per_action_png", "per_joint_csv", "per_joint_png",
                          "paper_comparison_csv"}
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    for name in ("per_action.png", "per_joint.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_action = pd.read_csv(paths["per_action_csv"], index_col=0)
    assert per_action.loc["Eating", "MPJPE"] == pytest.approx(result["metrics"]["mpjpe"]["per_action"]["Eating"])
    comparison = pd.read_csv(paths["paper_comparison_csv"], index_col=0)
    assert comparison.loc["MPJPE", "paper (mm)"] == get_spec("convnextpose_S").paper.p2_mpjpe
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_write_model_outputs_root_and_invalid(tmp_path):
    paths = report.write_model_outputs(make_result("root", model_id="rootnet"), tmp_path / "root")
    assert set(paths) == {"per_action_csv", "per_action_png", "paper_comparison_csv"}
    broken = make_result()
    del broken["metrics"]["mpjpe"]
    with pytest.raises(ValueError, match="schema"):
        report.write_model_outputs(broken, tmp_path / "broken")
    assert not (tmp_path / "broken").exists()


def test_qualitative_plots():
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (3, 64, 64), dtype=np.uint8), rng.uniform(0, 255, (3, 64, 64))]
    coords = [rng.uniform(0, 63, (18, 2)) for _ in crops]
    pred = [rng.normal(0, 300, (17, 3)) for _ in crops]
    gt = [rng.normal(0, 300, (17, 3)) for _ in crops]
    fig = report.plot_qualitative_samples(crops, coords, pred, gt, titles=["a", "b"],
                                          result=make_result(weights_kind="random_demo"))
    assert len(fig.axes) == 4
    assert any(report.DEMO_MARKER in t.get_text() for t in fig.texts)
    # 16 bones drawn on the 2D crop, left/right coloured
    lines = fig.axes[0].get_lines()
    assert len(lines) == 16
    assert {report.LEFT_COLOR, report.RIGHT_COLOR, report.CENTER_COLOR} <= {ln.get_color() for ln in lines}
    # the 3D panel is root-relative: the pelvis of the prediction sits at the origin
    pelvis_xs = [ln.get_data_3d()[0][0] for ln in fig.axes[1].get_lines() if ln.get_linestyle() == "-"]
    assert pelvis_xs[0] == pytest.approx(0.0)
    plt.close(fig)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        report.plot_sample_2d(np.zeros((64, 64, 3)), coords[0])
    with pytest.raises(ValueError, match="both"):
        report.plot_qualitative_samples(crops, coords, pred, None)
    plt.close("all")


def test_heatmap_to_crop_pixels():
    coords = np.array([[[16.0, 8.0, 3.0]]])
    assert report.heatmap_to_crop_pixels(coords, (32, 32), (256, 256)).tolist() == [[[128.0, 64.0]]]


def test_camera_to_crop_pixels_maps_the_box_onto_the_crop():
    f, c = np.array([1000.0, 1000.0]), np.array([500.0, 500.0])
    # a point 5 m in front of the camera, on the optical axis, lands on the principal point
    bbox = np.array([400.0, 300.0, 200.0, 400.0])  # centre (500, 500)
    centre = report.camera_to_crop_pixels(np.array([[0.0, 0.0, 5000.0]]), f, c, bbox, (256, 128))
    assert np.allclose(centre, [[64.0, 128.0]])
    corner = report.camera_to_crop_pixels(np.array([[-500.0, -1000.0, 5000.0]]), f, c, bbox, (256, 128))
    assert np.allclose(corner, [[0.0, 0.0]])  # (400, 300) in the image is the crop's top-left corner
