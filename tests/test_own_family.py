""""Benchmark your own model": the README's example family, run exactly as the README says, on the demo."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import runner
from helpers.models import registry

REPO = Path(__file__).resolve().parents[1]


def _readme_example() -> tuple[str, list[str]]:
    """(the family file, the shell commands) of the README section "Benchmark your own model"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Benchmark your own model", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(code) == 1 and len(commands) == 1, "the section holds one family file and one command block"
    return code[0], [line for line in commands[0].splitlines() if line.strip()]


@pytest.fixture(scope="module")
def family_file(tmp_path_factory) -> Path:
    code, _ = _readme_example()
    path = tmp_path_factory.mktemp("own-family") / "my_family.py"
    path.write_text(code, encoding="utf-8")
    return path


def test_the_readme_example_runs_end_to_end_on_the_demo(family_file):
    if (REPO / "data").is_dir():
        pytest.skip("<repo>/data holds real data: the README command would run on it, not on the demo")
    _, commands = _readme_example()
    work = family_file.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "python"
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=work, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = work / "outputs" / "my_family"
    result = json.loads((out / "tinypose_s" / "result.json").read_text())
    assert result["kind"] == "pose" and result["weights"]["kind"] == "random_demo"
    assert result["model"]["family"] == "tinypose" and result["model"]["family_display_name"] == "TinyPose"
    assert result["checkpoint"]["remaps"]  # the demo checkpoint's `module.` prefix was stripped: a strict load
    assert result["settings"]["flip_test"] is True
    assert (out / "tinypose_s" / "per_sample_errors.npz").is_file()
    assert (out / "runs" / "notebooks" / "tinypose.ipynb").is_file()
    report = (out / "report" / "REPORT.md").read_text()
    assert "TinyPose S" in report and "random" in report.lower()
    # the README's citation= reaches the tables and references.bib; the card points at the family's notebook
    assert "@misc{doe2025tinypose," in (out / "report" / "references.bib").read_text()
    table = out / "report" / "tables" / "protocol2_mpjpe_ground_truth_boxes_ground_truth_roots.tex"
    assert "\\cite{doe2025tinypose}" in table.read_text()
    card = (out / "tinypose_s" / "REPRODUCE.md").read_text()
    assert f"papermill {out.resolve() / 'runs' / 'notebooks' / 'tinypose.ipynb'} " in card


def test_a_family_file_registers_once_and_names_its_models(family_file):
    family = registry.load_family_file(family_file)
    assert registry.load_family_file(family_file) is family  # loading the same file again is a no-op
    assert family.name == "tinypose" and registry.resolve_model_id("tinypose") == "tinypose_s"
    assert registry.display_name(registry.get_spec("tinypose_s")) == "TinyPose S"
    params = runner.RunParams(model="tinypose", model_file=str(family_file))
    assert params.model_id == "tinypose_s"
    model = registry.build_model("tinypose_s")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_bad_family_files_are_refused_with_the_reason(tmp_path):
    with pytest.raises(runner.ConfigError, match="does not exist"):
        runner.RunParams(model="x", model_file=str(tmp_path / "missing.py"))
    empty = tmp_path / "no_family.py"
    empty.write_text("X = 1\n")
    with pytest.raises(registry.UnknownModelError, match="defines no FAMILY"):
        registry.load_family_file(empty)
    clash = tmp_path / "clash_family.py"
    clash.write_text("from helpers.models import get_family\nFAMILY = get_family('posenet')\n")
    with pytest.raises(ValueError, match="already registered"):
        registry.load_family_file(clash)
    with pytest.raises(runner.ConfigError, match="MODEL_FILE"):
        runner.RunParams(model="nosuchfamily")


def test_your_own_checkpoint_runs_on_the_generated_data_with_batch(family_file, tmp_path, monkeypatch, capsys):
    """`batch --model-file F --checkpoint C` with no Human3.6M attached: C (saved by the official training call)
    runs on the generated data; the result records the given weights with their sha256 and the generated data,
    and the report says both."""
    import hashlib

    import torch
    from torch import nn

    from helpers import batch, environment

    monkeypatch.setattr(environment, "default_input_roots", lambda *a, **k: [])
    for key in ("H36M_BATCH", "PYTHONPATH", "MPLBACKEND"):  # batch.main sets them for its kernels
        monkeypatch.setenv(key, os.environ.get(key, ""))
    registry.load_family_file(family_file)
    model = nn.DataParallel(registry.build_model("tinypose_s"))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 3, 256, 256)).sum().backward()
    optimizer.step()
    checkpoint = tmp_path / "snapshot_5.pth.tar"
    torch.save({"epoch": 5, "network": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)

    out = tmp_path / "out"
    cache = tmp_path.parent / "demo-cache"  # shared with the other demo tests of this session
    plan = tmp_path / "plan.yaml"  # only for its defaults: --only keeps the family's run
    plan.write_text(f"defaults: {{CACHE_DIR: '{cache}', BATCH_SIZE: 4}}\ndemo_defaults: {{IMAGE_LIMIT: 4}}\n"
                    "runs:\n  - {notebook: posenet.ipynb, parameters: {MODEL: posenet}}\n")
    argv = ["--plan", str(plan), "--model-file", str(family_file), "--checkpoint", str(checkpoint),
            "--only", "tinypose_s", "--out", str(out)]
    assert batch.main(argv) == 0, capsys.readouterr()
    assert "use the generated demo data (the checkpoint" in capsys.readouterr().out
    result = json.loads((out / "tinypose_s" / "result.json").read_text())
    assert result["data"]["kind"] == "generated"
    assert result["weights"]["kind"] == "given"
    assert result["weights"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert result["checkpoint"]["epoch"] == 5
    report = (out / "report" / "REPORT.md").read_text()
    assert "GENERATED DATA" in report and "RANDOM DEMO" not in report
    assert f"given ({result['weights']['sha256'][:12]})" in report


def test_a_misdeclared_heatmap_size_stops_before_any_result(family_file, tmp_path, monkeypatch):
    """TinyPose's heatmaps are 64x64; a family file that declares 16x16 is refused by `prepare`, naming both."""
    from helpers import environment

    monkeypatch.setattr(environment, "default_input_roots", lambda *a, **k: [])
    wrong = tmp_path / "tinypose_wrong.py"
    wrong.write_text(family_file.read_text().replace('name="tinypose"', 'name="tinypose_wrong"')
                     .replace('family="tinypose"', 'family="tinypose_wrong"')
                     .replace('model_id="tinypose_s"', 'model_id="tinypose_wrong_s"')
                     .replace('file="tinypose.ipynb"', 'file="tinypose_wrong.ipynb"')
                     .replace("output_shape=(64, 64)", "output_shape=(16, 16)"))
    params = runner.RunParams(model="tinypose_wrong", model_file=str(wrong), output_dir=str(tmp_path / "out"),
                              cache_dir=str(tmp_path.parent / "demo-cache"), image_limit=2)
    with pytest.raises(runner.ConfigError, match=r"output_shape \[64, 64\] \(declared \[16, 16\]\)"):
        runner.prepare(params)
    assert not (tmp_path / "out").exists()
