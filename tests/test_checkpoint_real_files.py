"""Real checkpoint files, read by our checks in front of `torch.load(weights_only=True)`, must give exactly what
`torch.load` gives:

- for every built-in model id, the file its family's official training code writes (`torch.save({'epoch',
  'network': DataParallel(model).state_dict(), 'optimizer': optimizer.state_dict()})` after a real step), in the
  release's format, and the same call in the other formats (zip, zip named `.tar` with a `snapshot_N.pth/` root,
  legacy pre-1.6);
- bare state dicts and `{'state_dict': ...}` / `{'model': ...}` wrappers;
- PyTorch 0.4.0 state dicts (no `_metadata`, no BatchNorm `num_batches_tracked`);
- nine weight files that three other projects wrote years ago with the PyTorch of their day
  (tests/data/third_party_weights, see tests/data/README.md): PyTorch 0.3-era `_rebuild_tensor`, storages saved on
  `cuda:0`, state dicts with and without `_metadata`.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import DATA
from helpers.__main__ import main as cli_main
from helpers.demo_checkpoints import demo_file_name, official_payload, save_official
from helpers.models import build_model, get_family, get_spec, list_models, load_checkpoint
from helpers.models.checkpoint import CheckpointError, clean_state_dict, read_state_dict
from helpers.models.checkpoint_file import check_checkpoint_file, read_checkpoint

THIRD_PARTY = DATA / "third_party_weights"
THIRD_PARTY_FILES = sorted(p for p in THIRD_PARTY.rglob("*") if p.suffix in (".pt", ".pth"))
SMALL = "convnextpose_XS"


def _same(ours, theirs, where: str = "obj") -> None:
    """The same object graph: types, keys in order, tensors equal in dtype, shape and every value, `_metadata`."""
    assert type(ours) is type(theirs) or (isinstance(ours, dict) and isinstance(theirs, dict)), where
    if isinstance(theirs, torch.Tensor):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and ours.device.type == "cpu", where
        assert torch.equal(ours, theirs), where
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs), where
        assert getattr(ours, "_metadata", None) == getattr(theirs, "_metadata", None), where
        for key in theirs:
            _same(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _same(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, where


def _torch_load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_loaded(model: nn.Module, network, versioned: bool = True) -> None:
    """The strictly loaded model holds exactly the checkpoint's tensors (after key cleaning); an unversioned state
    dict's missing num_batches_tracked are the 0 BatchNorm itself would fill."""
    cleaned, _, _ = clean_state_dict(network)
    loaded = model.state_dict()
    assert set(cleaned) <= set(loaded)
    for key, value in loaded.items():
        if key in cleaned:
            assert torch.equal(value, cleaned[key]), key
        else:
            assert not versioned and key.endswith(".num_batches_tracked") and int(value) == 0, key


# ---------------------------------------------------------------------------------------------- third party
@pytest.mark.parametrize("path", THIRD_PARTY_FILES, ids=lambda p: p.relative_to(THIRD_PARTY).as_posix())
def test_third_party_files_read_exactly_like_torch_load(path, capsys):
    raw = read_checkpoint(path)
    assert raw.format == "torch-legacy"
    _same(raw.obj, _torch_load(path))
    assert cli_main(["inspect", str(path)]) == 1  # read, but none of our models
    out = capsys.readouterr().out
    assert re.search(r"^read OK: \d+ tensors; no known model matches \(closest: \w+\)$", out, re.MULTILINE), out
    assert "refused" not in out


