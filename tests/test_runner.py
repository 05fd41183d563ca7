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
    (dict(protocol=3), "PROTOCOL must be 1 or 2"),
    (dict(image_limit=0), "IMAGE_LIMIT must be a positive integer"),
    (dict(batch_size=2.5), "BATCH_SIZE must be a positive integer"),
    (dict(device="cuda:1"), "DEVICE must be"),
    (dict(demo="maybe"), "DEMO must be"),
    (dict(flip_test="yes"), "FLIP_TEST must be True or False"),
    (dict(bbox_root="x.json"), "set USE_GT_INFO = False"),
    (dict(demo=True, data_root="/data"), "DEMO = True"),
])
def test_bad_parameters_are_refused_with_the_fix(kw, message):
    with pytest.raises(runner.ConfigError, match=message):
        runner.RunParams(model="convnextpose", variant="XS", **kw)


def test_spread_picks_evenly_from_first_to_last():
    picks = runner._spread(np.arange(100, 200), 5)
    assert picks.tolist() == [100, 125, 150, 174, 199]  # round(linspace(0, 99, 5)) = 0, 25, 50, 74(.25), 99
    assert runner._spread(np.arange(3), 10).tolist() == [0, 1, 2]
    assert runner._spread(np.arange(3), None).tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------------------- demo run
def test_demo_run_end_to_end(demo_cache, tmp_path, no_input_roots):
    run = runner.prepare(_params(demo_cache, tmp_path, image_limit=6))
    assert run.demo and run.weights_kind == "random_demo"
    assert len(run.selected) == 6 and len(run.image_paths) == 6
    assert run.data_summary().loc["samples run", "value"] == 6
    assert run.checkpoint_summary().loc["weights", "value"] == "RANDOM DEMO"
    assert "python" in run.environment().index
    run.infer()
    per_action = run.evaluate()
    assert per_action.columns.name == "RANDOM DEMO WEIGHTS — numbers are meaningless"
    result_path = run.save()
    run.paper_comparison()
    run.plots()
    run.qualitative_samples()
    files = run.files_table()

    result = json.loads(result_path.read_text())
    validate_result(result)
    assert result["weights"]["kind"] == "random_demo"
    assert result["model"]["model_id"] == "convnextpose_XS"
    assert result["partial"] is True and result["num_samples"] == 6
    assert result["num_expected"] == len(run.test_set)
    assert result["settings"]["image_limit"] == 6 and result["settings"]["batch_size"] == 4
    assert result["checkpoint"]["sha256"] and result["timing"]["total_s"] > 0
    for name in ("result", "predictions", "per_action_csv", "per_joint_png", "qualitative_png"):
        assert Path(files.loc[name, "path"]).is_file(), name
    assert (tmp_path / "convnextpose_XS" / "result.json") == result_path

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


def test_auto_mode_uses_demo_only_when_nothing_real_is_found(demo_cache, tmp_path, monkeypatch):
    demo_data = runner.ensure_demo_data(demo_cache)
    monkeypatch.setattr(environment, "default_input_roots", lambda *a, **k: [demo_data])

    def report_mode(params, spec, cache, demo, root, notes):  # stops prepare right where the mode is decided
        raise runner.CheckpointUnavailable(f"demo={demo} root={root}")

    monkeypatch.setattr(runner, "_resolve_checkpoint", report_mode)
    # Annotations found under the input roots: a real run (demo False), which then needs a checkpoint.
    with pytest.raises(runner.CheckpointUnavailable, match=f"demo=False root={demo_data}"):
        runner.prepare(_params(demo_cache, tmp_path, image_limit=2))
    monkeypatch.setattr(environment, "default_input_roots", lambda *a, **k: [])
    with pytest.raises(runner.CheckpointUnavailable, match="demo=True"):
        runner.prepare(_params(demo_cache, tmp_path, image_limit=2))


def test_real_data_without_a_checkpoint_fails_instead_of_using_random_weights(demo_cache, tmp_path, monkeypatch,
                                                                               no_input_roots):
    from helpers import acquire

    def unavailable(source, **kw):
        raise acquire.AcquireError(f"nothing for {kw.get('model_id')}")

    monkeypatch.setattr(acquire, "acquire", unavailable)
    data = str(runner.ensure_demo_data(demo_cache))
    for demo in ("auto", False):
        with pytest.raises(runner.CheckpointUnavailable, match=r"nothing for convnextpose_XS.*set CHECKPOINT"):
            runner.prepare(_params(demo_cache, tmp_path, data_root=data, image_limit=2, demo=demo))
    assert not (tmp_path / "convnextpose_XS").exists()


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
    monkeypatch.setattr(runner, "_resolve_checkpoint", lambda params, spec, cache, demo, data_root, notes: (
        runner.ensure_demo_checkpoint(cache, spec.model_id), "test", "random_demo", None))
    with pytest.raises(DataError, match=r"test images are missing.*s_11_act.*skip"):
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
def test_rootnet_bbox_root_is_accepted_as_bbox_root(demo_cache, tmp_path, no_input_roots):
    # Protocol 1 (S11 only) keeps the RootNet run short while covering its whole test set.
    root_run = runner.prepare(_params(demo_cache, tmp_path, model="rootnet", variant="R50", protocol=1))
    assert root_run.test_set.subjects == (11,)
    root_run.infer()
    root_run.evaluate()
    result = json.loads(root_run.save().read_text())
    validate_result(result)
    assert result["kind"] == "root" and result["headline"]["metric"] == "mrpe"
    bbox_root_path = root_run.files["bbox_root"]
    table = load_bbox_root(bbox_root_path)
    pred = np.load(tmp_path / "rootnet" / "predictions.npz")
    assert len(table) == len(root_run.test_set) == len(pred["image_id"])
    order = np.argsort(pred["image_id"])
    np.testing.assert_allclose(table.root_cam, pred["root_cam"][order])

    pose_run = runner.prepare(_params(demo_cache, tmp_path, protocol=1, use_gt_info=False,
                                      bbox_root=str(bbox_root_path), image_limit=3))
    ts = pose_run.test_set
    assert ts.bbox_source == "detected"
    pos, found = table.lookup(ts.image_id)
    assert found.all()
    np.testing.assert_allclose(ts.root_cam, table.root_cam[pos])
    np.testing.assert_allclose(ts.bbox, table.bbox[pos])
    pose_run.infer()
    pose_run.evaluate()
    pose_result = json.loads(pose_run.save().read_text())
    assert pose_result["conventions"]["bbox_source"] == "detected"
    assert pose_result["conventions"]["protocol"] == 1
    assert pose_result["headline"]["metric"] == "pa_mpjpe_rigid_fit18"


def test_use_gt_info_false_without_bbox_root_on_real_data_is_refused(demo_cache, tmp_path):
    data = str(runner.ensure_demo_data(demo_cache))
    with pytest.raises(runner.ConfigError, match="USE_GT_INFO = False needs BBOX_ROOT"):
        runner.prepare(_params(demo_cache, tmp_path, data_root=data, use_gt_info=False))
    with pytest.raises(DataError, match="BBOX_ROOT .* does not exist; run rootnet.ipynb"):
        runner.prepare(_params(demo_cache, tmp_path, data_root=data, use_gt_info=False,
                               bbox_root=str(tmp_path / "absent.json")))


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
