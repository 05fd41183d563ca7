"""helpers.publish: staging rules, metadata validation, owner resolution and the printed upload command."""
from __future__ import annotations

import base64
import json
import shlex

import nbformat
import pytest

from helpers import publish
from test_report import make_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_kaggle_identity(monkeypatch, tmp_path):
    """No real user name or credentials leak into a test: a bare HOME and no Kaggle variables."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _executed_notebook(path) -> None:
    cell = nbformat.v4.new_code_cell("plot()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "image/png": base64.b64encode(PNG_MAGIC + b"frame").decode(), "text/plain": "<Figure>"}),
        nbformat.v4.new_output("stream", text="MPJPE 51.2\n")]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(path))


@pytest.fixture()
def outputs(tmp_path):
    root = tmp_path / "outputs"
    model = root / "convnextpose_S"
    model.mkdir(parents=True)
    (model / "result.json").write_text(json.dumps(make_result()))
    (model / "predictions.npz").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    (model / "per_action.csv").write_text("action,MPJPE\nWalking,40\n")
    (model / "per_action.png").write_bytes(PNG_MAGIC + b"plot")
    (model / "qualitative_samples.png").write_bytes(PNG_MAGIC + b"crops of dataset frames")
    (model / "s_09_act_02_subact_01_ca_01_000001.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 10)
    (model / "ConvNeXtPose_S.tar").write_bytes(b"PK\x03\x04")
    (model / "big.npz").write_bytes(b"\0" * (2 * 2**20))
    (model / ".result.json.abc.part").write_text("half written")
    demo = root / "posenet"
    demo.mkdir()
    (demo / "result.json").write_text(json.dumps(make_result(model_id="posenet", weights_kind="random_demo")))
    (root / "report").mkdir()
    (root / "report" / "REPORT.md").write_text("# report\n")
    (root / "report" / "headline_bars.png").write_bytes(PNG_MAGIC + b"bars")
    (root / "report" / "references.bib").write_text("% references\n")
    (root / "report" / "tables").mkdir()
    (root / "report" / "tables" / "tables.tex").write_text("\\documentclass{article}\n")
    _executed_notebook(root / "runs" / "convnextpose.ipynb")
    return root


def test_stage_includes_results_and_excludes_images_and_big_files(outputs, tmp_path):
    staged = publish.stage(outputs, tmp_path / "stage", owner="alice", max_file_mb=1)
    stage_dir = tmp_path / "stage"
    assert set(staged.included) == {
        "results/convnextpose_S/result.json", "results/convnextpose_S/predictions.npz",
        "results/convnextpose_S/per_action.csv", "results/convnextpose_S/per_action.png",
        "results/posenet/result.json", "results/report/REPORT.md", "results/report/headline_bars.png",
        "results/runs/convnextpose.ipynb", "results/report/references.bib", "results/report/tables/tables.tex",
    }
    for relative in staged.included:
        assert (stage_dir / relative).is_file()
    skipped = {p.split("/")[-1]: reason for p, reason in staged.skipped}
    assert set(skipped) == {"qualitative_samples.png", "s_09_act_02_subact_01_ca_01_000001.jpg",
                            "ConvNeXtPose_S.tar", "big.npz"}
    assert "never published" in skipped["s_09_act_02_subact_01_ca_01_000001.jpg"]
    assert "not a report plot" in skipped["qualitative_samples.png"]
    assert "cap" in skipped["big.npz"]
    assert not list(stage_dir.rglob("*.jpg")) and not list(stage_dir.rglob(".*"))
    # notebook image outputs are removed, text outputs kept
    notebook = nbformat.read(str(stage_dir / "results/runs/convnextpose.ipynb"), as_version=4)
    nbformat.validate(notebook)
    outputs_ = notebook.cells[0].outputs
    assert not any(k.startswith("image/") for o in outputs_ for k in o.get("data", {}))
    assert outputs_[0]["data"]["text/plain"] == "<Figure>"
    assert outputs_[1]["text"] == "MPJPE 51.2\n"
    assert staged.stripped_images == 1
    manifest = json.loads((stage_dir / publish.MANIFEST_FILE).read_text())
    assert len(manifest["skipped"]) == 4 and manifest["notebook_image_outputs_removed"] == 1
    meta = json.loads((stage_dir / publish.METADATA_FILE).read_text())
    assert meta["id"] == "alice/h36m-3d-pose-benchmark-results"
    assert meta["licenses"] == [{"name": "CC-BY-SA-4.0"}]
    assert "RANDOM DEMO WEIGHTS" in meta["description"]  # posenet result is a demo
    publish.validate_metadata(meta)


def test_restage_replaces_only_own_folders(outputs, tmp_path):
    stage_dir = tmp_path / "stage"
    publish.stage(outputs, stage_dir, owner="alice")
    (stage_dir / "stale.txt").write_text("from an earlier run")
    publish.stage(outputs, stage_dir, owner="alice", slug="my-results", title="My pose results")
    assert not (stage_dir / "stale.txt").exists()
    assert json.loads((stage_dir / publish.METADATA_FILE).read_text())["id"] == "alice/my-results"
    foreign = tmp_path / "not_a_stage"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(publish.PublishError, match="not empty"):
        publish.stage(outputs, foreign, owner="alice")
    assert (foreign / "precious.txt").read_text() == "keep me"
    with pytest.raises(publish.PublishError, match="must not contain"):
        publish.stage(outputs, outputs / "stage", owner="alice")


def test_invalid_metadata_leaves_no_stage(outputs, tmp_path):
    with pytest.raises(publish.PublishError, match="owner"):
        publish.stage(outputs, tmp_path / "stage")  # no owner anywhere
    with pytest.raises(publish.PublishError, match="license name 'MIT-ish'"):
        publish.stage(outputs, tmp_path / "stage", owner="alice", license_name="MIT-ish")
    assert not (tmp_path / "stage").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".stage")] == []


GOOD = {"title": "Human3.6M results", "id": "alice/h36m-results", "licenses": [{"name": "CC0-1.0"}]}


@pytest.mark.parametrize("change, message", [
    ({"licenses": []}, "exactly one"),
    ({"licenses": None}, "exactly one"),
    ({"licenses": [{"name": "CC0-1.0"}, {"name": "CC-BY-4.0"}]}, "exactly one"),
    ({"licenses": [{"title": "CC0"}]}, "license name None"),
    ({"id": "h36m-results"}, "owner/slug"),
    ({"id": "alice/bob/h36m-results"}, "owner/slug"),
    ({"id": "alice/H36M_Results"}, "slug"),
    ({"id": "alice/abc"}, "6 to 50"),
    ({"id": "YOUR_KAGGLE_USERNAME/h36m-results"}, "--owner"),
    ({"title": "H36M"}, "title"),
    ({"title": "x" * 51}, "title"),
    ({"subtitle": "too short"}, "subtitle"),
])
def test_validate_metadata_rejects(change, message):
    publish.validate_metadata(GOOD)
    with pytest.raises(publish.PublishError, match=message):
        publish.validate_metadata({**GOOD, **change})


def test_templates_are_valid_once_an_owner_is_set():
    for folder in ("results", "checkpoint-mirror"):
        path = publish.REPO_ROOT / "kaggle_datasets" / folder / "dataset-metadata.template.json"
        meta = json.loads(path.read_text())
        with pytest.raises(publish.PublishError, match="owner"):
            publish.validate_metadata(meta)
        meta["id"] = meta["id"].replace(publish.TEMPLATE_OWNER, "alice")
        publish.validate_metadata(meta)


def test_resolve_owner_order(monkeypatch, tmp_path):
    assert publish.resolve_owner() is None
    config = tmp_path / "home" / ".kaggle" / "kaggle.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"username": "from_file", "key": "k"}))
    assert publish.resolve_owner() == "from_file"
    monkeypatch.setenv("KAGGLE_USERNAME", "from_env")
    assert publish.resolve_owner() == "from_env"
    assert publish.resolve_owner("explicit") == "explicit"


def test_kaggle_command():
    assert publish.kaggle_command("/s", "create") == ["kaggle", "datasets", "create", "-p", "/s", "--dir-mode", "zip"]
    assert publish.kaggle_command("/s", "version", "new run") == [
        "kaggle", "datasets", "version", "-p", "/s", "-m", "new run", "--dir-mode", "zip"]
    with pytest.raises(publish.PublishError, match="--message"):
        publish.kaggle_command("/s", "version")


def test_main_dry_run_prints_command(outputs, tmp_path, capsys):
    stage_dir = tmp_path / "stage dir"
    code = publish.main(["--results", str(outputs), "--stage", str(stage_dir), "--owner", "alice", "--dry-run",
                         "--version", "--message", "second run"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "dry run, nothing uploaded" in printed
    expected = shlex.join(["kaggle", "datasets", "version", "-p", str(stage_dir.resolve()), "-m", "second run",
                           "--dir-mode", "zip"])
    assert expected in printed
    assert "skipped" in printed and "qualitative_samples.png" in printed
    assert (stage_dir / publish.METADATA_FILE).is_file()


def test_main_without_cli_prints_command(outputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(publish.shutil, "which", lambda name: None)
    code = publish.main(["--results", str(outputs), "--stage", str(tmp_path / "stage"), "--owner", "alice"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "not uploaded: the kaggle CLI" in printed and "kaggle datasets create -p" in printed


def test_main_reports_errors(tmp_path, capsys):
    assert publish.main(["--results", str(tmp_path / "missing"), "--stage", str(tmp_path / "s"),
                         "--owner", "alice", "--dry-run"]) == 2
    assert "does not exist" in capsys.readouterr().err