def test_third_party_files_cover_the_pytorch_eras():
    """What the files are said to be (tests/data/README.md) is what they are."""
    def file(name: str) -> Path:
        return next(p for p in THIRD_PARTY_FILES if p.relative_to(THIRD_PARTY).as_posix().endswith(name))

    for name in ("v0.0/alex.pth", "v0.0/squeeze.pth", "v0.0/vgg.pth"):  # PyTorch 0.3: _rebuild_tensor, cuda:0
        data = file(name).read_bytes()
        assert b"\n_rebuild_tensor\n" in data and b"_rebuild_tensor_v2" not in data
        assert {s.location for s in check_checkpoint_file(file(name)).scan.storages.values()} == {"cuda:0"}
        assert not hasattr(read_checkpoint(file(name)).obj, "_metadata")
    for name in ("v0.1/alex.pth", "pnet.pt", "rnet.pt"):  # state dicts with _metadata (a BUILD on OrderedDict)
        assert b"_rebuild_tensor_v2" in file(name).read_bytes()
        assert read_checkpoint(file(name)).obj._metadata
    assert {s.location for s in check_checkpoint_file(file("pnet.pt")).scan.storages.values()} == {"cpu"}
    dists = read_checkpoint(file("DISTS_pytorch/weights.pt")).obj
    assert type(dists) is dict and all(isinstance(v, torch.Tensor) for v in dists.values())
    assert sum(p.stat().st_size for p in THIRD_PARTY.rglob("*")) < 1 << 20  # test data stays small


