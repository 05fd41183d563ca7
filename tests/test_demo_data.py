"""The generated demo dataset: determinism, exact 3DMPPE format, counts, geometry, bbox_root, reruns.

Expected formats, ids, sequence sets and image sizes come from the golden annotation files
(tests/data/golden/h36m_eval/annotations); geometry is recomputed here with plain numpy.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from helpers import demo_data

SUBJECTS = (9, 11)
FRAMES = 2


def _annotation_dir(root: Path) -> Path:
    return root / "annotations (1)" / "annotations"


def _load(root: Path, subject: int, kind: str):
    return json.loads((_annotation_dir(root) / f"Human36M_subject{subject}_{kind}.json").read_text())


def _image_path(root: Path, subject: int, file_name: str) -> Path:
    # The Kaggle layout, with S11 nested one level deeper.
    base = root / "S9_ACT2_16" if subject == 9 else root / "S11_ACT2_16" / "S11_ACT2_16"
    return base / file_name


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _project(joints_world: np.ndarray, cam: dict) -> np.ndarray:
    """World mm -> (u, v, Z) with the camera json's R, t, f, c."""
    X = joints_world @ np.asarray(cam["R"]).T + np.asarray(cam["t"])
    uv = X[:, :2] / X[:, 2:] * np.asarray(cam["f"]) + np.asarray(cam["c"])
    return np.concatenate([uv, X[:, 2:]], axis=1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    info = demo_data.generate(tmp_path_factory.mktemp("demo") / "h36m_demo", seed=0, frames=FRAMES,
                              show_progress=False)
    return info


@pytest.fixture(scope="module")
def golden(golden_eval_dir):
    d = golden_eval_dir / "annotations"
    return {s: {kind: json.loads((d / f"Human36M_subject{s}_{kind}.json").read_text())
                for kind in ("data", "camera", "joint_3d")} for s in SUBJECTS}


def test_layout_and_info(demo):
    root = demo.root
    assert demo.annotation_dir == _annotation_dir(root)
    for s in SUBJECTS:
        for kind in ("data", "camera", "joint_3d"):
            assert (_annotation_dir(root) / f"Human36M_subject{s}_{kind}.json").is_file()
    assert (root / "S9_ACT2_16").is_dir() and (root / "S11_ACT2_16" / "S11_ACT2_16").is_dir()
    assert demo.bbox_root_file == root / "bbox_root_human36m_output.json" and demo.bbox_root_file.is_file()
    text = (root / "DEMO_DATA.md").read_text()
    assert "synthetic" in text.lower() and "generated" in text.lower()
    num_images = sum(len(_load(root, s, "data")["images"]) for s in SUBJECTS)
    assert demo.num_images == num_images == len(list(root.rglob("*.jpg")))
    assert not list(root.parent.glob(f".{root.name}.*")), "staging folders left behind"


def test_annotation_format_matches_golden(demo, golden):
    for s in SUBJECTS:
        data, g_data = _load(demo.root, s, "data"), golden[s]["data"]
        assert set(data) == set(g_data) == {"images", "annotations"}
        g_image_types = {k: type(v) for k, v in g_data["images"][0].items()}
        g_ann_types = {k: type(v) for k, v in g_data["annotations"][0].items()}
        for image, ann in zip(data["images"], data["annotations"], strict=True):
            assert {k: type(v) for k, v in image.items()} == g_image_types
            assert {k: type(v) for k, v in ann.items()} == g_ann_types
            assert ann["id"] == ann["image_id"] == image["id"]
            assert len(ann["keypoints_vis"]) == 17 and all(isinstance(v, bool) for v in ann["keypoints_vis"])
            assert len(ann["bbox"]) == 4 and all(isinstance(v, float) for v in ann["bbox"])
            assert image["subject"] == s
        # Global ids: consecutive from the subject's first id in the released data.
        ids = [im["id"] for im in data["images"]]
        assert ids == list(range(g_data["images"][0]["id"], g_data["images"][0]["id"] + len(ids)))

        camera, g_camera = _load(demo.root, s, "camera"), golden[s]["camera"]
        assert set(camera) == set(g_camera) == {"1", "2", "3", "4"}
        for cam_idx, params in camera.items():
            assert set(params) == {"R", "t", "f", "c"}
            assert np.shape(params["R"]) == (3, 3) and np.shape(params["t"]) == (3,)
            assert np.shape(params["f"]) == (2,) and np.shape(params["c"]) == (2,)
            for key in params:  # the public calibration, as in the golden files
                np.testing.assert_allclose(params[key], g_camera[cam_idx][key], rtol=0, atol=1e-9)

        joints = _load(demo.root, s, "joint_3d")
        g_action = next(iter(golden[s]["joint_3d"].values()))
        g_frame = next(iter(next(iter(g_action.values())).values()))
        assert np.shape(g_frame) == (17, 3)
        for action, subactions in joints.items():
            assert action.isdigit() and all(k.isdigit() for k in subactions)
            for frames in subactions.values():
                for frame, pose in frames.items():
                    assert frame.isdigit() and np.shape(pose) == (17, 3)
                    assert all(isinstance(v, float) for row in pose for v in row)


def test_counts_sequences_and_frames(demo, golden):
    for s in SUBJECTS:
        images = _load(demo.root, s, "data")["images"]
        g_images = golden[s]["data"]["images"]
        sequences = {(im["action_idx"], im["subaction_idx"], im["cam_idx"]) for im in images}
        # 15 actions x 2 subactions x 4 cameras, minus S11's missing sequence, exactly like the golden set.
        assert sequences == {(im["action_idx"], im["subaction_idx"], im["cam_idx"]) for im in g_images}
        assert {im["action_idx"] for im in images} == set(range(2, 17))
        assert len({im["action_name"] for im in images}) == 15
        sizes = {im["cam_idx"]: (im["width"], im["height"]) for im in g_images}
        joints = _load(demo.root, s, "joint_3d")
        per_sequence: dict[tuple, list[int]] = {}
        used_frames = set()
        for im in images:
            seq = (im["action_idx"], im["subaction_idx"], im["cam_idx"])
            per_sequence.setdefault(seq, []).append(im["frame_idx"])
            assert (im["width"], im["height"]) == sizes[im["cam_idx"]]
            name = (f"s_{s:02d}_act_{im['action_idx']:02d}_subact_{im['subaction_idx']:02d}"
                    f"_ca_{im['cam_idx']:02d}")
            assert im["file_name"] == f"{name}/{name}_{im['frame_idx'] + 1:06d}.jpg"
            key = (str(im["action_idx"]), str(im["subaction_idx"]), str(im["frame_idx"]))
            assert key[2] in joints[key[0]][key[1]]
            used_frames.add(key)
        assert used_frames == {(a, sa, f) for a, subs in joints.items() for sa, fr in subs.items() for f in fr}
        for frames in per_sequence.values():
            assert sorted(f for f in frames if f % 64 == 0) == [64 * k for k in range(FRAMES)]
        non_sampled = [f for frames in per_sequence.values() for f in frames if f % 64 != 0]
        assert non_sampled, "the set must contain frames that protocol sampling skips"
    s11_names = [im["file_name"] for im in _load(demo.root, 11, "data")["images"]]
    assert not any(n.startswith("s_11_act_02_subact_02_ca_01/") for n in s11_names)
    assert not (demo.root / "S11_ACT2_16" / "S11_ACT2_16" / "s_11_act_02_subact_02_ca_01").exists()


def test_images_exist_with_annotated_size(demo):
    for s in SUBJECTS:
        images = _load(demo.root, s, "data")["images"]
        for im in images:
            assert _image_path(demo.root, s, im["file_name"]).is_file(), im["file_name"]
        for im in images[::37]:
            with PIL.Image.open(_image_path(demo.root, s, im["file_name"])) as jpeg:
                assert jpeg.format == "JPEG" and jpeg.mode == "RGB"
                assert jpeg.size == (im["width"], im["height"])


def test_skeletons_are_rigid_plausible_and_inside_the_images(demo, real_data_dir):
    real = np.asarray(json.loads((real_data_dir / "S11_act02_frame1_joint_3d.json").read_text())["2"]["1"]["0"])
    bones = [(0, 7), (7, 8), (8, 9), (9, 10), (8, 11), (11, 12), (12, 13), (8, 14), (14, 15), (15, 16),
             (0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6)]
    real_lengths = np.array([np.linalg.norm(real[a] - real[b]) for a, b in bones])
    for s in SUBJECTS:
        joints = _load(demo.root, s, "joint_3d")
        poses = np.array([p for subs in joints.values() for fr in subs.values() for p in fr.values()])
        lengths = np.stack([np.linalg.norm(poses[:, a] - poses[:, b], axis=1) for a, b in bones], axis=1)
        assert lengths.std(axis=0).max() < 0.05, "bone lengths must not change between frames"
        np.testing.assert_allclose(lengths.mean(axis=0), real_lengths, rtol=0.08)
        assert poses[..., 2].min() > 0, "joints below the floor"
        assert (poses[:, 10, 2] > poses[:, 0, 2]).all(), "head above pelvis (z is up)"
        assert np.abs(poses[..., :2]).max() < 2500, "people stay in the capture volume"

        data, camera = _load(demo.root, s, "data"), _load(demo.root, s, "camera")
        for im, ann in zip(data["images"], data["annotations"]):
            pose = np.asarray(joints[str(im["action_idx"])][str(im["subaction_idx"])][str(im["frame_idx"])])
            uvz = _project(pose, camera[str(im["cam_idx"])])
            assert uvz[:, 2].min() > 2000
            assert uvz[:, 0].min() > 0 and uvz[:, 0].max() < im["width"] - 1
            assert uvz[:, 1].min() > 0 and uvz[:, 1].max() < im["height"] - 1
            # The annotation tool's box: centre of the joint box, size (max - min - 1) * 1.2.
            lo, hi = uvz[:, :2].min(0), uvz[:, :2].max(0)
            size = (hi - lo - 1) * 1.2
            np.testing.assert_allclose(ann["bbox"], [*((lo + hi) / 2 - size / 2), *size], atol=1e-6)


def test_bbox_root_covers_every_sampled_image(demo):
    entries = json.loads(demo.bbox_root_file.read_text())
    ids = [e["image_id"] for e in entries]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    sampled, root_errors = {}, []
    for s in SUBJECTS:
        data, camera, joints = (_load(demo.root, s, k) for k in ("data", "camera", "joint_3d"))
        for im, ann in zip(data["images"], data["annotations"]):
            if im["frame_idx"] % 64 == 0:
                pose = np.asarray(joints[str(im["action_idx"])][str(im["subaction_idx"])][str(im["frame_idx"])])
                cam = camera[str(im["cam_idx"])]
                sampled[im["id"]] = (ann["bbox"], pose[0] @ np.asarray(cam["R"]).T + np.asarray(cam["t"]))
    assert set(ids) == set(sampled) and len(ids) == demo.num_test_samples
    for e in entries:
        assert set(e) == {"image_id", "bbox", "root_cam"}
        gt_box, gt_root = sampled[e["image_id"]]
        x, y, w, h = e["bbox"]
        assert w == pytest.approx(h), "RootNet boxes are square"
        gt_size = max(gt_box[2], gt_box[3])
        assert 1.0 * gt_size < w < 1.6 * gt_size, "already extended (x1.25) with a little noise"
        centre = np.array([x + w / 2, y + h / 2])
        gt_centre = np.array([gt_box[0] + gt_box[2] / 2, gt_box[1] + gt_box[3] / 2])
        assert np.linalg.norm(centre - gt_centre) < 0.15 * gt_size
        root_errors.append(np.linalg.norm(np.asarray(e["root_cam"]) - gt_root))
    # A few cm of root noise: a realistic, non-zero MRPE.
    assert 10 < np.mean(root_errors) < 150 and max(root_errors) < 400


def test_detector_file_is_the_official_format_and_the_bbox_root_file_processes_it(demo):
    from helpers import box_sources, geometry, h36m

    detections = json.loads(demo.detector_file.read_text())
    bbox_root = {e["image_id"]: e for e in json.loads(demo.bbox_root_file.read_text())}
    assert demo.detector_file == demo.root / "bbox_human36m_output.json"
    assert [d["image_id"] for d in detections] == sorted(bbox_root)  # one box per test image
    images, gt_boxes = {}, {}
    for s in SUBJECTS:
        data = _load(demo.root, s, "data")
        images.update({im["id"]: im for im in data["images"]})
        gt_boxes.update({a["image_id"]: a["bbox"] for a in data["annotations"]})
    for d in detections:
        assert set(d) == {"image_id", "category_id", "bbox", "score"}  # as the official detector file
        x, y, w, h = d["bbox"]
        gx, gy, gw, gh = gt_boxes[d["image_id"]]
        assert abs(np.log(w / gw)) < 0.3 and abs(np.log(h / gh)) < 0.3, "unprocessed: about the annotation box"
        assert abs(x + w / 2 - gx - gw / 2) < 0.2 * gw and abs(y + h / 2 - gy - gh / 2) < 0.2 * gh
        im = images[d["image_id"]]
        # like the released RootNet file: its box is process_bbox(detector box), exactly
        assert bbox_root[d["image_id"]]["bbox"] == geometry.process_bbox(d["bbox"], im["width"], im["height"]).tolist()
    assert any(d["bbox"] != gt_boxes[d["image_id"]] for d in detections)  # jittered
    # the sidecar says so, and the loader reads it
    description = h36m.load_bbox_root(demo.bbox_root_file).describe()
    assert description["origin"] == "sidecar" and description["protocol"] is None
    assert (description["boxes"]["source"], description["roots"]["source"]) == ("detector", "generated")
    assert description["boxes"]["file_sha256"] == box_sources.bytes_sha256(demo.detector_file.read_bytes())


def test_same_seed_same_bytes_other_seed_differs_and_reruns_are_clean(tmp_path):
    first = tmp_path / "a"
    demo_data.generate(first, seed=3, frames=1, subjects=(11,), show_progress=False)
    digest = _digest_tree(first)
    assert any(k.endswith(".jpg") for k in digest) and any(k.endswith("_data.json") for k in digest)
    (first / "stale.txt").write_text("left over from an earlier run")
    # Rerun into the same folder (a previous demo dataset): replaced cleanly, byte for byte.
    assert demo_data.main([str(first), "--seed", "3", "--frames", "1", "--subjects", "11", "--quiet"]) == 0
    assert _digest_tree(first) == digest

    other = tmp_path / "b"
    demo_data.generate(other, seed=4, frames=1, subjects=(11,), show_progress=False)
    other_digest = _digest_tree(other)
    assert other_digest.keys() == digest.keys()
    changed = [k for k in digest if digest[k] != other_digest[k]]
    assert "annotations (1)/annotations/Human36M_subject11_joint_3d.json" in changed
    sample_image = "S11_ACT2_16/S11_ACT2_16/s_11_act_05_subact_01_ca_02/s_11_act_05_subact_01_ca_02_000001.jpg"
    assert sample_image in digest and sample_image in changed
    assert "annotations (1)/annotations/Human36M_subject11_camera.json" not in changed  # fixed calibration


def test_refuses_to_replace_a_foreign_folder_and_bad_arguments(tmp_path, capsys):
    foreign = tmp_path / "my_results"
    foreign.mkdir()
    (foreign / "result.json").write_text("{}")
    with pytest.raises(demo_data.DemoDataError, match="refusing"):
        demo_data.generate(foreign, frames=1, subjects=(9,), show_progress=False)
    assert [p.name for p in foreign.iterdir()] == ["result.json"]
    assert demo_data.main([str(foreign), "--frames", "1", "--quiet"]) == 2
    assert "not a demo dataset" in capsys.readouterr().err
    for bad in ({"frames": 0}, {"seed": -1}, {"subjects": (1,)}):
        with pytest.raises(demo_data.DemoDataError):
            demo_data.generate(tmp_path / "bad", show_progress=False, **bad)
    assert not (tmp_path / "bad").exists()

