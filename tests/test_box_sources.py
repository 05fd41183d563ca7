"""Boxes and roots as two facts (helpers.box_sources), on the real released RootNet files in tests/data/h36m_real:
recognition by hash, sidecars, detector files, the protocol check, labels and like-for-like paper comparison."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import box_sources, consolidate, geometry, h36m, report
from helpers import evaluate as ev
from helpers.models.registry import get_spec
from helpers.result_schema import validate_result

P2_FILE = "bbox_root_protocol2_S9_S11.json"
P1_FILE = "bbox_root_protocol1_S11.json"
FRAME = 1877420  # the real S11 frame (SPEC §6)


@pytest.fixture
def frame_annotations(tmp_path, real_data_dir) -> Path:
    """The one real annotated frame as subject 11's annotation files."""
    ann = tmp_path / "annotations"
    ann.mkdir()
    for kind in ("data", "camera", "joint_3d"):
        shutil.copy(real_data_dir / f"S11_act02_frame1_{kind}.json", ann / f"Human36M_subject11_{kind}.json")
    return ann


def _pose_predictions(ts) -> dict:
    """The ground-truth pose encoded as PoseNet heatmap coordinates in the test set's boxes and roots."""
    coords = geometry.camera_to_heatmap(ts.joint_cam, ts.bbox, ts.root_cam[:, 2], ts.f, ts.c, (64, 64), 64)
    return {"image_id": ts.image_id, "coords": coords.astype(np.float32), "output_shape": np.array([64, 64]),
            "depth_dim": np.array(64)}


# ------------------------------------------------------------------------------------------- the released files
@pytest.mark.parametrize("name, protocol, entries", [(P2_FILE, 2, 8695), (P1_FILE, 1, 3683)])
def test_released_files_are_recognised_by_their_hash(real_data_dir, tmp_path, name, protocol, entries):
    description = h36m.load_bbox_root(real_data_dir / name).describe()
    assert description["origin"] == "released" and description["protocol"] == protocol
    assert description["entries"] == entries
    assert (description["boxes"]["source"], description["roots"]["source"]) == ("detector", "rootnet_released")
    # another serialisation of the same numbers (indented, entries shuffled) is still the released file
    entries_list = json.loads((real_data_dir / name).read_text())
    random.Random(0).shuffle(entries_list)
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps(entries_list, indent=1))
    again = h36m.load_bbox_root(copy).describe()
    assert again["origin"] == "released" and again["file_sha256"] != description["file_sha256"]
    # one root moved by a millimetre: no longer the released file, and nothing else is claimed about it
    entries_list[0]["root_cam"][2] += 1.0
    copy.write_text(json.dumps(entries_list))
    edited = h36m.load_bbox_root(copy).describe()
    assert edited["origin"] == "unknown"
    assert (edited["boxes"]["source"], edited["roots"]["source"]) == ("unknown", "unknown")
    assert "square" in edited["note"]


def test_released_file_is_labelled_detector_boxes_released_roots_and_graded_against_the_detected_number(
        frame_annotations, real_data_dir):
    ts = h36m.load_test_set(frame_annotations, protocol=1, bbox_root=real_data_dir / P1_FILE)
    assert (ts.bbox_source, ts.root_source) == ("detector", "rootnet_released")
    assert ts.sources["protocol_check"]["status"] == "match"
    result = ev.evaluate(ts, _pose_predictions(ts))
    validate_result(result)
    assert result["conventions"]["sources"]["bbox_root_file"]["origin"] == "released"
    assert report.source_label(result) == "detector boxes, released RootNet roots"
    table = report.paper_comparison(result, get_spec("posenet"))
    row = table.loc["PA-MPJPE rigid fit18"]
    assert row["paper (mm)"] == 35.2  # PoseNet's published protocol-1 number with detector boxes and RootNet roots
    assert row["setting"].startswith("Protocol 1, detector boxes, released RootNet roots")
    assert row["grade"] == report.grade_delta(row["measured (mm)"] - 35.2)
    assert "detector boxes, released RootNet roots" in report.format_table(result)


