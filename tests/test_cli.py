"""One CLI style: `python -m helpers <command>`; `--help` lists every command and each one resolves."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from helpers.__main__ import ALIASES, COMMANDS

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_and_each_resolves_to_its_main():
    proc = subprocess.run([sys.executable, "-m", "helpers", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    for name, (module, function, _) in COMMANDS.items():
        assert f"  {name} " in proc.stdout
        assert callable(getattr(importlib.import_module(module), function))
    assert set(ALIASES.values()) <= set(COMMANDS)
    unknown = subprocess.run([sys.executable, "-m", "helpers", "nope"], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert unknown.returncode == 2 and "unknown command 'nope'" in unknown.stderr


def test_each_command_answers_help_in_the_one_style():
    for name in ("rescore", "inspect", "batch", "demo-checkpoints", "consolidate"):
        proc = subprocess.run([sys.executable, "-m", "helpers", name, "--help"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and f"python -m helpers {name}" in proc.stdout, name
