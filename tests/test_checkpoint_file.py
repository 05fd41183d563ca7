"""helpers.models.checkpoint_file: the one pass of per-file checks that the loader and helpers.acquire share.

What the checks refuse is covered through `load_checkpoint` and `acquire_checkpoint` in test_checkpoint.py,
test_checkpoint_hostile.py and test_acquire.py; this file covers the pass itself: what it reports, that the loader
runs it once and hashes a file once, and that every layer raises the same `CheckpointError`."""
from __future__ import annotations

import hashlib
import zipfile

import pytest
import torch

import helpers.models.checkpoint_file as checkpoint_file
from helpers.acquire import AcquireError, verify_checkpoint_file
from helpers.models import checkpoint, safe_pickle
from helpers.models.checkpoint_file import check_checkpoint_file, read_checkpoint


@pytest.fixture
def torch_zip(tmp_path):
    path = tmp_path / "snapshot_3.pth.tar"  # torch.save names the zip's root folder after the file: snapshot_3.pth
    torch.save({"epoch": 3, "network": {"w": torch.arange(4.0)}}, path)
    return path


def test_one_error_class_for_every_layer():
    assert checkpoint.CheckpointError is checkpoint_file.CheckpointError is safe_pickle.CheckpointError
    assert issubclass(checkpoint_file.CheckpointFormatError, checkpoint.CheckpointError)


def test_check_reports_format_root_size_and_hashes_only_when_asked(torch_zip, monkeypatch):
    calls = []
    real_sha256 = checkpoint_file.file_sha256

    def counting_sha256(path):
        calls.append(path)
        return real_sha256(path)

    monkeypatch.setattr(checkpoint_file, "file_sha256", counting_sha256)
    check = check_checkpoint_file(torch_zip)
    assert (check.path, check.format, check.zip_root, check.size) == (
        torch_zip, "torch-zip", "snapshot_3.pth", torch_zip.stat().st_size)
    assert calls == []
    digest = hashlib.sha256(torch_zip.read_bytes()).hexdigest()
    assert check.sha256 == digest and check.sha256 == digest and len(calls) == 1
    assert check_checkpoint_file(torch_zip, sha256=digest.upper()).sha256 == digest
    with pytest.raises(checkpoint.CheckpointError, match="sha256 mismatch"):
        check_checkpoint_file(torch_zip, sha256="0" * 64)
    with pytest.raises(checkpoint.CheckpointError, match="expected exactly 1:"):
        check_checkpoint_file(torch_zip, expected_size=1)


def test_read_checkpoint_sniffs_and_hashes_once(torch_zip, monkeypatch):
    counts = {"sniff_bytes": 0, "file_sha256": 0}
    for name in counts:
        real = getattr(checkpoint_file, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(checkpoint_file, name, counting)
    raw = read_checkpoint(torch_zip)
    assert counts == {"sniff_bytes": 1, "file_sha256": 1}
    assert (raw.format, raw.zip_root, raw.sha256) == (
        "torch-zip", "snapshot_3.pth", hashlib.sha256(torch_zip.read_bytes()).hexdigest())
    assert torch.equal(raw.obj["network"]["w"], torch.arange(4.0))


def test_extracted_folder_one_level_down(torch_zip, tmp_path):
    with zipfile.ZipFile(torch_zip) as zf:
        zf.extractall(tmp_path / "unpacked")
    outer = tmp_path / "unpacked"
    check = check_checkpoint_file(outer)
    assert (check.format, check.zip_root, check.size, check.data_root) == (
        "torch-zip-folder", "snapshot_3.pth", None, outer / "snapshot_3.pth")
    assert check.sha256 == checkpoint_file.file_sha256(outer / "snapshot_3.pth") == read_checkpoint(outer).sha256
    with pytest.raises(AcquireError, match="sha256 of the extracted folder does not match"):
        verify_checkpoint_file(outer, sha256="0" * 64)
    assert verify_checkpoint_file(outer, sha256=check.sha256) == outer