def test_a_protocol_2_file_given_to_a_protocol_1_run_is_flagged(frame_annotations, real_data_dir, tmp_path):
    ts = h36m.load_test_set(frame_annotations, protocol=1, bbox_root=real_data_dir / P2_FILE)
    check = ts.sources["protocol_check"]
    assert check["status"] == "mismatch" and check["file_protocol"] == 2 and check["run_protocol"] == 1
    assert "not the official protocol-1 setting" in check["message"]
    result = ev.evaluate(ts, _pose_predictions(ts))
    assert result["conventions"]["sources"]["protocol_check"]["status"] == "mismatch"  # recorded
    table = report.paper_comparison(result, get_spec("posenet"))
    assert np.isnan(table.iloc[0]["paper (mm)"]) and "made for protocol 2" in table.iloc[0]["grade"]
    # the same file on protocol 2 (here: its S11 part) is the official setting
    p2 = h36m.load_test_set(frame_annotations, protocol=2, subjects=[11], bbox_root=real_data_dir / P2_FILE)
    assert p2.sources["protocol_check"]["status"] == "match"
    p2_result = ev.evaluate(p2, _pose_predictions(p2))
    assert report.paper_comparison(p2_result, get_spec("posenet")).loc["MPJPE", "paper (mm)"] == 54.4
    # the leaderboard keeps it apart and lists it as a problem
    root = tmp_path / "results"
    for name, res in (("posenet_p1_file2", result), ("posenet_p1", ev.evaluate(
            h36m.load_test_set(frame_annotations, protocol=1, bbox_root=real_data_dir / P1_FILE),
            _pose_predictions(ts)))):
        res["model"] = {"model_id": "posenet"}
        (root / name).mkdir(parents=True)
        (root / name / "result.json").write_text(json.dumps(res))
    board = consolidate.consolidate(root)
    groups = dict(zip(board.leaderboard["result"], board.leaderboard["group"]))
    assert groups["posenet_p1_file2"].endswith("[bbox_root file made for protocol 2]")
    assert groups["posenet_p1"] == "Protocol 1 PA-MPJPE rigid fit18, detector boxes, released RootNet roots"
    assert any("posenet_p1_file2" in p and "made for protocol 2" in p for p in board.problems)


# ----------------------------------------------------------------------------------- RootNet on detector boxes
def test_official_detector_file_is_processed_into_the_released_box(frame_annotations, real_data_dir):
    detector = real_data_dir / "S11_act02_frame1_detected_bbox.json"  # the detector's raw output, official format
    ts = h36m.load_test_set(frame_annotations, protocol=1, detector_boxes=detector)
    released = h36m.load_bbox_root(real_data_dir / P1_FILE)
    row, _ = released.lookup([FRAME])
    np.testing.assert_array_equal(ts.bbox[0], released.bbox[row[0]])  # process_bbox(detector box), exactly
    assert (ts.bbox_source, ts.root_source) == ("detector", "ground_truth")
    assert ts.sources["boxes"]["file"] == str(detector) and ts.file_root_cam is None
    assert "protocol_check" not in ts.sources  # a detector's boxes do not depend on the protocol


@pytest.mark.parametrize("name, protocol", [(P1_FILE, 1), (P2_FILE, 2)])
def test_rootnet_on_the_released_files_boxes_reports_its_root_difference(frame_annotations, real_data_dir, name,
                                                                         protocol):
    ts = h36m.load_test_set(frame_annotations, protocol=1, detector_boxes=real_data_dir / name)
    released = h36m.load_bbox_root(real_data_dir / name)
    row, _ = released.lookup([FRAME])
    np.testing.assert_array_equal(ts.bbox[0], released.bbox[row[0]])
    np.testing.assert_array_equal(ts.file_root_cam[0], released.root_cam[row[0]])
    assert ts.sources["protocol_check"]["status"] == "boxes only"  # only its boxes are used
    # RootNet's roots 5 mm (3-4-0) from the released ones
    predicted = released.root_cam[row] + np.array([[3.0, -4.0, 0.0]])
    result = ev.evaluate_roots(ts, ts.image_id, predicted)
    validate_result(result)
    assert result["conventions"]["bbox_source"] == "detector"
    assert result["conventions"]["root_source"] == "evaluated (model output)"
    block = result["root_reproduction"]
    assert block["released"] is True and block["reference_protocol"] == protocol and block["samples"] == 1
    assert block["mean_mm"] == pytest.approx(5.0) and block["max_mm"] == pytest.approx(5.0)
    np.testing.assert_allclose(block["mean_abs_xyz_mm"], [3.0, 4.0, 0.0])
    assert block["worst"] == [{"image_id": FRAME, "distance_mm": pytest.approx(5.0)}]
    table = report.root_reproduction_frame(result)
    assert table.columns.name == "RootNet reproduction check: this run vs the released roots"
    assert table.loc["mean distance (mm)", "value"] == pytest.approx(5.0)
    assert ("note" in table.index) == (protocol != 1)  # the protocol-2 roots come from another RootNet


