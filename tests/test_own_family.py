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
    assert registry.get_spec("tinypose_s").display_name == "TinyPose S"
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
