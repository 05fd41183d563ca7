"""Data layer: folder discovery, test-set loading, bbox_root files, image checks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import h36m
from helpers.protocol import ACTION_NAMES


@pytest.fixture(scope="module")
def golden_test_set(golden_eval_dir):
    return h36m.load_test_set(golden_eval_dir / "annotations", protocol=2)


@pytest.fixture()
def kaggle_like_annotations(tmp_path, golden_eval_dir):
    """The Kaggle layout: `annotations (1)/annotations/` beside the image folders."""
    target = tmp_path / "input" / "human3-6m" / "annotations (1)" / "annotations"
    shutil.copytree(golden_eval_dir / "annotations", target)
    return tmp_path / "input", target


def test_load_test_set_matches_upstream_sampling_and_ground_truth(golden_test_set, golden_eval_dir):
    ps = np.load(golden_eval_dir / "expected_per_sample.npz")
    ts = golden_test_set
    assert len(ts) == 1065 and ts.protocol == 2 and ts.bbox_source == "ground_truth"
    np.testing.assert_array_equal(ts.image_id, ps["image_id"])  # annotation order, S9 then S11
    np.testing.assert_array_equal(ts.action_index, ps["action_index"])
    assert (ts.frame_idx % 64 == 0).all()
    assert (ts.subject[:524] == 9).all() and (ts.subject[524:] == 11).all()
    gt_rel = ts.joint_cam - ts.joint_cam[:, :1]
    np.testing.assert_allclose(gt_rel[:, :17], ps["gt_rel17"], atol=1e-2)
    # Thorax is the shoulder midpoint (a rigid transform keeps midpoints)
    np.testing.assert_allclose(ts.joint_cam[:, 17], (ts.joint_cam[:, 11] + ts.joint_cam[:, 14]) / 2, atol=1e-9)
    np.testing.assert_allclose(ts.bbox, ps["gt_info_true__bbox"], atol=1e-9)
    np.testing.assert_allclose(ts.root_cam, ps["gt_info_true__root_cam"], atol=1e-2)
    np.testing.assert_array_equal(ts.root_cam, ts.gt_root_cam)
    assert ts.joint_cam.shape == (1065, 18, 3) and ts.f.shape == (1065, 2) and ts.c.shape == (1065, 2)
    # the sequence missing in the released data is missing here too
    assert not any(name.startswith("s_11_act_02_subact_02_ca_01/") for name in ts.file_name)
    assert ts.action_names()[0] == ACTION_NAMES[ts.action_index[0]]


def test_load_test_set_with_detected_boxes(golden_eval_dir, golden_test_set):
    ps = np.load(golden_eval_dir / "expected_per_sample.npz")
    ts = h36m.load_test_set(golden_eval_dir / "annotations", bbox_root=golden_eval_dir / "bbox_root_human36m_output.json")
    # neither a released file nor one with a sidecar: its boxes and roots are of unknown origin
    assert (ts.bbox_source, ts.root_source) == ("unknown", "unknown")
    assert ts.sources["bbox_root_file"]["origin"] == "unknown" and ts.sources["protocol_check"]["status"] == "unknown"
    np.testing.assert_allclose(ts.bbox, ps["gt_info_false__bbox"])
    np.testing.assert_allclose(ts.root_cam, ps["gt_info_false__root_cam"])
    np.testing.assert_array_equal(ts.gt_root_cam, golden_test_set.gt_root_cam)


def test_protocol_1_and_subject_selection(golden_eval_dir):
    p1 = h36m.load_test_set(golden_eval_dir / "annotations", protocol=1)
    assert set(p1.subject.tolist()) == {11} and len(p1) == 541
    assert len(h36m.load_test_set(golden_eval_dir / "annotations", subjects=[9])) == 524


def test_subset_keeps_every_field_consistent(golden_test_set):
    sub = golden_test_set.subset([5, 2, 700])
    assert len(sub) == 3
    np.testing.assert_array_equal(sub.image_id, golden_test_set.image_id[[5, 2, 700]])
    assert sub.file_name == [golden_test_set.file_name[i] for i in (5, 2, 700)]
    np.testing.assert_array_equal(sub.joint_cam, golden_test_set.joint_cam[[5, 2, 700]])
    mask = golden_test_set.subject == 11
    assert len(golden_test_set.subset(mask)) == int(mask.sum())
    assert len(golden_test_set.subset([])) == 0
    with pytest.raises(ValueError, match="boolean mask"):
        golden_test_set.subset(mask[:10])


def test_find_annotation_dir_in_kaggle_layout(kaggle_like_annotations):
    root, target = kaggle_like_annotations
    assert h36m.find_annotation_dir(root) == target
    ts = h36m.load_test_set(root)  # any folder above the annotations works
    assert ts.annotation_dir == target and len(ts) == 1065


def test_find_annotation_dir_error_says_what_was_searched(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(h36m.DataError, match=r"no Human36M_subject\*_data.json found under .*searched 3 folders"):
        h36m.find_annotation_dir(tmp_path)
    with pytest.raises(h36m.DataError, match="does not exist"):
        h36m.find_annotation_dir(tmp_path / "nope")


def test_missing_subject_files_are_named(kaggle_like_annotations):
    _, target = kaggle_like_annotations
    for f in target.glob("Human36M_subject11_*.json"):
        f.unlink()
    with pytest.raises(h36m.DataError) as err:
        h36m.load_test_set(target)
    msg = str(err.value)
    assert "Human36M_subject11_data.json" in msg and "Human36M_subject11_joint_3d.json" in msg
    assert "missing 3 file(s)" in msg


def test_subject_file_that_is_not_json(kaggle_like_annotations):
    _, target = kaggle_like_annotations
    (target / "Human36M_subject9_joint_3d.json").write_text("<html>quota exceeded</html>")
    with pytest.raises(h36m.DataError, match=r"Human36M_subject9_joint_3d.json is not valid JSON"):
        h36m.load_test_set(target)


def test_subject_file_with_wrong_structure(kaggle_like_annotations):
    _, target = kaggle_like_annotations
    (target / "Human36M_subject9_data.json").write_text(json.dumps({"images": []}))
    with pytest.raises(h36m.DataError, match="no 'images' and 'annotations' lists"):
        h36m.load_test_set(target)


def test_bbox_root_missing_test_images(tmp_path, golden_eval_dir):
    entries = json.loads((golden_eval_dir / "bbox_root_human36m_output.json").read_text())
    dropped = [entries[3]["image_id"], entries[10]["image_id"]]
    path = tmp_path / "bbox_root.json"
    path.write_text(json.dumps([e for e in entries if e["image_id"] not in dropped]))
    with pytest.raises(h36m.DataError, match=rf"lacks 2 of 1065 .*first ids {dropped[0]}, {dropped[1]}"):
        h36m.load_test_set(golden_eval_dir / "annotations", bbox_root=path)


@pytest.mark.parametrize("content, message", [
    ("[]", "empty or not a list"),
    ('[{"image_id": 1, "bbox": [0, 0, 1, 1]}]', "malformed entry"),
    ('[{"image_id": 1, "bbox": [0, 0, 1], "root_cam": [0, 0, 1]}]', "bbox must have 4 values"),
    ('[{"image_id": 1, "bbox": [0, 0, 1, 1], "root_cam": [0, 0, 1]},'
     ' {"image_id": 1, "bbox": [0, 0, 1, 1], "root_cam": [0, 0, 1]}]', "more than once"),
    ("not json", "not valid JSON"),
])
def test_load_bbox_root_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "br.json"
    path.write_text(content)
    with pytest.raises(h36m.DataError, match=message):
        h36m.load_bbox_root(path)


def test_load_bbox_root_sorts_and_looks_up(tmp_path):
    path = tmp_path / "br.json"
    path.write_text(json.dumps([{"image_id": 7, "bbox": [1, 2, 3, 3], "root_cam": [0, 0, 5000]},
                                {"image_id": 3, "bbox": [4, 5, 6, 6], "root_cam": [1, 1, 4000]}]))
    table = h36m.load_bbox_root(path)
    np.testing.assert_array_equal(table.image_id, [3, 7])
    pos, found = table.lookup([7, 5, 3])
    np.testing.assert_array_equal(found, [True, False, True])
    np.testing.assert_allclose(table.bbox[pos[[0, 2]]], [[1, 2, 3, 3], [4, 5, 6, 6]])


def _make_images(base, test_set, subject_dirs, skip=()):
    """Empty image files for the test set, S9 and S11 under different (nested) parents."""
    for i, name in enumerate(test_set.file_name):
        if i in skip:
            continue
        parent = subject_dirs[int(test_set.subject[i])]
        path = base / parent / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def test_find_image_root_and_resolve_paths_across_parents(tmp_path, golden_test_set):
    ts = golden_test_set
    _make_images(tmp_path, ts, {9: "S9_ACT2_16", 11: "S11_ACT2_16/S11_ACT2_16"})
    roots = h36m.find_image_root(tmp_path)
    assert roots == [tmp_path / "S11_ACT2_16" / "S11_ACT2_16", tmp_path / "S9_ACT2_16"]
    paths = h36m.resolve_image_paths(ts, roots)
    assert all(p.is_file() for p in paths)
    assert paths[0] == tmp_path / "S9_ACT2_16" / ts.file_name[0]
    assert paths[-1] == tmp_path / "S11_ACT2_16" / "S11_ACT2_16" / ts.file_name[-1]
    assert not any(p.is_symlink() for p in paths)
    # a search folder is accepted in place of the roots
    assert h36m.resolve_image_paths(ts, tmp_path) == paths
    check = h36m.check_images(ts, tmp_path)
    assert check.num_missing == 0 and len(check.kept_indices) == len(ts)
    # roots can be filtered by the sequences a test set needs
    assert h36m.find_image_root(tmp_path, ts.subset(ts.subject == 9).file_name) == [tmp_path / "S9_ACT2_16"]


def test_image_root_without_sequence_folders(tmp_path, golden_test_set):
    (tmp_path / "S9_ACT2_16" / "random").mkdir(parents=True)
    (tmp_path / "S9_ACT2_16" / "random" / "x.jpg").touch()
    with pytest.raises(h36m.DataError, match="no image sequence folders"):
        h36m.find_image_root(tmp_path)
    with pytest.raises(h36m.DataError, match="no image sequence folders"):
        h36m.check_images(golden_test_set, tmp_path)
    with pytest.raises(h36m.DataError, match="does not exist"):
        h36m.find_image_root(tmp_path / "absent")


def test_missing_images_error_or_skip(tmp_path, golden_test_set):
    ts = golden_test_set
    skip = {0, 1, 600, 1064}
    _make_images(tmp_path, ts, {9: "S9", 11: "S11"}, skip=skip)
    first_missing = tmp_path / "S9" / ts.file_name[0]
    with pytest.raises(h36m.DataError) as err:
        h36m.check_images(ts, tmp_path)
    msg = str(err.value)
    assert "4 of 1065 test images are missing" in msg and str(first_missing) in msg and "skip_missing=True" in msg
    check = h36m.check_images(ts, tmp_path, skip_missing=True)
    assert check.num_missing == 4
    np.testing.assert_array_equal(check.kept_indices, sorted(set(range(len(ts))) - skip))
    assert check.missing_paths[0] == first_missing
    block = check.skipped_block()
    assert block["count"] == 4 and block["first_paths"][0] == str(first_missing)


def test_all_images_missing_is_an_error_even_when_skipping(tmp_path, golden_test_set):
    other = tmp_path / "s_01_act_02_subact_01_ca_01"  # a sequence folder, but not of this test set
    other.mkdir()
    with pytest.raises(h36m.DataError, match="none of the 1065 test images exist"):
        h36m.check_images(golden_test_set, tmp_path, skip_missing=True)
