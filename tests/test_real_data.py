"""Checks on the real Human3.6M side data: RootNet output files and one real annotated frame."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import evaluate as ev
from helpers import geometry, h36m, metrics
from helpers.protocol import get_protocol

FIRST_S11_ID = 1877420


def test_protocol2_rootnet_file_counts(real_data_dir):
    table = h36m.load_bbox_root(real_data_dir / "bbox_root_protocol2_S9_S11.json")
    assert len(table) == get_protocol(2).expected_test_images == 8695
    assert int((table.image_id < FIRST_S11_ID).sum()) == 5012
    assert int((table.image_id >= FIRST_S11_ID).sum()) == 3683
    # RootNet boxes are already processed: square
    np.testing.assert_allclose(table.bbox[:, 2], table.bbox[:, 3])


def test_protocol1_rootnet_file_is_s11(real_data_dir):
    table = h36m.load_bbox_root(real_data_dir / "bbox_root_protocol1_S11.json")
    assert len(table) == get_protocol(1).expected_test_images == 3683
    assert int(table.image_id.min()) == FIRST_S11_ID


def _real_frame(real_data_dir):
    data = json.loads((real_data_dir / "S11_act02_frame1_data.json").read_text())
    camera = json.loads((real_data_dir / "S11_act02_frame1_camera.json").read_text())
    joints = json.loads((real_data_dir / "S11_act02_frame1_joint_3d.json").read_text())
    detected = json.loads((real_data_dir / "S11_act02_frame1_detected_bbox.json").read_text())
    return data, camera, joints, detected


def test_detected_box_processes_to_the_rootnet_box(real_data_dir):
    data, _, _, detected = _real_frame(real_data_dir)
    image = data["images"][0]
    assert detected[0]["image_id"] == image["id"] == FIRST_S11_ID
    box = geometry.process_bbox(detected[0]["bbox"], image["width"], image["height"])
    table = h36m.load_bbox_root(real_data_dir / "bbox_root_protocol2_S9_S11.json")
    pos, found = table.lookup([FIRST_S11_ID])
    assert found[0]
    np.testing.assert_allclose(box, table.bbox[pos[0]], atol=1e-3)


def test_rootnet_root_error_on_the_real_frame(real_data_dir):
    data, camera, joints, _ = _real_frame(real_data_dir)
    image = data["images"][0]
    cam = camera[str(image["cam_idx"])]
    pelvis_world = np.array(joints[str(image["action_idx"])][str(image["subaction_idx"])][str(image["frame_idx"])])[0]
    gt_root = geometry.world_to_camera(pelvis_world, np.array(cam["R"]), np.array(cam["t"]))
    table = h36m.load_bbox_root(real_data_dir / "bbox_root_protocol2_S9_S11.json")
    pos, _ = table.lookup([FIRST_S11_ID])
    err = metrics.mrpe(table.root_cam[pos], gt_root[None])
    print(f"real frame 1877420: RootNet root error {err['total']:.2f} mm (x {err['x']:.2f}, y {err['y']:.2f}, "
          f"z {err['z']:.2f})")
    assert 40.0 < err["total"] < 56.0


def test_real_frame_through_the_loader(tmp_path, real_data_dir):
    """The real record in an annotation folder (named as subject 11) loads, and its MRPE matches."""
    ann = tmp_path / "annotations"
    ann.mkdir()
    for kind in ("data", "camera", "joint_3d"):
        shutil.copy(real_data_dir / f"S11_act02_frame1_{kind}.json", ann / f"Human36M_subject11_{kind}.json")
    # the protocol-2 RootNet file (S9 entries are not needed and are ignored); the protocol-1 file comes
    # from a RootNet trained with S9 as well and places this root elsewhere
    ts = h36m.load_test_set(ann, protocol=1, bbox_root=real_data_dir / "bbox_root_protocol2_S9_S11.json")
    assert len(ts) == 1 and ts.image_id[0] == FIRST_S11_ID and ts.subject[0] == 11
    assert ts.action_names() == ["Directions"]
    result = ev.evaluate_roots(ts, ts.image_id, ts.root_cam)
    assert result["metrics"]["mrpe"]["total"] == pytest.approx(
        np.linalg.norm(ts.root_cam[0] - ts.gt_root_cam[0]), abs=1e-9)
    assert 40.0 < result["metrics"]["mrpe"]["total"] < 56.0
    # the processed ground-truth box of the same frame is a square around the annotated box
    gt = h36m.load_test_set(ann, protocol=1)
    assert gt.bbox[0, 2] == pytest.approx(gt.bbox[0, 3])
