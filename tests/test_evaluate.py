"""Evaluation parity with the upstream 3DMPPE evaluation (golden fixture), the rescore CLI,
result.json validation and bad-input handling."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import evaluate as ev
from helpers import h36m, report
from helpers.result_schema import validate_result

REPO = Path(__file__).resolve().parents[1]
PRED_FILES = ("predictions_64.npz", "predictions_32.npz")
SETTINGS = ("gt_info_true", "gt_info_false")
POSE_METRICS = ("mpjpe", "pa_mpjpe_rigid", "pa_mpjpe_similarity", "pa_mpjpe_rigid_fit18")


@pytest.fixture(scope="module")
def expected(golden_eval_dir):
    return json.loads((golden_eval_dir / "expected.json").read_text())


@pytest.fixture(scope="module")
def per_sample(golden_eval_dir):
    return dict(np.load(golden_eval_dir / "expected_per_sample.npz"))


@pytest.fixture(scope="module")
def test_sets(golden_eval_dir):
    ann = golden_eval_dir / "annotations"
    return {"gt_info_true": h36m.load_test_set(ann),
            "gt_info_false": h36m.load_test_set(ann, bbox_root=golden_eval_dir / "bbox_root_human36m_output.json")}


def _assert_matches_expected(result, block, tol):
    m = result["metrics"]
    assert result["num_samples"] == block["num_samples"] == result["num_expected"]
    assert result["partial"] is False
    for name in POSE_METRICS:
        for agg in ("total", "action_mean"):
            assert m[name][agg] == pytest.approx(block[name][agg], abs=tol), (name, agg)
        assert list(m[name]["per_action"]) == list(block[name]["per_action"])
        for action, value in block[name]["per_action"].items():
            assert m[name]["per_action"][action] == pytest.approx(value, abs=tol), (name, action)
    assert list(m["mpjpe"]["per_joint"]) == list(block["per_joint_mpjpe"])
    for joint, value in block["per_joint_mpjpe"].items():
        assert m["mpjpe"]["per_joint"][joint] == pytest.approx(value, abs=tol), joint
    assert result["official_summary"] == block["official_summary"]
    assert result["headline"] == {"metric": "mpjpe", "value": m["mpjpe"]["total"]}


@pytest.mark.parametrize("pred_file", PRED_FILES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_golden_parity_api(golden_eval_dir, expected, per_sample, test_sets, pred_file, setting):
    tol = expected["recommended_abs_tolerance_mm"]
    block = expected["results"][pred_file][setting]
    result, detail = ev.evaluate(test_sets[setting], golden_eval_dir / pred_file, return_per_sample=True)
    validate_result(result)
    _assert_matches_expected(result, block, tol["aggregates"])
    assert result["conventions"]["bbox_source"] == ("ground_truth" if setting == "gt_info_true" else "unknown")
    assert result["predictions"]["output_shape"] == expected["results"][pred_file]["output_shape"]

    key = f"{pred_file[:-4]}__{setting}"
    np.testing.assert_array_equal(detail.image_id, per_sample["image_id"])
    atol = tol["per_sample_per_joint"]
    np.testing.assert_allclose(detail.pred_rel, per_sample[f"{key}__pred_rel17"], atol=atol)
    np.testing.assert_allclose(detail.errors["mpjpe"], per_sample[f"{key}__mpjpe_joint"], atol=atol)
    np.testing.assert_allclose(detail.errors["pa_mpjpe_rigid"], per_sample[f"{key}__pa_rigid_joint"], atol=atol)
    np.testing.assert_allclose(detail.errors["pa_mpjpe_similarity"], per_sample[f"{key}__pa_similarity_joint"],
                               atol=atol)
    # the protocol-1 print of upstream, on the same numbers
    assert ev.official_summary(result["metrics"]["pa_mpjpe_rigid_fit18"], "pa_mpjpe_rigid_fit18") == \
        block["official_summary_pa_fit18"]
    frame = detail.frame()
    assert len(frame) == 1065
    assert frame["mpjpe"].mean() == pytest.approx(block["mpjpe"]["total"], abs=tol["aggregates"])


@pytest.mark.parametrize("pred_file", PRED_FILES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_golden_parity_cli(tmp_path, golden_eval_dir, expected, pred_file, setting):
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "helpers", "rescore", "--annotations", str(golden_eval_dir),
           "--predictions", str(golden_eval_dir / pred_file), "--protocol", "2", "--out", str(out)]
    if setting == "gt_info_false":
        cmd += ["--bbox-root", str(golden_eval_dir / "bbox_root_human36m_output.json")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Directions" in proc.stdout and "PA-MPJPE rigid" in proc.stdout
    result = json.loads(out.read_text())
    validate_result(result)
    _assert_matches_expected(result, expected["results"][pred_file][setting],
                             expected["recommended_abs_tolerance_mm"]["aggregates"])


def test_protocol_1_headline_is_rigid_fit18(golden_eval_dir, expected, test_sets):
    """On S11 only, the P1 headline and print use the 18-joint rigid fit (upstream protocol-1 path)."""
    p1 = h36m.load_test_set(golden_eval_dir / "annotations", protocol=1)
    pred = ev.load_predictions(golden_eval_dir / "predictions_64.npz")
    keep = np.isin(pred["image_id"], p1.image_id)
    result, detail = ev.evaluate(p1, {**pred, "image_id": pred["image_id"][keep], "coords": pred["coords"][keep]},
                                 return_per_sample=True)
    assert result["headline"]["metric"] == "pa_mpjpe_rigid_fit18"
    assert result["official_summary"].startswith("Protocol 1 error (PA MPJPE) >> tot: ")
    # independent: the P2 evaluation's per-sample fit18 errors restricted to S11
    _, full = ev.evaluate(test_sets["gt_info_true"], pred, return_per_sample=True)
    s11 = full.subject == 11
    assert result["headline"]["value"] == pytest.approx(full.errors["pa_mpjpe_rigid_fit18"][s11].mean(), abs=1e-9)
    assert list(result["metrics"]["mpjpe"]["per_subject"]) == ["S11"]


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def golden_pred(golden_eval_dir):
    with np.load(golden_eval_dir / "predictions_64.npz") as z:
        return {k: z[k] for k in z.files}


def _run_cli(args, capsys):
    code = ev.main(args)
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("change, message", [
    (lambda p: {**p, "coords": p["coords"][:, :17]}, r"coords has 17 joints; expected 18 \(joint 17 = Thorax\)"),
    (lambda p: {**p, "coords": p["coords"][:, :, :2]}, r"coords has shape \(1065, 18, 2\)"),
    (lambda p: {**p, "coords": np.where(np.arange(1065)[:, None, None] == 7, np.nan, p["coords"])},
     "NaN or infinite values in 1 rows"),
    (lambda p: {**p, "image_id": p["image_id"].astype(np.float64)}, "image_id has dtype float64"),
    (lambda p: {k: v for k, v in p.items() if k != "depth_dim"}, "lacks depth_dim"),
    (lambda p: {**p, "image_id": np.where(np.arange(1065) == 3, 42, p["image_id"])},
     r"1 image ids are not protocol-2 test samples .*first \[42\]"),
    (lambda p: {**p, "image_id": p["image_id"][:-3], "coords": p["coords"][:-3]},
     r"cover 1062 of 1065 test samples: 3 are missing .*--allow-partial"),
])
def test_bad_predictions_cli(tmp_path, capsys, golden_eval_dir, golden_pred, change, message):
    pred_path = _npz(tmp_path / "pred.npz", **change(golden_pred))
    out = tmp_path / "out" / "result.json"
    code, err = _run_cli(["--annotations", str(golden_eval_dir), "--predictions", str(pred_path),
                          "--out", str(out)], capsys)
    assert code != 0
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert not out.exists()


def test_allow_partial_counts_missing(tmp_path, capsys, golden_eval_dir, golden_pred, per_sample, test_sets):
    drop = golden_pred["image_id"][[0, 10, 20, 30, 40]]
    keep = ~np.isin(golden_pred["image_id"], drop)
    pred_path = _npz(tmp_path / "pred.npz", **{**golden_pred, "image_id": golden_pred["image_id"][keep],
                                               "coords": golden_pred["coords"][keep]})
    out = tmp_path / "result.json"
    code, err = _run_cli(["--annotations", str(golden_eval_dir), "--predictions", str(pred_path),
                          "--allow-partial", "--out", str(out)], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    validate_result(result)
    assert result["partial"] is True and result["num_samples"] == 1060 and result["num_expected"] == 1065
    assert result["missing"]["count"] == 5
    assert sorted(result["missing"]["first_image_ids"]) == sorted(drop.tolist())
    # independent: mean of the fixture's per-sample errors over the covered samples
    covered = ~np.isin(per_sample["image_id"], drop)
    assert result["metrics"]["mpjpe"]["total"] == pytest.approx(
        per_sample["predictions_64__gt_info_true__mpjpe_joint"][covered].mean(), abs=1e-3)


@pytest.mark.parametrize("breakage, message", [
    ("no_folder", "no Human36M_subject"),
    ("one_subject", "missing 3 file"),
    ("not_json", "is not valid JSON"),
    ("bbox_root_short", "lacks 1 of 1065"),
])
def test_bad_annotations_cli(tmp_path, capsys, golden_eval_dir, breakage, message):
    ann = tmp_path / "data" / "annotations"
    ann.parent.mkdir()
    args = ["--predictions", str(golden_eval_dir / "predictions_64.npz")]
    if breakage != "no_folder":
        shutil.copytree(golden_eval_dir / "annotations", ann)
    if breakage == "one_subject":
        for f in ann.glob("Human36M_subject9_*"):
            f.unlink()
    if breakage == "not_json":
        (ann / "Human36M_subject11_data.json").write_bytes(b"\x00\x01 truncated")
    if breakage == "bbox_root_short":
        entries = json.loads((golden_eval_dir / "bbox_root_human36m_output.json").read_text())
        (tmp_path / "br.json").write_text(json.dumps(entries[1:]))
        args += ["--bbox-root", str(tmp_path / "br.json")]
    out = tmp_path / "result.json"
    code, err = _run_cli(args + ["--annotations", str(tmp_path / "data"), "--out", str(out)], capsys)
    assert code != 0 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_cli_error_in_subprocess_has_no_traceback(tmp_path, golden_eval_dir):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "helpers", "rescore", "--annotations", str(tmp_path),
                           "--predictions", str(golden_eval_dir / "predictions_64.npz"), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "rescore failed: no Human36M_subject" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_load_predictions_rejects_non_npz(tmp_path):
    path = tmp_path / "pred.npz"
    path.write_text("<html>not an npz</html>")
    with pytest.raises(ev.PredictionError, match="not a readable .npz"):
        ev.load_predictions(path)
    with pytest.raises(ev.PredictionError, match="does not exist"):
        ev.load_predictions(tmp_path / "absent.npz")


def test_skipped_images_are_excused_and_recorded(golden_pred, test_sets, per_sample):
    ts = test_sets["gt_info_true"]
    skipped = np.array([4, 500, 900])
    kept = np.setdiff1d(np.arange(len(ts)), skipped)
    check = h36m.ImageCheck(paths=[Path(n) for n in ts.file_name], kept_indices=kept,
                            missing_paths=[Path(ts.file_name[i]) for i in skipped], image_roots=[Path(".")])
    keep = np.isin(golden_pred["image_id"], ts.image_id[kept])
    pred = {**golden_pred, "image_id": golden_pred["image_id"][keep], "coords": golden_pred["coords"][keep]}
    with pytest.raises(ev.PredictionError, match="3 are missing"):
        ev.evaluate(ts, pred)
    result = ev.evaluate(ts, pred, image_check=check, flip_test=True)
    assert result["partial"] is False and result["skipped_images"]["count"] == 3
    assert result["num_samples"] == 1062 and result["conventions"]["flip_test"] is True
    assert result["metrics"]["mpjpe"]["total"] == pytest.approx(
        per_sample["predictions_64__gt_info_true__mpjpe_joint"][kept].mean(), abs=1e-3)


def test_evaluate_roots_against_fixture_roots(test_sets, per_sample):
    ts = test_sets["gt_info_false"]
    result = ev.evaluate_roots(ts, ts.image_id[::-1], ts.root_cam[::-1])
    validate_result(result)
    diff = per_sample["gt_info_false__root_cam"] - per_sample["gt_info_true__root_cam"]
    assert result["metrics"]["mrpe"]["total"] == pytest.approx(np.linalg.norm(diff, axis=1).mean(), abs=1e-2)
    assert result["metrics"]["mrpe"]["z"] == pytest.approx(np.abs(diff[:, 2]).mean(), abs=1e-2)
    directions = per_sample["action_index"] == 0
    assert result["metrics"]["mrpe"]["per_action"]["Directions"] == pytest.approx(
        np.linalg.norm(diff[directions], axis=1).mean(), abs=1e-2)
    assert result["headline"]["metric"] == "mrpe" and set(result["metrics"]["mrpe"]["per_subject"]) == {"S9", "S11"}
    assert "MRPE" in report.format_table(result)
    with pytest.raises(ev.PredictionError, match="root_cam has shape"):
        ev.evaluate_roots(ts, ts.image_id, ts.root_cam[:, :2])


def test_extra_blocks_and_table(golden_pred, test_sets):
    extra = {"weights": {"kind": "random_demo", "note": "random init"}, "model": {"model_id": "posenet_r50"},
             "timing": {"inference_s": 1.5, "images": 1065, "images_per_s": 710.0}}
    result = ev.evaluate(test_sets["gt_info_true"], golden_pred, extra=extra)
    assert result["weights"]["kind"] == "random_demo"
    table = report.format_table(result)
    assert "RANDOM DEMO WEIGHTS" in table and "action mean" in table and "S11" in table
    with pytest.raises(ValueError, match="must not replace computed result keys"):
        ev.evaluate(test_sets["gt_info_true"], golden_pred, extra={"metrics": {}})


def test_validate_result_lists_every_violation(golden_pred, test_sets):
    good = ev.evaluate(test_sets["gt_info_true"], golden_pred)
    validate_result(good)
    bad = copy.deepcopy(good)
    del bad["headline"]
    bad["metrics"]["mpjpe"]["total"] = "51.2"
    del bad["metrics"]["pa_mpjpe_similarity"]["per_joint"]["Head"]
    bad["metrics"]["pa_mpjpe_rigid"]["per_action"]["Dancing"] = 1.0
    bad["partial"] = True
    bad["weights"] = {"kind": "mine"}
    bad["metrics"]["mpjpe"]["action_mean"] = float("nan")
    with pytest.raises(ValueError) as err:
        validate_result(bad)
    msg = str(err.value)
    for needle in ("'headline' is a required property", "at metrics.mpjpe.total", "'Head' is a required property",
                   "'Dancing'", "'missing' is a required property", "at weights.kind",
                   "metrics.mpjpe.action_mean: nan is not a finite number"):
        assert needle in msg, needle
    root_like = copy.deepcopy(good)
    root_like["kind"] = "root"
    with pytest.raises(ValueError, match="'mrpe' is a required property"):
        validate_result(root_like)
