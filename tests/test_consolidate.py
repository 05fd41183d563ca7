"""helpers.consolidate on a temporary folder of synthetic results (see test_report.make_result)."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers import consolidate as cons  # noqa: E402
from helpers.models.registry import get_spec  # noqa: E402
from helpers.report import DEMO_MARKER  # noqa: E402
from test_report import make_result  # noqa: E402


def _put(root, name, result) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    text = result if isinstance(result, str) else json.dumps(result)
    (folder / "result.json").write_text(text)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("consolidate") / "outputs"
    _put(root, "convnextpose_L", make_result(model_id="convnextpose_L", base=50.1, gmacs=4.3, num_params=8_380_352,
                                             images_per_s=150.0))
    _put(root, "convnextpose_S", make_result(model_id="convnextpose_S", base=52.9))
    _put(root, "posenet", make_result(model_id="posenet", base=310.0, weights_kind="random_demo"))
    _put(root, "rootnet", make_result("root", model_id="rootnet", base=121.5))
    broken = make_result(model_id="convnextpose_M")
    del broken["headline"]
    _put(root, "convnextpose_M", broken)
    _put(root, "garbled", "{not json")
    # decoys: report/ and runs/ are never read
    _put(root, "report", "{}")
    _put(root, "runs", "{}")
    return root


@pytest.fixture(scope="module")
def consolidated(results_dir):
    """One consolidation shared by the read-only checks below (rendering the plots takes seconds)."""
    return cons.consolidate(results_dir)


def test_consolidate_leaderboard_and_files(results_dir, consolidated):
    out = consolidated
    lb = out.leaderboard
    for column in ("model", "model_id", HEADLINE := cons.HEADLINE_COLUMN, "PA rigid (mm)", "PA similarity (mm)",
                   "action mean (mm)", "paper (mm)", "Δ (mm)", "grade", "params (M)", "GFLOPs (MACs)", "images/s",
                   "protocol", "bbox source", "root source", "flip test", "precision", "device", "batch size",
                   "images evaluated", "partial", "weights"):
        assert column in lb.columns, column
    assert len(lb) == 4 and len(out.results) == 4
    # pose group first, ranked by MPJPE; RootNet in its own group
    assert list(lb["model_id"]) == ["convnextpose_L", "convnextpose_S", "posenet", "rootnet"]
    large = lb.set_index("model_id").loc["convnextpose_L"]
    assert large[HEADLINE] == 50.1
    assert large["paper (mm)"] == get_spec("convnextpose_L").paper.p2_mpjpe
    assert large["Δ (mm)"] == pytest.approx(50.1 - 49.75)
    assert large["grade"] == "excellent"
    assert large["params (M)"] == pytest.approx(8.380352)
    assert large["GFLOPs (MACs)"] == 4.3 and large["images/s"] == 150.0
    assert large["PA rigid (mm)"] == pytest.approx(50.1 * 0.7)
    small = lb.set_index("model_id").loc["convnextpose_S"]
    assert small["grade"] == "very good"  # 52.9 - 51.80 = 1.1
    demo = lb.set_index("model_id").loc["posenet"]
    assert demo["weights"] == "random_demo" and demo["grade"] == "n/a: random demo weights"
    assert "[random demo]" in demo["model"]
    root = lb.set_index("model_id").loc["rootnet"]
    assert root["metric"] == "MRPE" and root[HEADLINE] == 121.5
    assert root["MRPE z (mm)"] == pytest.approx(111.5)
    assert root["Δ (mm)"] == pytest.approx(1.5)
    assert root["group"] != large["group"]

    report_dir = results_dir / "report"
    assert out.out_dir == report_dir
    for name in cons.FILE_NAMES.values():
        assert (report_dir / name).is_file() and (report_dir / name).stat().st_size > 0, name
    assert not list(report_dir.glob(".*"))  # no temporary files left
    csv = pd.read_csv(report_dir / "leaderboard.csv")
    assert list(csv["model_id"]) == list(lb["model_id"])
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["any_random_demo"] is True and summary["num_results"] == 4
    assert len(summary["problems"]) == len(out.problems)

    # invalid files are listed, decoys are not read
    assert any("convnextpose_M/result.json" in p and "headline" in p for p in out.problems)
    assert any("garbled/result.json" in p for p in out.problems)
    assert not any("report/" in p or "runs/" in p for p in out.problems)


def test_report_markdown_states_conventions_and_warnings(consolidated):
    text = consolidated.files["report"].read_text()
    for expected in ("frame_idx % 64 == 0", "test subjects S9, S11", "17 evaluated", "root joint Pelvis",
                     "**Alignment:**", "similarity", "**Averaging:**", "action_mean",
                     "**Boxes and roots:** ground-truth boxes, ground-truth roots",
                     "**Flip test:** on", DEMO_MARKER.upper(), "`posenet`", "## Problems found", "garbled",
                     "![", "headline_bars.png", "per_action_heatmap.png", "accuracy_vs_cost.png",
                     "| ConvNeXtPose L | convnextpose_L | 50.10 |"):
        assert expected in text, expected
    # pose and root are separate tables under separate headings
    assert "### Protocol 2 MPJPE, ground-truth boxes, ground-truth roots" in text
    assert "### Protocol 2 MRPE, ground-truth boxes\n" in text


def test_mixed_protocols_and_flip_settings_are_grouped_and_flagged(tmp_path):
    root = tmp_path / "res"
    _put(root, "cnp_p2", make_result(model_id="convnextpose_M", base=51.0))
    _put(root, "cnp_p2_noflip", make_result(model_id="convnextpose_M", base=53.0, flip_test=False))
    _put(root, "cnp_p1", make_result(model_id="convnextpose_M", base=50.0, protocol=1))
    _put(root, "posenet_det", make_result(model_id="posenet", base=54.0, detected=True))
    out = cons.consolidate(root, tmp_path / "elsewhere")
    assert out.files["report"].parent == tmp_path / "elsewhere"
    assert len(out.groups) == 3
    assert out.groups[0].startswith("Protocol 2 MPJPE, ground-truth boxes, ground-truth roots")
    p1 = out.leaderboard.set_index("result").loc["cnp_p1"]
    assert p1["metric"] == "PA-MPJPE rigid fit18" and p1["paper (mm)"] == 34.5
    assert p1[cons.HEADLINE_COLUMN] == pytest.approx(50.0 * 0.68)
    detected = out.leaderboard.set_index("result").loc["posenet_det"]
    assert detected["paper (mm)"] == 54.4  # the published detected-box value, not the GT one
    assert any("mixes flip test" in p and "cnp_p2_noflip=False" in p for p in out.problems)
    assert any("3 different conventions" in p for p in out.problems)
    # the same model twice in one group stays distinguishable
    labels = list(out.leaderboard["model"][out.leaderboard["group"] == out.groups[0]])
    assert len(set(labels)) == 2
    assert out.per_action.shape == (4, 15)
    assert DEMO_MARKER.upper() not in out.files["report"].read_text()


def test_all_invalid_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no result.json"):
        cons.consolidate(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cons.consolidate(tmp_path / "missing")
    _put(tmp_path, "bad", "[]")
    out = cons.consolidate(tmp_path)
    assert out.leaderboard.empty and len(out.problems) == 1
    assert "No valid result" in out.files["report"].read_text()
    assert cons.main([str(tmp_path)]) == 1


def test_main_cli(results_dir, capsys, tmp_path):
    assert cons.main([str(results_dir), "--out", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    assert "ConvNeXtPose L" in printed and "problem:" in printed
    assert (tmp_path / "rep" / "REPORT.md").is_file()
    assert cons.main([str(tmp_path / "nothing")]) == 1


def test_a_result_under_another_protocol_gets_its_own_group_and_no_grade(tmp_path):
    root = tmp_path / "res"
    _put(root, "cnp_p2", make_result(model_id="convnextpose_M", base=51.0))
    other = make_result(model_id="convnextpose_M", base=49.0)
    other["conventions"]["protocol_note"] = "challenge crop and split"
    _put(root, "challenge", other)
    out = cons.consolidate(root, tmp_path / "report")
    assert len(out.groups) == 2
    assert any("not comparable: challenge crop and split" in g for g in out.groups)
    row = out.leaderboard.set_index("result").loc["challenge"]
    assert "another protocol" in row["grade"] and "challenge crop" in row["grade"]
    assert out.leaderboard.set_index("result").loc["cnp_p2"]["grade"] == "excellent"  # 51.0 vs 51.05


def test_each_row_shows_its_precision_and_reduced_precision_is_marked_unofficial(tmp_path):
    root = tmp_path / "res"
    _put(root, "cnp_fp32", make_result(model_id="convnextpose_M", base=51.0))
    half = make_result(model_id="convnextpose_L", base=50.0, precision="fp16")
    half["precision_check"] = {"requested": "fp16", "used": "fp16", "samples": 64, "max_abs_diff_heatmap": 0.01,
                               "max_abs_diff_mm": 0.4321, "mean_abs_diff_mm": 0.05, "nonfinite_batches": 0,
                               "fell_back": False}
    _put(root, "cnp_fp16", half)
    legacy = make_result(model_id="posenet", base=54.0)
    legacy["settings"] = {k: v for k, v in legacy["settings"].items() if k != "precision"} | {"amp": True}
    _put(root, "posenet_amp", legacy)  # written before PRECISION existed: `amp` meant fp16 autocast
    out = cons.consolidate(root, tmp_path / "report")
    board = out.leaderboard.set_index("result")
    assert board.loc["cnp_fp32", "precision"] == "fp32"
    assert board.loc["cnp_fp16", "precision"] == "fp16 (not official; ≤0.43 mm vs fp32)"
    assert board.loc["posenet_amp", "precision"] == "fp16 (not official)"
    text = out.files["report"].read_text()
    assert "**Reduced precision:** `cnp_fp16`, `posenet_amp` ran in tf32/fp16/bf16" in text
    assert "fp16 (not official; ≤0.43 mm vs fp32)" in text


def test_each_row_says_what_it_was_verified_with_and_failed_checks_warn(tmp_path):
    root = tmp_path / "res"
    checked = make_result(model_id="convnextpose_M", base=51.0)
    checked["settings"].update(tf32=False, cudnn_benchmark=False, cudnn_deterministic=True, decode="cpu")
    checked["device_check"] = {"device": "cuda:0", "reference": "cpu", "samples": 8, "max_abs_diff_mm": 0.02,
                               "mean_abs_diff_mm": 0.001, "tolerance_mm": 0.078, "passed": True}
    checked["crop_check"] = {"opencv": "4.10.0", "images": 8, "decode_identical": True, "crop_identical": True,
                             "max_abs_diff": 0, "skipped": None}
    _put(root, "checked", checked)
    failed = make_result(model_id="convnextpose_L", base=50.0)
    failed["settings"].update(tf32=False, decode="gpu")
    failed["device_check"] = dict(checked["device_check"], mean_abs_diff_mm=2.5, max_abs_diff_mm=40.0, passed=False)
    failed["crop_check"] = {"opencv": None, "images": 0, "decode_identical": None, "crop_identical": None,
                            "max_abs_diff": None, "skipped": "OpenCV (cv2) is not importable"}
    failed["decode_check"] = {"decoder": "nvjpeg", "images_compared": 8, "max_abs_diff_pixels": 3,
                              "max_abs_diff_crop": 2, "identical": False}
    _put(root, "failed", failed)
    _put(root, "old", make_result(model_id="posenet", base=54.0))  # written before the checks existed
    out = cons.consolidate(root, tmp_path / "report")
    board = out.leaderboard.set_index("result")
    assert board.loc["checked", "verified"] == "fp32 · TF32 off · device ✓ · crop ✓ · decode cpu"
    assert board.loc["failed", "verified"] == "fp32 · TF32 off · device ✗ (2.5 mm > 0.078 mm) · crop – · decode nvjpeg ✗ (max 2)"
    assert board.loc["old", "verified"].startswith("fp32 · TF32 ? · device ? · crop ?")
    text = out.files["report"].read_text()
    assert "**⚠ Failed checks:** `failed`: device check FAILED" in text and "nvjpeg" in text
    assert "## How each row was verified" in text and "**device**" in text and "**crop**" in text
    assert "device ✗ (2.5 mm > 0.078 mm)" in text  # the leaderboard table in the report carries the column


def _put_with_samples(root, name, result, errors) -> None:
    """A result with its per-sample errors file (the recordings of 12 samples: 3 actions x 2 subactions x 2)."""
    import numpy as np

    _put(root, name, {**result, "per_sample_errors": {"file": "per_sample_errors.npz", "metrics": ["mpjpe"]}})
    n = len(errors)
    np.savez(root / name / "per_sample_errors.npz", image_id=np.arange(n, dtype=np.int64), subject=np.full(n, 9),
             action_index=np.arange(n) % 3, subaction=np.arange(n) // 3 % 2 + 1, camera=np.ones(n, int),
             metrics=np.array(["mpjpe"]), error_mpjpe=np.asarray(errors, float))


def test_boxes_and_roots_each_split_groups_and_pairwise_comparisons(tmp_path):
    root = tmp_path / "res"
    run_roots = {"roots": {"source": "rootnet_run", "result_id": "0123456789abcdef", "checkpoint_sha256": "cd" * 32,
                           "weights": "released"}}
    settings = {  # name: (model, boxes, roots, sources)
        "cnp_gt": ("convnextpose_M", "ground_truth", "ground_truth", None),
        "posenet_gt": ("posenet", "ground_truth", "ground_truth", None),
        "posenet_gt_boxes_rootnet": ("posenet", "ground_truth", "rootnet_run", run_roots),
        "posenet_released": ("posenet", "detector", "rootnet_released", None),
        "cnp_released": ("convnextpose_M", "detector", "rootnet_released", None),
        "posenet_detector_rootnet": ("posenet", "detector", "rootnet_run", run_roots),
    }
    for i, (name, (model, boxes, roots, sources)) in enumerate(settings.items()):
        _put_with_samples(root, name, make_result(model_id=model, base=50.0 + i, boxes=boxes, roots=roots,
                                                  sources=sources), [50.0 + i + k % 4 for k in range(12)])
    legacy = make_result(model_id="posenet", base=54.0, boxes="detected", roots="detected")
    _put(root, "posenet_legacy", legacy)
    out = cons.consolidate(root)
    board = out.leaderboard.set_index("result")
    assert board.loc["posenet_gt_boxes_rootnet", "group"] == (
        "Protocol 2 MPJPE, ground-truth boxes, RootNet roots (this run)")
    assert board.loc["posenet_detector_rootnet", "group"] == "Protocol 2 MPJPE, detector boxes, RootNet roots (this run)"
    assert board.loc["posenet_released", "group"] == "Protocol 2 MPJPE, detector boxes, released RootNet roots"
    assert len(out.groups) == 5  # GT/GT, GT/RootNet run, detector/released, detector/RootNet run, legacy
    # a published number only like for like
    assert board.loc["posenet_gt", "paper (mm)"] == 53.3
    assert board.loc["posenet_released", "paper (mm)"] == 54.4
    assert board.loc["posenet_detector_rootnet", "paper (mm)"] == 54.4  # our RootNet run, released weights
    assert pd.isna(board.loc["posenet_gt_boxes_rootnet", "paper (mm)"])
    assert board.loc["posenet_gt_boxes_rootnet", "grade"] == (
        "n/a: no published number for ground-truth boxes with RootNet roots")
    assert pd.isna(board.loc["posenet_legacy", "paper (mm)"])
    assert "RootNet result 0123456789abcdef" in board.loc["posenet_gt_boxes_rootnet", "box/root origin"]
    assert any("`posenet_legacy` was written before box and root sources" in p for p in out.problems)
    # paired comparisons only inside a group: the two GT/GT runs, the two released-file runs
    assert sorted(out.pairwise["group"]) == ["Protocol 2 MPJPE, detector boxes, released RootNet roots",
                                             "Protocol 2 MPJPE, ground-truth boxes, ground-truth roots"]
    assert all({a.split(" ")[0], b.split(" ")[0]} == {"ConvNeXtPose", "PoseNet"}
               for a, b in zip(out.pairwise["model_a"], out.pairwise["model_b"]))
    text = out.files["report"].read_text()
    assert "**Boxes and roots:** ground-truth boxes, RootNet roots (this run) (`bbox_source` ground_truth, " \
           "`root_source` rootnet_run); roots of RootNet result 0123456789abcdef" in text
    assert "### Protocol 2 MPJPE, detector boxes, RootNet roots (this run)" in text