def test_detector_file_format_last_box_wins_and_bad_files_are_refused(tmp_path, frame_annotations):
    path = tmp_path / "bbox_human36m_output.json"
    path.write_text(json.dumps([{"image_id": FRAME, "bbox": [300, 250, 300, 360], "score": 0.9},
                                {"image_id": FRAME, "bbox": [309, 252, 326, 368], "score": 0.99}]))
    boxes = h36m.load_box_file(path)
    assert isinstance(boxes, h36m.DetectorBoxes) and len(boxes) == 1 and boxes.repeated_images == 1
    np.testing.assert_array_equal(boxes.bbox[0], [309, 252, 326, 368])  # as the official loader's dict keeps it
    assert "several detections" in boxes.describe()["note"]
    path.write_text(json.dumps([{"image_id": FRAME, "box": [1, 2, 3, 4]}]))
    with pytest.raises(h36m.DataError, match="malformed entry"):
        h36m.load_box_file(path)
    path.write_text(json.dumps([{"image_id": 1, "bbox": [1, 2, 3, 4]}]))
    with pytest.raises(h36m.DataError, match="detector box file .* lacks 1 of 1 protocol-1 test images"):
        h36m.load_test_set(frame_annotations, protocol=1, detector_boxes=path)
    with pytest.raises(ValueError, match="not both"):
        h36m.load_test_set(frame_annotations, protocol=1, detector_boxes=path, bbox_root=path)


# ------------------------------------------------------------------------------------------------- sidecars
def test_sidecar_describes_its_file_and_only_that_file(tmp_path, frame_annotations, real_data_dir):
    released = h36m.load_bbox_root(real_data_dir / P1_FILE)
    row, _ = released.lookup([FRAME])
    path = tmp_path / "bbox_root_human36m_output.json"
    entries = [{"image_id": FRAME, "bbox": released.bbox[row[0]].tolist(), "root_cam": [0.0, 0.0, 5000.0]}]
    path.write_text(json.dumps(entries))
    table = h36m.load_bbox_root(path)
    sidecar = box_sources.write_sidecar(
        path, content_hash=box_sources.content_sha256(table.image_id, table.bbox, table.root_cam), entries=1,
        boxes={"source": "ground_truth"}, protocol=1,
        roots={"source": "rootnet_run", "result_id": "0123456789abcdef", "checkpoint_sha256": "ab" * 32,
               "weights": "released"})
    assert sidecar == tmp_path / "bbox_root_human36m_output.sources.json"
    ts = h36m.load_test_set(frame_annotations, protocol=1, bbox_root=path)
    assert (ts.bbox_source, ts.root_source) == ("ground_truth", "rootnet_run")
    assert ts.sources["roots"]["result_id"] == "0123456789abcdef"
    result = ev.evaluate(ts, _pose_predictions(ts))
    assert report.source_label(result) == "ground-truth boxes, RootNet roots (this run)"
    table = report.paper_comparison(result, get_spec("posenet"))
    assert np.isnan(table.iloc[0]["paper (mm)"])  # there is no published number to borrow
    assert table.iloc[0]["grade"] == "n/a: no published number for ground-truth boxes with RootNet roots"
    # a protocol-2 run on the protocol-1 RootNet's file is flagged
    p2 = h36m.load_test_set(frame_annotations, protocol=2, subjects=[11], bbox_root=path)
    assert p2.sources["protocol_check"]["status"] == "mismatch"
    # the file changed after its sidecar was written: the sidecar no longer speaks for it
    entries[0]["root_cam"][2] = 5100.0
    path.write_text(json.dumps(entries))
    changed = h36m.load_test_set(frame_annotations, protocol=1, bbox_root=path)
    assert (changed.bbox_source, changed.root_source) == ("unknown", "unknown")
    assert "describes other contents" in changed.sources["bbox_root_file"]["note"]
    with pytest.raises(ValueError, match="unknown box or root source"):
        box_sources.write_sidecar(path, content_hash="0", entries=1, boxes={"source": "detected"},
                                  roots={"source": "ground_truth"}, protocol=None)


def test_unknown_file_with_entries_beyond_the_test_set_is_reported(tmp_path, frame_annotations, real_data_dir):
    entries = json.loads((real_data_dir / P1_FILE).read_text())[:3]  # not the released file any more
    path = tmp_path / "some_bbox_root.json"
    path.write_text(json.dumps(entries))
    ts = h36m.load_test_set(frame_annotations, protocol=1, bbox_root=path)
    check = ts.sources["protocol_check"]
    assert check["status"] == "unknown" and check["extra_entries"] == 2
    assert "2 entries beyond this run's 1 test images" in check["message"]
