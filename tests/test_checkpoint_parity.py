"""Every golden model fixture, saved in the official on-disk layout, loads by detection alone and reproduces
the official coordinates (tests/data/golden/models, fill rule v1)."""
from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import golden
from helpers.models.checkpoint import load_checkpoint

FIXTURES = golden.fixture_paths(include_legacy=True)
EPOCH = 83


def _save_official(fixture: dict, network: dict, out_dir: Path) -> Path:
    """`{'epoch','network','optimizer'}` with `module.` keys, as the official training scripts write it.

    ConvNeXtPose: a torch zip named `ConvNeXtPose_<V>.tar` whose root folder is `snapshot_83.pth/`."""
    assert all(k.startswith("module.") for k in network)
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-3, "params": list(range(len(network)))}]}
    staged = out_dir / f"snapshot_{EPOCH}.pth.tar"
    torch.save({"epoch": EPOCH, "network": network, "optimizer": optimizer}, staged)
    if fixture["model_id"].startswith("convnextpose_"):
        final = out_dir / f"ConvNeXtPose_{fixture['model_id'].split('_', 1)[1]}.tar"
        os.replace(staged, final)
        return final
    return staged


def _check_outputs(model, fixture: dict) -> None:
    # The first sample only: eval-mode outputs are per sample, and test_models_parity runs the whole batch;
    # here the point is that detection + strict loading put every tensor where the official code had it.
    extra = {k: v[:1] for k, v in golden.fixture_extra_inputs(fixture).items()}
    with torch.no_grad():
        coords = model(golden.fixture_input(fixture)[:1], **extra).double().numpy()
    expected = golden.expected_coords(fixture)[:1]
    assert coords.shape == expected.shape
    error, tolerance = np.abs(coords - expected), golden.atol(fixture)
    assert np.all(error <= tolerance), f"max |coords - expected| {error.reshape(-1, 3).max(0)} > atol {tolerance}"


def _check_weights(model, fixture: dict, filled: dict) -> None:
    """The loaded tensors are exactly the filled ones, under the model's (canonical) names."""
    canonical = fixture.get("canonical_keys", {})
    loaded = model.state_dict()
    for key, value in filled.items():
        name = canonical.get(key, key)[len("module."):]
        assert torch.equal(loaded[name].reshape(value.shape), value.to(loaded[name].dtype)), name


@pytest.mark.parametrize("fixture_path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_official_layout_detects_and_reproduces_fixture(fixture_path, golden_models_dir, tmp_path):
    fixture = golden.load_fixture(fixture_path)
    filled = golden.fill_state_dict(fixture)
    path = _save_official(fixture, filled, tmp_path)
    model, info = load_checkpoint(path)  # no model_id: detection from shapes alone
    path.unlink()
    assert info.model_id == fixture["model_id"]
    assert info["model_id"] == fixture["model_id"]
    assert (info.format, info.zip_root, info.epoch) == ("torch-zip", f"snapshot_{EPOCH}.pth", EPOCH)
    legacy = fixture["key_layout"] == "legacy_sequential_head"
    assert any("legacy head keys" in r for r in info.remaps) == legacy
    assert info.num_params == fixture["num_params_trainable"]
    assert info.num_params_incl_buffers == fixture["num_tensors_incl_buffers_numel"]
    assert not model.training
    _check_weights(model, fixture, filled)
    _check_outputs(model, fixture)


def test_extracted_folder_layout(golden_models_dir, tmp_path):
    """Kaggle may unpack the released `.tar` (really a zip) into `ConvNeXtPose_M/snapshot_83.pth/`."""
    fixture = golden.load_fixture(golden_models_dir / "convnextpose_M_legacy_keys.json")
    filled = golden.fill_state_dict(fixture)
    archive = _save_official(fixture, filled, tmp_path)
    unpacked = tmp_path / "ConvNeXtPose_M"
    with zipfile.ZipFile(archive) as zf:
        assert {n.split("/")[0] for n in zf.namelist()} == {f"snapshot_{EPOCH}.pth"}
        zf.extractall(unpacked)
    archive.unlink()
    folder = unpacked / f"snapshot_{EPOCH}.pth"
    assert (folder / "data.pkl").is_file() and any((folder / "data").iterdir())
    for given in (folder, unpacked):  # the snapshot folder itself, or the folder Kaggle made around it
        model, info = load_checkpoint(given)
        assert info.model_id == "convnextpose_M"
        assert info.format == "torch-zip-folder" and info.epoch == EPOCH
        assert re.fullmatch(r"[0-9a-f]{64}", info.sha256)
    _check_weights(model, fixture, filled)
    _check_outputs(model, fixture)
    shutil.rmtree(unpacked)
