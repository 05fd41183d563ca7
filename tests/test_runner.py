"""The notebook runner API, called directly (no papermill): checks, demo mode, outputs, RootNet -> BBOX_ROOT."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import environment, runner, widgets
from helpers.geometry import heatmap_to_camera
from helpers.h36m import DataError, load_bbox_root
from helpers.result_schema import validate_result


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """One demo cache per test session (shared by the runner, notebook and batch tests: same base temp)."""
    cache = tmp_path_factory.getbasetemp() / "demo-cache"
    runner.ensure_demo_data(cache)
    return cache


@pytest.fixture
def no_input_roots(monkeypatch):
    """No real data anywhere: what a fresh machine without Kaggle inputs looks like."""
    monkeypatch.setattr(environment, "default_input_roots", lambda *a, **k: [])


def _params(cache: Path, out: Path, **kw) -> runner.RunParams:
    base = dict(model="convnextpose", variant="XS", cache_dir=str(cache), output_dir=str(out), batch_size=4)
    return runner.RunParams(**{**base, **kw})


# ------------------------------------------------------------------------------------------- parameters
def test_resolve_model_id_accepts_family_variant_and_ids():
    assert runner.resolve_model_id("convnextpose", "L") == "convnextpose_L"
    assert runner.resolve_model_id("ConvNeXtPose", "xs") == "convnextpose_XS"
    assert runner.resolve_model_id("integral", "R50") == "integral_r50"
    assert runner.resolve_model_id("mobilehumanpose", "lpski") == "mobilehumanpose_lpski"
    assert runner.resolve_model_id("rootnet", None) == "rootnet"  # a family with one variant
    assert runner.resolve_model_id("posenet_unused".split("_")[0], "R50") == "posenet"
    assert runner.resolve_model_id("convnextpose_M") == "convnextpose_M"


def test_unknown_model_or_variant_lists_the_valid_ones():
    with pytest.raises(runner.ConfigError, match=r"unknown VARIANT 'XXL'.*XS, S, M, L"):
        runner.resolve_model_id("convnextpose", "XXL")
    with pytest.raises(runner.ConfigError, match=r"unknown MODEL 'hrnet'.*convnextpose.*posenet"):
        runner.resolve_model_id("hrnet", "w32")
    with pytest.raises(runner.ConfigError, match="needs a VARIANT"):
        runner.resolve_model_id("convnextpose", None)
    with pytest.raises(runner.ConfigError, match="variant 'M'"):
        runner.resolve_model_id("convnextpose_M", "L")


@pytest.mark.parametrize("kw, message", [
    (dict(detector_boxes="x.json", use_gt_info=False), "DETECTOR_BOXES gives boxes without roots, for RootNet"),
    (dict(detector_boxes="x.json", model="rootnet", variant="R50"), "DETECTOR_BOXES is set .* USE_GT_INFO is True"),
    (dict(bbox_root="x.json", use_gt_info=False, model="rootnet", variant="R50"), "DETECTOR_BOXES = 'x.json'"),
    (dict(protocol=3), "PROTOCOL must be 1 or 2"),
    (dict(image_limit=0), "IMAGE_LIMIT must be a positive integer"),
    (dict(batch_size=2.5), "BATCH_SIZE must be a positive integer"),
    (dict(device="cuda:1"), "DEVICE must be"),
    (dict(demo="maybe"), "DEMO must be"),
    (dict(flip_test="yes"), "FLIP_TEST must be True or False"),
    (dict(bbox_root="x.json"), "set USE_GT_INFO = False"),
    (dict(demo=True, data_root="/data"), "DEMO = True runs on the generated demo data, but DATA_ROOT is set"),
    (dict(device_check="sometimes"), "DEVICE_CHECK must be"),
    (dict(precision="fp8"), "PRECISION must be one of 'fp32', 'tf32', 'fp16', 'bf16'"),
])
def test_bad_parameters_are_refused_with_the_fix(kw, message):
    with pytest.raises(runner.ConfigError, match=message):
        runner.RunParams(**{"model": "convnextpose", "variant": "XS", **kw})


def test_device_check_parameter_accepts_papermill_spellings():
    for given, expected in (("auto", "auto"), ("STRICT", "strict"), ("True", True), ("false", False), (True, True)):
        assert runner.RunParams(model="convnextpose", variant="XS", device_check=given).device_check == expected
    params = runner.RunParams(model="convnextpose", variant="XS", precision="tf32", device_check="strict")
    assert params.precision == "tf32"


def test_spread_picks_evenly_from_first_to_last():
    picks = runner._spread(np.arange(100, 200), 5)
    assert picks.tolist() == [100, 125, 150, 174, 199]  # round(linspace(0, 99, 5)) = 0, 25, 50, 74(.25), 99
    assert runner._spread(np.arange(3), 10).tolist() == [0, 1, 2]
    assert runner._spread(np.arange(3), None).tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------------------- demo run
def test_demo_run_end_to_end(demo_cache, tmp_path, no_input_roots):
    run = runner.prepare(_params(demo_cache, tmp_path, image_limit=6))
    assert run.generated_data and run.weights_kind == "random_demo"
    assert len(run.selected) == 6 and len(run.image_paths) == 6
    assert run.data_summary().loc["samples run", "value"] == 6
    assert run.data_summary().loc["data", "value"].startswith("GENERATED data")
    assert run.checkpoint_summary().loc["weights", "value"] == "RANDOM DEMO WEIGHTS"
    assert "python" in run.environment().index
    run.infer()
    per_action = run.evaluate()
    assert per_action.columns.name.startswith("RANDOM DEMO WEIGHTS — numbers are meaningless | GENERATED DATA — not "
                                              "Human3.6M, not comparable with papers | Protocol 2, "
                                              "ground-truth boxes, ground-truth roots")
    result_path = run.save()
    run.paper_comparison()
    run.plots()
    run.qualitative_samples()
    files = run.files_table()

    result = json.loads(result_path.read_text())
    validate_result(result)
    assert result["weights"]["kind"] == "random_demo"
    assert result["data"]["kind"] == "generated" and result["settings"]["demo_data"] is True
    assert result["model"]["model_id"] == "convnextpose_XS"
    assert result["partial"] is True and result["num_samples"] == 6
    assert result["num_expected"] == len(run.test_set)
    assert result["settings"]["image_limit"] == 6 and result["settings"]["batch_size"] == 4
    # strict fp32, recorded; the crops checked against OpenCV 4.x (a test requirement) and identical
    assert {k: result["settings"][k] for k in ("tf32", "cudnn_benchmark", "cudnn_deterministic")} == {
        "tf32": False, "cudnn_benchmark": False, "cudnn_deterministic": True}
    assert result["crop_check"]["crop_identical"] is True and result["crop_check"]["decode_identical"] is True
    assert result["crop_check"]["images"] == 6 and result["crop_check"]["skipped"] is None
    assert result["device_check"] is None  # "auto" on a CPU
    assert result["checkpoint"]["sha256"] and result["timing"]["total_s"] > 0
    # counts are JSON integers, durations floats
    assert '"images": 6,' in result_path.read_text() and type(result["timing"]["images_decoded"]) is int
    assert type(result["timing"]["inference_s"]) is float
    for name in ("result", "predictions", "per_action_csv", "per_joint_png", "qualitative_png"):
        assert Path(files.loc[name, "path"]).is_file(), name
    assert (tmp_path / "convnextpose_XS" / "result.json") == result_path
    # what repeats this run: the notebook and every parameter as resolved (tested by running it in test_notebooks)
    repeat = result["parameters"]
    assert repeat["notebook"] == "notebooks/convnextpose.ipynb"
    assert repeat["values"]["DEMO"] is True and repeat["values"]["DEVICE"] == "cpu"
    assert repeat["values"]["OUTPUT_DIR"] == str(tmp_path.resolve()) and repeat["values"]["IMAGE_LIMIT"] == 6
    assert "CHECKPOINT" not in repeat["values"] and "DATA_ROOT" not in repeat["values"]  # demo: made from SEED
    assert (tmp_path / "convnextpose_XS" / "REPRODUCE.md").is_file()

    # The headline, recomputed independently from predictions.npz and the ground truth of the test set.
    pred = np.load(tmp_path / "convnextpose_XS" / "predictions.npz")
    ts = run.test_set
    rows = np.array([int(np.flatnonzero(ts.image_id == i)[0]) for i in pred["image_id"]])
    cam = heatmap_to_camera(pred["coords"], ts.bbox[rows], ts.root_cam[rows, 2], ts.f[rows], ts.c[rows],
                            tuple(pred["output_shape"]), int(pred["depth_dim"]))
    gt = ts.joint_cam[rows]
    err = np.linalg.norm((cam - cam[:, :1]) - (gt - gt[:, :1]), axis=2)[:, :17]
    assert result["metrics"]["mpjpe"]["total"] == pytest.approx(err.mean(), abs=1e-6)
    assert sorted(pred["image_id"].tolist()) == sorted(ts.image_id[run.selected].tolist())


def _real_copy(demo_data: Path, target: Path) -> Path:
    """The demo data set made to look real: its annotation files without their info entry, no marker file, the
    images linked. What a real Human3.6M folder looks like to the runner (tests only: numbers stay synthetic)."""
    import shutil

    annotations = target / "annotations"
    annotations.mkdir(parents=True)
    for path in (demo_data / "annotations (1)" / "annotations").iterdir():
        if path.name.endswith("_data.json"):
            data = json.loads(path.read_text())
            data.pop("info", None)
            (annotations / path.name).write_text(json.dumps(data))
        else:
            shutil.copy(path, annotations / path.name)
    for images in ("S9_ACT2_16", "S11_ACT2_16"):
        (target / images).symlink_to(demo_data / images, target_is_directory=True)
    return target


def test_auto_mode_uses_generated_data_only_when_nothing_real_is_found(demo_cache, tmp_path, monkeypatch):
    demo_data = runner.ensure_demo_data(demo_cache)
    real = _real_copy(demo_data, tmp_path / "real")

    def report_mode(params, spec, cache, data, notes):  # stops prepare right where data and weights are decided
        raise runner.CheckpointUnavailable(f"generated={data.generated} root={data.root}")

    monkeypatch.setattr(runner, "_resolve_checkpoint", report_mode)
    monkeypatch.setattr(environment, "default_input_roots", lambda *a, **k: [real])
    with pytest.raises(runner.CheckpointUnavailable, match=f"generated=False root={real}"):
        runner.prepare(_params(demo_cache, tmp_path, image_limit=2))
    # Generated data under the input roots is not real data, wherever it is: DEMO "auto" uses the demo set.
    monkeypatch.setattr(environment, "default_input_roots", lambda *a, **k: [demo_data])
    with pytest.raises(runner.CheckpointUnavailable, match="generated=True"):
        runner.prepare(_params(demo_cache, tmp_path, image_limit=2))
    monkeypatch.setattr(environment, "default_input_roots", lambda *a, **k: [])
    with pytest.raises(runner.CheckpointUnavailable, match="generated=True"):
        runner.prepare(_params(demo_cache, tmp_path, image_limit=2))


def test_real_data_without_a_checkpoint_fails_instead_of_using_random_weights(demo_cache, tmp_path, monkeypatch,
                                                                               no_input_roots):
    from helpers import acquire

    def unavailable(source, **kw):
        raise acquire.AcquireError(f"nothing for {kw.get('model_id')}")

    monkeypatch.setattr(acquire, "acquire", unavailable)
    data = str(_real_copy(runner.ensure_demo_data(demo_cache), tmp_path / "real"))
    for demo in ("auto", False):
        with pytest.raises(runner.CheckpointUnavailable, match=r"nothing for convnextpose_XS.*set CHECKPOINT"):
            runner.prepare(_params(demo_cache, tmp_path, data_root=data, image_limit=2, demo=demo))
    assert not (tmp_path / "convnextpose_XS").exists()


def _own_checkpoint(demo_cache: Path, tmp_path: Path) -> Path:
    """A checkpoint of the user's own, saved by the official training call (a DataParallel state dict with its
    `_metadata`, the optimizer's state), without the demo files' marker: trained weights as far as anyone can tell."""
    import torch

    from helpers.demo_checkpoints import DEMO_MARKER_KEY, official_payload

    payload = official_payload("convnextpose_XS", seed=7)
    del payload[DEMO_MARKER_KEY]
    path = tmp_path / "my_weights.pth"
    torch.save({**payload, "epoch": 3}, path)
    return path


@pytest.mark.parametrize("demo, data_root", [("auto", None), (True, None), ("auto", "generated")])
def test_a_given_checkpoint_runs_on_generated_data_and_every_output_says_both(demo_cache, tmp_path, no_input_roots,
                                                                             demo, data_root):
    """Smoke-testing your own weights without Human3.6M: DEMO "auto" or True with CHECKPOINT, or a DATA_ROOT that
    holds generated data. Data and weights are stated separately; generated data is never reported as real."""
    from helpers import consolidate

    checkpoint = _own_checkpoint(demo_cache, tmp_path)
    if data_root == "generated":
        data_root = str(runner.ensure_demo_data(demo_cache))
    run = runner.prepare(_params(demo_cache, tmp_path / "out", image_limit=3, demo=demo, data_root=data_root,
                                 checkpoint=str(checkpoint)))
    assert run.generated_data and run.weights_kind == "given"
    assert run.checkpoint_summary().loc["weights", "value"] == "the checkpoint given as CHECKPOINT"
    run.infer()
    table = run.evaluate()
    assert table.columns.name.startswith("GENERATED DATA — not Human3.6M, not comparable with papers | Protocol 2")
    result = json.loads(run.save().read_text())
    assert result["data"]["kind"] == "generated" and result["settings"]["demo_data"] is True
    assert result["weights"]["kind"] == "given" and result["weights"]["sha256"] == result["checkpoint"]["sha256"]
    assert "not comparable" in result["data"]["note"]
    assert run.paper_comparison()["grade"].iloc[0] == "n/a: generated data"
    board = consolidate.consolidate(tmp_path / "out").leaderboard
    assert board["data"].tolist() == ["generated"]
    assert board["weights"].iloc[0] == f"given ({result['checkpoint']['sha256'][:12]})"
    assert board["model"].iloc[0].endswith("[generated data] [partial]")
    text = (tmp_path / "out" / "report" / "REPORT.md").read_text()
    assert "GENERATED DATA" in text and "None." not in text.split("## Problems found", 1)[1]


def test_generated_annotations_are_recognised_without_their_marker_file(demo_cache, tmp_path, no_input_roots):
    """Annotation files copied away from the demo folder (no DEMO_DATA.md beside them) still say they are
    generated: the run records generated data, not real."""
    demo_data = runner.ensure_demo_data(demo_cache)
    copy = tmp_path / "copy"
    (copy / "annotations").mkdir(parents=True)
    for path in (demo_data / "annotations (1)" / "annotations").iterdir():
        (copy / "annotations" / path.name).write_bytes(path.read_bytes())
    for images in ("S9_ACT2_16", "S11_ACT2_16"):
        (copy / images).symlink_to(demo_data / images, target_is_directory=True)
    run = runner.prepare(_params(demo_cache, tmp_path / "out", data_root=str(copy), image_limit=2,
                                 checkpoint=str(_own_checkpoint(demo_cache, tmp_path))))
    assert run.generated_data and "info.generated_by = 'helpers.demo_data'" in run.data.evidence
def test_checkpoint_chosen_by_protocol_is_recorded(demo_cache, tmp_path, no_input_roots):
    """CHECKPOINT naming a folder with one file per protocol: PROTOCOL chooses, and the result records it."""
    from helpers.demo_checkpoints import write_demo_checkpoints

    data = str(runner.ensure_demo_data(demo_cache))
    weights = tmp_path / "weights"
    for p in (1, 2):
        write_demo_checkpoints(weights / f"protocol{p}", ["convnextpose_XS"], seed=p)
    run = runner.prepare(_params(demo_cache, tmp_path / "out", data_root=data, checkpoint=str(weights), protocol=1,
                                 image_limit=2))
    assert run.checkpoint_path.is_relative_to(weights / "protocol1") and run.checkpoint_info["protocol"] == 1
    assert run._extra_blocks()["checkpoint"]["protocol"] == 1
    assert run.checkpoint_summary().loc["chosen for protocol", "value"] == 1


# ------------------------------------------------------------------------------------------ bad input
def test_explicit_missing_checkpoint_fails_before_inference(demo_cache, tmp_path):
    data = str(runner.ensure_demo_data(demo_cache))
    missing = tmp_path / "nowhere" / "ConvNeXtPose_XS.tar"
    with pytest.raises(runner.CheckpointUnavailable, match="ConvNeXtPose_XS.tar"):
        runner.prepare(_params(demo_cache, tmp_path, data_root=data, checkpoint=str(missing)))
    assert not (tmp_path / "convnextpose_XS").exists()


def test_wrong_data_root_says_what_was_searched(demo_cache, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=r"DATA_ROOT .*empty.*no Human36M_subject\*_data.json.*searched"):
        runner.prepare(_params(demo_cache, tmp_path, data_root=str(empty)))
    with pytest.raises(DataError, match="does not exist"):
        runner.prepare(_params(demo_cache, tmp_path, data_root=str(tmp_path / "absent")))


def test_no_data_and_no_demo_says_what_was_searched(demo_cache, tmp_path, no_input_roots):
    with pytest.raises(DataError, match="input roots.*DEMO"):
        runner.prepare(_params(demo_cache, tmp_path, demo=False))


def _partial_copy(demo_data: Path, target: Path) -> Path:
    """The demo annotations and only S9's images (links, no copies)."""
    target.mkdir()
    (target / "annotations (1)").symlink_to(demo_data / "annotations (1)", target_is_directory=True)
    (target / "S9_ACT2_16").symlink_to(demo_data / "S9_ACT2_16", target_is_directory=True)
    return target