def test_truncated_and_altered_legacy_files_are_refused(tmp_path):
    data = next(p for p in THIRD_PARTY_FILES if p.name == "rnet.pt").read_bytes()
    cases = {"one byte short": data[:-1], "half": data[: len(data) // 2], "only the pickles": data[:2400]}
    for what, content in cases.items():
        path = tmp_path / f"{what}.pt"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="truncated|malformed"):
            check_checkpoint_file(path)
        with pytest.raises(CheckpointError, match="truncated|malformed"):
            read_checkpoint(path)
    scan = check_checkpoint_file(next(p for p in THIRD_PARTY_FILES if p.name == "rnet.pt")).scan
    first = next(iter(scan.storages.values()))
    pickles_end = len(data) - sum(8 + s.nbytes for s in scan.storages.values())
    wrong_count = bytearray(data)
    wrong_count[pickles_end:pickles_end + 8] = (first.numel + 1).to_bytes(8, "little")
    path = tmp_path / "count.pt"
    path.write_bytes(bytes(wrong_count))
    with pytest.raises(CheckpointError, match="elements, but its pickle declares"):
        read_checkpoint(path)
    longer = tmp_path / "longer.pt"
    longer.write_bytes(data + b"\0" * 16)  # bytes after the last storage do not make a file incomplete
    _same(read_checkpoint(longer).obj, _torch_load(longer))


# ---------------------------------------------------------------------------------------------- official call
FORMS = ("zip", "zip named .tar, snapshot root", "legacy")


def _save_in(form: str, payload: dict, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if form == "zip":
        path = folder / "weights.pth"
        torch.save(payload, path)
    else:  # the release writers: a zip named like the released .tar with a snapshot_N.pth/ root, or legacy
        path = folder / (name if form.startswith("zip named") else "snapshot_0.pth.tar")
        save_official(payload, path, "legacy" if form == "legacy" else "zip")
    return path


@pytest.mark.parametrize("model_id", list_models())
def test_the_official_call_in_every_format(model_id, tmp_path):
    """For every model id, `torch.save({'epoch', 'network': DataParallel(model).state_dict(), 'optimizer'})` with
    the family's optimizer after a step (what `demo_checkpoints` writes) in the release's own format is what the
    release looks like, loads strictly (detected from its shapes alone) with exactly the tensors torch.load gives;
    and the same payload loads in the other formats too."""
    release = get_family(get_spec(model_id).family).release
    payload = official_payload(model_id)
    own = "legacy" if release.serialization == "legacy" else "zip named .tar, snapshot root"
    for form in FORMS:
        path = _save_in(form, payload, tmp_path / form.replace(" ", "_").replace(",", ""),
                        demo_file_name(model_id))
        try:
            if form == own:  # the release's own: structure, and against torch.load
                reference = _torch_load(path)
                network = reference["network"]
                assert {"epoch", "network", "optimizer"} <= set(reference) and type(network) is OrderedDict
                assert all(k.startswith("module.") for k in network)
                assert hasattr(network, "_metadata") == release.versioned
                assert any(k.endswith("num_batches_tracked") for k in network) == release.versioned
                states = reference["optimizer"]["state"]
                assert len(states) == len(reference["optimizer"]["param_groups"][0]["params"]) > 0
                assert all({"step", "exp_avg", "exp_avg_sq"} <= set(s) for s in states.values())
                assert set(reference) - {"epoch", "network", "optimizer", "demo_note"} == set(release.extras)
                assert path.read_bytes()[:4] == (b"\x80\x02\x8a\x0a" if form == "legacy" else b"PK\x03\x04")
            else:
                network = payload["network"]
            model, info = load_checkpoint(path)  # detected from the shapes alone
            assert info.model_id == model_id and info.is_random_demo and info.epoch == 0, form
            assert info.format == ("torch-legacy" if form == "legacy" else "torch-zip"), form
            assert (info.zip_root == "snapshot_0.pth") == form.startswith("zip named"), form
            assert any("num_batches_tracked" in r for r in info.remaps) == (not release.versioned), form
            _assert_loaded(model, network, release.versioned)
        finally:
            path.unlink()


# ---------------------------------------------------------------------------------------------- other layouts
@pytest.fixture(scope="module")
def small_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(SMALL)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_bare_state_dicts_and_wrappers(small_model, tmp_path, legacy):
    state = small_model.state_dict()
    parallel = nn.DataParallel(small_model).state_dict()
    objects = {"bare": state, "bare DataParallel": parallel, "state_dict": {"state_dict": state},
               "model": {"model": parallel, "epoch": 3}, "network": {"network": parallel, "epoch": 3}}
    for what, obj in objects.items():
        path = tmp_path / f"{what.replace(' ', '_')}.pth"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        reference = _torch_load(path)
        _same(read_checkpoint(path).obj, reference)
        model, info = load_checkpoint(path)
        assert info.model_id == SMALL, what
        _assert_loaded(model, state)
        assert info.epoch == (3 if "epoch" in obj else None), what


def test_pytorch_040_state_dicts_load_and_say_so(small_model, tmp_path):
    """No _metadata and no num_batches_tracked (what PyTorch 0.4.0 saved): exactly those buffers are filled."""
    state = small_model.state_dict()
    old = OrderedDict((f"module.{k}", v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert not hasattr(old, "_metadata") and len(old) < len(state)
    path = tmp_path / "snapshot_1.pth.tar"
    torch.save({"epoch": 1, "network": old}, path, _use_new_zipfile_serialization=False)
    model, info = load_checkpoint(path)
    assert info.model_id == SMALL
    filled = len(state) - len(old)
    assert f"filled {filled} missing BatchNorm num_batches_tracked buffers with 0" in "; ".join(info.remaps)
    _assert_loaded(model, old, versioned=False)
    reference = build_model(SMALL)
    reference.load_state_dict({k[len("module."):]: v for k, v in old.items()}, strict=True)  # torch agrees
    assert all(torch.equal(reference.state_dict()[k], v) for k, v in model.state_dict().items()
               if not k.endswith("num_batches_tracked"))

    # a versioned state dict (with _metadata) that lacks them is incomplete, as BatchNorm would say too
    versioned = nn.DataParallel(small_model).state_dict()
    for key in [k for k in versioned if k.endswith("num_batches_tracked")]:
        del versioned[key]
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): .*num_batches_tracked"):
        load_checkpoint(versioned)
    # anything else missing stays an error, and is what the message names
    dropped = next(k for k in old if k.endswith(".weight"))
    incomplete = OrderedDict((k, v) for k, v in old.items() if k != dropped)
    with pytest.raises(CheckpointError, match=rf"missing keys \(1\): {re.escape(dropped[len('module.'):])}"):
        load_checkpoint(incomplete, SMALL)
    with pytest.raises(CheckpointError, match=r"(?s)closest is convnextpose_XS.*missing keys \(1\)"):
        load_checkpoint(incomplete)
    assert read_state_dict(incomplete).versioned is False
