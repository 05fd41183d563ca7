"""Snapshot sweeps: CHECKPOINT naming a folder or glob of snapshots evaluates each one, sharing the crop cache;
the report lists the epochs with intervals, plots them and warns about selection bias."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from helpers import comparisons, demo_checkpoints, environment, runner
from helpers.consolidate import consolidate
from helpers.sweep import Sweep, snapshot_files

EPOCHS = (5, 10, 15)


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> Path:
    """Three random-weight ConvNeXtPose XS snapshots (different seeds) named like a training run's."""
    folder = tmp_path_factory.mktemp("snapshots")
    for epoch in EPOCHS:
        written = demo_checkpoints.write_demo_checkpoints(folder / f"seed{epoch}", ["convnextpose_XS"], seed=epoch)
        shutil.copy(written["convnextpose_XS"], folder / f"snapshot_{epoch}.pth.tar")
        shutil.rmtree(folder / f"seed{epoch}")
    (folder / "notes.txt").write_text("not a checkpoint")
    return folder


def test_a_folder_or_glob_names_snapshots_in_epoch_order(snapshots):
    names = [p.name for p in snapshot_files(str(snapshots))]
    assert names == ["snapshot_5.pth.tar", "snapshot_10.pth.tar", "snapshot_15.pth.tar"]
    assert [p.name for p in snapshot_files(str(snapshots / "snapshot_1*.pth.tar"))] == names[1:]
    assert snapshot_files(str(snapshots / "snapshot_5.pth.tar")) is None  # one file: an ordinary run
    assert snapshot_files(None) is None and snapshot_files("drive:abc") is None
    assert snapshot_files(str(snapshots / "nothing_*.pth")) == []


@pytest.fixture(scope="module")
def sweep_outputs(tmp_path_factory, snapshots):
    cache = tmp_path_factory.getbasetemp() / "demo-cache"  # shared with the runner tests
    data = runner.ensure_demo_data(cache)
    out = tmp_path_factory.mktemp("sweep-out")
    patch = pytest.MonkeyPatch()
    patch.setattr(environment, "default_input_roots", lambda *a, **k: [])
    try:
        sweep = runner.prepare(runner.RunParams(model="convnextpose", variant="XS", data_root=str(data),
                                                checkpoint=str(snapshots), image_limit=12, batch_size=4,
                                                output_dir=str(out), cache_dir=str(cache)))
        sweep.infer()
        table = sweep.evaluate()
        sweep.save()
    finally:
        patch.undo()
    return sweep, table, out


def test_each_snapshot_is_evaluated_with_a_shared_crop_cache(sweep_outputs):
    sweep, table, out = sweep_outputs
    assert isinstance(sweep, Sweep) and list(table.index) == list(EPOCHS)
    results = [json.loads((out / "convnextpose_XS" / "snapshots" / f"snapshot_{e}" / "result.json").read_text())
               for e in EPOCHS]
    assert [r["snapshot"]["epoch"] for r in results] == list(EPOCHS)
    assert len({r["checkpoint"]["sha256"] for r in results}) == 3  # three different weight files, each loaded
    assert all(r["weights"]["kind"] == "random_demo" for r in results)
    assert [r["timing"]["images_decoded"] for r in results][1:] == [0, 0]  # crops made once, for all epochs
    assert len({r["crop_cache"]["key"] for r in results}) == 1
    for result, (_, row) in zip(results, table.iterrows()):
        assert row["value (mm)"] == result["headline"]["value"]
        assert [row["ci95_low"], row["ci95_high"]] == result["ci95"]["headline"]
    assert (out / "convnextpose_XS" / "snapshots.csv").is_file() and (out / "convnextpose_XS" / "snapshots.png").is_file()


def test_the_report_lists_the_epochs_marks_the_best_and_warns(sweep_outputs):
    _, table, out = sweep_outputs
    consolidated = consolidate(out)
    frame = pd.read_csv(consolidated.files["snapshots"])
    assert list(frame["epoch"]) == list(EPOCHS)
    assert frame.loc[frame["best"], "epoch"].tolist() == [int(table["value (mm)"].idxmin())]
    assert (frame["ci95_low"] < frame["value"]).all() and (frame["value"] < frame["ci95_high"]).all()
    assert consolidated.files["snapshots_png"].is_file()
    text = Path(consolidated.files["report"]).read_text()
    assert "## Snapshots of one training run" in text and comparisons.SELECTION_BIAS_WARNING in text
    assert "snapshots.png" in text
    models = consolidated.leaderboard["model"].tolist()
    assert all(f"@ epoch {e}" in " ".join(models) for e in EPOCHS)


def test_batch_runs_a_sweep_through_the_notebook(tmp_path, tmp_path_factory, snapshots, monkeypatch):
    """`python -m helpers batch --only convnextpose_XS --checkpoint FOLDER`: the notebook runs the sweep."""
    import os

    from helpers import batch

    cache = tmp_path_factory.getbasetemp() / "demo-cache"  # shared with the runner tests
    data = runner.ensure_demo_data(cache)
    for key in ("H36M_BATCH", "PYTHONPATH", "MPLBACKEND"):
        monkeypatch.setenv(key, os.environ.get(key, ""))
    monkeypatch.setattr(environment, "default_input_roots", lambda *a, **k: [])
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"defaults: {{DATA_ROOT: '{data}', CACHE_DIR: '{cache}', BATCH_SIZE: 4, IMAGE_LIMIT: 6}}\n"
                    "runs:\n  - {id: convnextpose_XS, notebook: convnextpose.ipynb, "
                    "parameters: {MODEL: convnextpose, VARIANT: XS}}\n")
    out = tmp_path / "out"
    assert batch.main(["--plan", str(plan), "--out", str(out), "--checkpoint", str(snapshots / "snapshot_1*")]) == 0
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["runs"][0]["status"] == "ok" and summary["runs"][0]["result_json"].endswith("snapshots.csv")
    assert summary["runs"][0]["parameters"]["CHECKPOINT"] == str(snapshots / "snapshot_1*")
    frame = pd.read_csv(out / "report" / "snapshots.csv")
    assert list(frame["epoch"]) == [10, 15]