def test_missing_images_fail_fast_or_are_skipped_and_recorded(demo_cache, tmp_path, monkeypatch):
    root = _partial_copy(runner.ensure_demo_data(demo_cache), tmp_path / "data")
    monkeypatch.setattr(runner, "_resolve_checkpoint", lambda params, spec, cache, data, notes: (
        runner.ensure_demo_checkpoint(cache, spec.model_id), "test", "random_demo", None))
    with pytest.raises(DataError, match=r"test images are missing.*s_11_act.*set SKIP_MISSING_IMAGES = True"):
        runner.prepare(_params(demo_cache, tmp_path, data_root=str(root)))
    with pytest.raises(DataError, match=r"selected test images are missing.*SKIP_MISSING_IMAGES"):
        runner.prepare(_params(demo_cache, tmp_path, data_root=str(root), image_limit=10))

    run = runner.prepare(_params(demo_cache, tmp_path, data_root=str(root), image_limit=3, skip_missing_images=True))
    assert set(run.eval_set.subject.tolist()) == {9}
    s11 = int((run.test_set.subject == 11).sum())
    assert run.image_check.num_missing == s11 > 0
    run.infer()
    run.evaluate()
    result = json.loads(run.save().read_text())
    assert result["skipped_images"]["count"] == s11
    assert "s_11_act" in result["skipped_images"]["first_paths"][0]
    assert result["num_samples"] == 3 and result["partial"] is True


# ------------------------------------------------------------------------------------- RootNet -> BBOX_ROOT
def _mini_data(cache: Path, out: Path, count: int = 6) -> Path:
    """The demo data cut to `count` protocol-1 test images of S11 (every file in its own format, no sidecar), so a
    RootNet run covers the whole test set in seconds."""
    from helpers import demo_data
    from helpers.h36m import find_annotation_dir

    demo = runner.ensure_demo_data(cache)
    source = find_annotation_dir(demo)
    data = json.loads((source / "Human36M_subject11_data.json").read_text())
    test_ids = [im["id"] for im in data["images"] if im["frame_idx"] % 64 == 0]
    keep = set(test_ids[::len(test_ids) // count][:count])
    annotations = out / "annotations"
    annotations.mkdir(parents=True)
    data = {"images": [im for im in data["images"] if im["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    (annotations / "Human36M_subject11_data.json").write_text(json.dumps(data))
    for kind in ("camera", "joint_3d"):
        (annotations / f"Human36M_subject11_{kind}.json").write_text(
            (source / f"Human36M_subject11_{kind}.json").read_text())
    for image in data["images"]:
        target = out / "images" / image["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(next(demo.rglob(Path(image["file_name"]).name)).read_bytes())
    for name in (demo_data.DETECTOR_FILE, demo_data.BBOX_ROOT_FILE):
        entries = [e for e in json.loads((demo / name).read_text()) if e["image_id"] in keep]
        (out / name).write_text(json.dumps(entries))
    return out


def _mini_params(cache: Path, out: Path, data: Path, model: str, **kw) -> runner.RunParams:
    """A run on the mini data with the demo's random checkpoint of `model` (recorded as random_demo)."""
    return runner.RunParams(model=model, variant="R50", data_root=str(data), protocol=1, cache_dir=str(cache),
                            checkpoint=str(runner.ensure_demo_checkpoint(cache, model)), output_dir=str(out),
                            batch_size=4, **kw)


def _run(params: runner.RunParams) -> tuple[runner.Run, dict]:
    run = runner.prepare(params)
    run.infer()
    run.evaluate()
    return run, json.loads(run.save().read_text())


def test_rootnet_on_detector_boxes_feeds_posenet_offline(demo_cache, tmp_path, no_input_roots):
    """The demo's detected path, end to end: RootNet on the demo detector's boxes (its DETECTOR_BOXES default),
    its bbox_root file (with a sidecar) as PoseNet's BBOX_ROOT, labelled detector boxes with this run's roots."""
    from helpers import box_sources, geometry, report
    from helpers.models.registry import get_spec

    # Protocol 1 (S11 only) keeps the RootNet run short while covering its whole test set.
    root_run, result = _run(_params(demo_cache, tmp_path, model="rootnet", variant="R50", protocol=1,
                                    use_gt_info=False))
    validate_result(result)
    assert result["kind"] == "root" and result["headline"]["metric"] == "mrpe"
    detector_file = runner.ensure_demo_data(demo_cache) / "bbox_human36m_output.json"
    assert result["conventions"]["bbox_source"] == "detector"
    assert result["conventions"]["sources"]["boxes"]["file"] == str(detector_file)
    # the boxes RootNet cropped are the detector's boxes through process_bbox
    ts = root_run.test_set
    detections = {e["image_id"]: e["bbox"] for e in json.loads(detector_file.read_text())}
    expected, _ = geometry.process_bboxes(np.array([detections[i] for i in ts.image_id]), ts.width, ts.height)
    np.testing.assert_array_equal(ts.bbox, expected)
    assert not np.allclose(ts.bbox, runner.prepare(_params(demo_cache, tmp_path, model="rootnet", variant="R50",
                                                           protocol=1)).test_set.bbox)  # not the GT boxes

    bbox_root_path = root_run.files["bbox_root"]
    table = load_bbox_root(bbox_root_path)
    pred = np.load(tmp_path / "rootnet" / "predictions.npz")
    assert len(table) == len(root_run.test_set) == len(pred["image_id"])
    order = np.argsort(pred["image_id"])
    np.testing.assert_allclose(table.root_cam, pred["root_cam"][order])
    np.testing.assert_array_equal(table.bbox, pred["bbox"][order])
    sidecar = json.loads(box_sources.sidecar_path(bbox_root_path).read_text())
    assert sidecar["boxes"]["source"] == "detector" and sidecar["boxes"]["file"] == str(detector_file)
    assert sidecar["roots"]["source"] == "rootnet_run" and sidecar["protocol"] == 1
    assert sidecar["roots"]["checkpoint_sha256"] == result["checkpoint"]["sha256"]
    assert sidecar["roots"]["weights"] == "random_demo"
    result_bytes = (tmp_path / "rootnet" / "result.json").read_bytes()
    assert sidecar["roots"]["result_id"] == box_sources.bytes_sha256(result_bytes)[:16]

    pose_run, pose_result = _run(_params(demo_cache, tmp_path, model="posenet", variant="R50", protocol=1,
                                         use_gt_info=False, bbox_root=str(bbox_root_path), image_limit=3))
    ts = pose_run.test_set
    pos, found = table.lookup(ts.image_id)
    assert found.all()
    np.testing.assert_allclose(ts.root_cam, table.root_cam[pos])
    np.testing.assert_allclose(ts.bbox, table.bbox[pos])
    conv = pose_result["conventions"]
    assert (conv["bbox_source"], conv["root_source"]) == ("detector", "rootnet_run")
    assert conv["sources"]["roots"]["result_id"] == sidecar["roots"]["result_id"]
    # the boxes' first file is still the detector's, reached through RootNet's bbox_root file
    assert conv["sources"]["boxes"]["file"] == str(detector_file)
    assert conv["sources"]["boxes"]["via"] == str(bbox_root_path)
    assert conv["protocol"] == 1 and pose_result["headline"]["metric"] == "pa_mpjpe_rigid_fit18"
    assert report.source_label(pose_result) == "detector boxes, RootNet roots (this run)"
    assert "detector boxes, RootNet roots (this run)" in pose_run.per_joint_table().columns.name
    assert pose_run.data_summary().loc["roots", "value"].startswith("RootNet roots (this run)")
    # random demo RootNet weights: not the paper's setting, whatever the pose weights
    assert report.published_setting(pose_result)[1].startswith("n/a: the roots come from a RootNet run with random "
                                                               "demo weights")
    assert np.isnan(report.paper_comparison(pose_result, get_spec("posenet")).iloc[0]["paper (mm)"])


def test_rootnet_on_ground_truth_boxes_gets_no_detected_paper_number(demo_cache, tmp_path):
    from helpers import consolidate, report
    from helpers.models.registry import get_spec

    data = _mini_data(demo_cache, tmp_path / "data")
    out = tmp_path / "out"
    root_run, root_result = _run(_mini_params(demo_cache, out, data, "rootnet"))
    assert root_result["conventions"]["bbox_source"] == "ground_truth"
    assert len(root_run.test_set) == 6 and not root_result["partial"]
    _, pose_result = _run(_mini_params(demo_cache, out, data, "posenet", use_gt_info=False,
                                       bbox_root=str(root_run.files["bbox_root"])))
    conv = pose_result["conventions"]
    assert (conv["bbox_source"], conv["root_source"]) == ("ground_truth", "rootnet_run")
    assert report.source_label(pose_result) == "ground-truth boxes, RootNet roots (this run)"
    assert report.published_setting(pose_result) == (
        None, "n/a: no published number for ground-truth boxes with RootNet roots")
    for result in (pose_result, {**pose_result, "weights": {"kind": "released"}}):  # even with released weights
        row = report.paper_comparison(result, get_spec("posenet")).iloc[0]
        assert np.isnan(row["paper (mm)"]) and np.isnan(row["Δ (mm)"])
    # the leaderboard groups it by both sources, apart from a ground-truth run of the same model
    _run(_mini_params(demo_cache, out / "gt", data, "posenet"))
    board = consolidate.consolidate(out)
    groups = set(board.leaderboard.loc[board.leaderboard["model_id"] == "posenet", "group"])
    assert groups == {"Protocol 1 PA-MPJPE rigid fit18, ground-truth boxes, RootNet roots (this run)",
                      "Protocol 1 PA-MPJPE rigid fit18, ground-truth boxes, ground-truth roots"}
    assert board.pairwise.empty  # one model per group: nothing is compared across box or root sources
    origin = board.leaderboard.set_index("result").loc["posenet", "box/root origin"]
    assert f"roots of RootNet result {conv['sources']['roots']['result_id']}" in origin
    assert "ground-truth boxes, RootNet roots (this run)" in board.files["report"].read_text()


def test_rootnet_on_a_released_files_boxes_reports_its_root_difference(demo_cache, tmp_path, monkeypatch):
    """The mini data's bbox_root file registered as a released RootNet output (the real released files are
    recognised the same way: tests/test_box_sources.py), then RootNet on its boxes and PoseNet on it."""
    from helpers import box_sources, report
    from helpers.h36m import load_bbox_root as load

    data = _mini_data(demo_cache, tmp_path / "data")
    released_path = data / "bbox_root_human36m_output.json"
    table = load(released_path)

    def register(protocol: int) -> None:
        monkeypatch.setattr(box_sources, "RELEASED_BBOX_ROOT_FILES", (box_sources.ReleasedBBoxRoot(
            protocol, (11,), len(table), table.file_sha256, "-", "the test's subjects"),))

    register(1)
    out = tmp_path / "out"
    root_run, result = _run(_mini_params(demo_cache, out, data, "rootnet", use_gt_info=False,
                                         detector_boxes=str(released_path), image_limit=4))
    block = result["root_reproduction"]
    assert block["released"] is True and block["samples"] == 4 and block["reference_protocol"] == 1
    pred = np.load(out / "rootnet" / "predictions.npz")
    rows, _ = table.lookup(pred["image_id"])
    distance = np.linalg.norm(pred["root_cam"].astype(np.float64) - table.root_cam[rows], axis=1)
    assert block["mean_mm"] == pytest.approx(distance.mean()) and block["max_mm"] == pytest.approx(distance.max())
    frame = root_run.root_reproduction()
    assert frame.loc["samples compared", "value"] == 4
    assert "RootNet reproduction check" in frame.columns.name
    assert (out / "rootnet" / "root_reproduction.csv").is_file()
    np.testing.assert_array_equal(root_run.test_set.bbox, table.bbox)  # the file's boxes, as they are

    pose_run, pose_result = _run(_mini_params(demo_cache, out, data, "posenet", use_gt_info=False,
                                              bbox_root=str(released_path), image_limit=2))
    assert report.source_label(pose_result) == "detector boxes, released RootNet roots"
    assert report.paper_comparison(pose_result, pose_run.spec).iloc[0]["paper (mm)"] == 35.2

    register(2)  # the same file as a protocol-2 output, given to a protocol-1 run: flagged and recorded
    flagged = runner.prepare(_mini_params(demo_cache, out, data, "posenet", use_gt_info=False,
                                          bbox_root=str(released_path), image_limit=2))
    assert flagged.test_set.sources["protocol_check"]["status"] == "mismatch"
    assert flagged.data_summary().loc["protocol check", "value"].startswith("mismatch: the bbox_root file's roots "
                                                                            "were made for protocol 2")
    assert any(note.startswith("WARNING, box/root file") for note in flagged.notes)


def test_use_gt_info_false_without_bbox_root_on_real_data_is_refused(demo_cache, tmp_path):
    data = str(_real_copy(runner.ensure_demo_data(demo_cache), tmp_path / "real"))
    with pytest.raises(runner.ConfigError, match="USE_GT_INFO = False needs BBOX_ROOT"):
        runner.prepare(_params(demo_cache, tmp_path, data_root=data, use_gt_info=False))
    with pytest.raises(DataError, match="BBOX_ROOT .* does not exist; run rootnet.ipynb"):
        runner.prepare(_params(demo_cache, tmp_path, data_root=data, use_gt_info=False,
                               bbox_root=str(tmp_path / "absent.json")))
    with pytest.raises(runner.ConfigError, match="USE_GT_INFO = False for rootnet needs DETECTOR_BOXES"):
        runner.prepare(_params(demo_cache, tmp_path, model="rootnet", variant="R50", data_root=data,
                               use_gt_info=False))
    with pytest.raises(DataError, match="DETECTOR_BOXES .* does not exist"):
        runner.prepare(_params(demo_cache, tmp_path, model="rootnet", variant="R50", data_root=data,
                               use_gt_info=False, detector_boxes=str(tmp_path / "absent.json")))


# ---------------------------------------------------------------------------------------------- widgets
def test_widgets_pick_model_and_run_with_the_chosen_parameters():
    base = runner.RunParams(model="convnextpose", variant="L", image_limit=None, output_dir="/out")
    calls = []
    controls = widgets.build_controls(base, run_fn=calls.append)
    assert list(controls.variant.options) == ["XS", "S", "M", "L"] and controls.variant.value == "L"
    controls.family.value = "mobilehumanpose"
    assert "lpski_2021" in controls.variant.options
    controls.variant.value = "lpski_2021"
    controls.image_limit.value = 16
    controls.flip_test.value = False
    controls.button.click()
    assert len(calls) == 1
    chosen = calls[0]
    assert chosen.model_id == "mobilehumanpose_lpski_2021"
    assert chosen.image_limit == 16 and chosen.flip_test is False and chosen.output_dir == "/out"


def test_widgets_show_errors_and_are_skipped_in_batch(capsys):
    base = runner.RunParams(model="posenet", variant="R50")

    def failing(params):
        raise DataError("no data here")

    controls = widgets.build_controls(base, run_fn=failing)
    controls.button.click()  # the message is printed into the output area, the button stays usable
    assert controls.button.disabled is False
    assert widgets.offer_controls(base, interactive=False) is None
    assert "skipped" in capsys.readouterr().out
